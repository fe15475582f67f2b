"""analysis: every figure and table of the paper from a small real MLflow SQLite store (train, evaluate
and align runs of several sweeps), and their CSVs checked against the values logged."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imsave

from ablate import paper, tracking
from ablate.errors import AblateError
from analysis import tables
from analysis.plot import TABLE1, plot_report
from analysis.smoothing import ema_span, smoothing_span

STEPS = 50  # last 5%: ceil(2.5) = 3 steps
TOKENS_PER_STEP = 1000
PROBES = (0, 25, STEPS)
PAPER_PROMPT = paper.TABLE1_PROMPTS[1]  # the runs probe one of the paper's prompts and one of their own
ROTARY = "none (rotary has no parameters)"


def curve(seed: int, level: float) -> dict[int, dict[str, float]]:
    """Per step 1..STEPS: falling, noisy losses; perplexity = exp(loss); tokens."""
    rng = np.random.default_rng(seed)
    rows = {}
    for step in range(1, STEPS + 1):
        image = level + 3.0 / step + 0.1 * rng.standard_normal()
        text = 2.0 + 1.0 / step + 0.1 * rng.standard_normal()
        loss = (text + 9 * image) / 10
        rows[step] = {"loss": loss, "text_loss": text, "image_loss": image, "perplexity": math.exp(loss)}
        rows[step]["tokens"] = step * TOKENS_PER_STEP
    return rows


class Store:
    """Creates stage runs in a store the way the launcher and the stages do, remembering what was logged."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri, self.root, self.ids, self.logged, self.keys = uri, root, {}, {}, {}

    def run(self, name: str, stage: str, sweeps: list[str], params: dict, tags: dict | None = None) -> str:
        exp = tracking.ensure_experiment(self.uri, sweeps[0])
        all_tags = {tracking.TAG_SWEEP: sweeps[0], tracking.TAG_ARM: name, **(tags or {})}
        all_tags.update({tracking.sweep_tag(s): "true" for s in sweeps})
        key = f"{name}-{stage}"
        run_id = tracking.get_or_create_stage_run(self.uri, exp, key, stage, name, all_tags, params)
        self.ids[(name, stage)], self.keys[(name, stage)] = run_id, key
        return run_id

    def log(
        self, run_id: str, rows: dict[int, dict[str, float]], artifacts: dict[str, str] | None = None
    ) -> None:
        tracker = tracking.MLflowTracker(self.uri, run_id, flush_interval_s=0.05)
        for step in sorted(rows):
            tracker.log_metrics(rows[step], step=step)
        for filename, content in (artifacts or {}).items():
            path = self.root / run_id / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            if filename.endswith(".png"):
                imsave(path, np.full((24, 36, 3), int(content) / 10.0))
            else:
                path.write_text(content, encoding="utf-8")
            tracker.log_artifact(path)
        tracker.close(timeout=30)
        self.logged[run_id] = rows

    def series(self, name: str, metric: str, stage: str = "train") -> np.ndarray:
        rows = self.logged[self.ids[(name, stage)]]
        return np.array([rows[s][metric] for s in sorted(rows) if metric in rows[s]])


def completions(init: str) -> str:
    lines = []
    for step in PROBES:
        done = [
            {"prompt": p, "completion": f"{init} says {p[:6]} at {step}"} for p in (PAPER_PROMPT, "Hi |x")
        ]
        lines.append(json.dumps({"step": step, "tokens": step * TOKENS_PER_STEP, "completions": done}))
    return "\n".join(lines) + "\n"


def t2i_train(
    store: Store, name: str, sweeps: list[str], init: str, lr: float, seed: int, **more: str
) -> None:
    params = {"model.init": init, "data.task": "t2i", "optim.lr": lr, "train.batch_tokens": 4096, **more}
    run_id = store.run(name, "train", sweeps, params)
    rows = curve(seed, 4.0 if init == "pretrained" else 4.3)
    rows[0] = {"tokens": 0.0}
    for k, step in enumerate(PROBES):
        rows[step]["heldout_text_ppl"] = 30.0 * (1 + k) if init == "pretrained" else 900.0 - k
    store.log(run_id, rows, {"completions.jsonl": completions(init)})


def evaluate(store: Store, name: str, sweeps: list[str], metrics: dict, png: int | None) -> None:
    tags = {"ablate.train_key": store.keys[(name, "train")]}
    run_id = store.run(name, "evaluate", sweeps, {}, tags)
    store.log(run_id, {0: metrics}, {"samples.png": str(png)} if png is not None else {})


@pytest.fixture(scope="module")
def store(new_store: Callable[[str], Path]) -> Store:
    root = new_store("paper")
    s = Store(f"sqlite:///{root / 'mlflow.db'}", root)
    t2i = ["t2i_init", "paper"]
    # The two t2i_init arms are the lr sweep's lr=3e-4 arms too (one run, both tags).
    t2i_train(s, "t2i-pretrained", [*t2i, "lr"], "pretrained", 3e-4, 1)
    t2i_train(s, "t2i-random", [*t2i, "lr"], "random", 3e-4, 2)
    t2i_train(s, "t2i-contrastive", t2i, "pretrained", 3e-4, 3, **{"model.image_init": "contrastive"})
    t2i_train(s, "lr-pretrained-1e-4", ["lr", "paper"], "pretrained", 1e-4, 4)
    t2i_train(s, "lr-random-1e-4", ["lr", "paper"], "random", 1e-4, 5)
    t2i_train(s, "batch-pretrained", ["batch"], "pretrained", 3e-4, 6)  # one batch size: no curve
    evaluate(s, "t2i-pretrained", t2i, {"caption_match_seen": 0.75, "caption_match_heldout": 0.5}, png=2)
    evaluate(s, "t2i-random", t2i, {"caption_match_seen": 0.25, "caption_match_heldout": 0.125}, png=5)
    evaluate(s, "t2i-contrastive", t2i, {"caption_match_seen": 0.875, "caption_match_heldout": 0.625}, png=8)
    for k, (init, trainable) in enumerate(
        [("pretrained", "emb_out"), ("pretrained", "emb_out_norm"), ("pretrained", "all"), ("random", "all")]
    ):
        name = f"freeze-{init}-{trainable}"
        params = {"model.init": init, "data.task": "uncond", "train.trainable": trainable}
        run_id = s.run(name, "train", ["freeze", "paper"], params, {"ablate.positional_params": ROTARY})
        s.log(run_id, curve(10 + k, 3.0 + 0.2 * k))
    evaluate(s, "freeze-pretrained-all", ["freeze", "paper"], {"scene_valid": 0.9}, png=None)
    run_id = s.run("align", "align", ["contrastive", "paper"], {})
    s.log(
        run_id,
        {
            step: {"loss": 5.0 / step + 0.01 * (step % 3), "temperature": 14.0 + step / 10}
            for step in range(1, 31)
        },
    )
    return s


@pytest.fixture(scope="module")
def everything(store: Store, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("figures")
    report = plot_report(store.uri, out)
    return SimpleNamespace(out=out, report=report, csv=lambda name: pd.read_csv(out / f"{name}.csv"))


def test_every_figure_and_table_is_drawn(everything: SimpleNamespace) -> None:
    names = {p.name for p in everything.report.paths}
    for figure in ("figure3_perplexity", "figure4_loss_split", "figure5_samples", "figure6_freeze",
                   "figure7_contrastive", "text_ability", "sensitivity_lr"):  # fmt: skip
        assert {f"{figure}.png", f"{figure}.pdf", f"{figure}.csv"} <= names
        assert (everything.out / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"table1_completions.md", "table1_completions.csv", "summary.csv"} <= names
    # The batch sweep has one batch size: skipped, naming the sweep file that would produce the curve.
    assert set(everything.report.skipped) == {"sensitivity_batch"}
    message = everything.report.skipped["sensitivity_batch"]
    assert "only train.batch_tokens = 4096" in message and "ablate launch sweeps/batch.yaml" in message


def test_figure3_draws_only_its_sweeps_runs_labelled_by_init(
    everything: SimpleNamespace, store: Store
) -> None:
    data = everything.csv("figure3_perplexity")
    names = ("t2i-pretrained", "t2i-random", "t2i-contrastive")
    assert set(data["run_id"]) == {store.ids[(n, "train")] for n in names}  # not the lr-only runs
    assert set(data["init"]) == {"pretrained", "random", "pretrained + contrastive"}


def test_figure5_has_a_panel_per_init_with_its_evaluate_run(
    everything: SimpleNamespace, store: Store
) -> None:
    data = everything.csv("figure5_samples")
    assert data["init"].tolist() == ["pretrained", "random", "pretrained + contrastive"]
    for _, row in data.iterrows():
        arm = row["arm"]
        assert row["train_run_id"] == store.ids[(arm, "train")]
        assert row["evaluate_run_id"] == store.ids[(arm, "evaluate")]
        logged = store.logged[row["evaluate_run_id"]][0]
        assert row["caption_match_seen"] == logged["caption_match_seen"]
        assert row["caption_match_heldout"] == logged["caption_match_heldout"]
        assert row["artifact"] == "samples.png" and Path(row["local_path"]).is_file()


def test_figure6_one_line_per_freeze_setting(everything: SimpleNamespace, store: Store) -> None:
    data = everything.csv("figure6_freeze")
    assert set(data["setting"]) == {
        "pretrained: embedding + output (emb_out)",
        "pretrained: + norms (emb_out_norm)",  # rotary: no positional parameters to add
        "pretrained: all parameters (all)",
        "random: all parameters (all)",
    }
    assert set(data["positional_params"]) == {ROTARY}
    every = data[data["kind"] == "raw"]
    span = smoothing_span(every["tokens"], every["run_id"])
    for name in ("freeze-pretrained-emb_out", "freeze-random-all"):
        run = data[data["run_id"] == store.ids[(name, "train")]]
        logged = store.series(name, "loss")
        raw = run[run["kind"] == "raw"]
        np.testing.assert_allclose(raw["value"], logged)
        np.testing.assert_allclose(
            run[run["kind"] == "ema"]["value"], ema_span(logged, raw["tokens"].to_numpy(), span)
        )
        assert run["series"].str.endswith(("/raw", "/ema")).all() and run["series"].nunique() == 2


def test_figure7_loss_and_temperature_of_the_align_run(everything: SimpleNamespace, store: Store) -> None:
    data = everything.csv("figure7_contrastive")
    loss = store.series("align", "loss", "align")
    got = data[data["metric"] == "loss"]
    raw = got[got["kind"] == "raw"]
    span = smoothing_span(raw["step"], raw["run_id"])
    np.testing.assert_allclose(
        got[got["kind"] == "ema"]["value"], ema_span(loss, raw["step"].to_numpy(), span)
    )
    temp = data[data["metric"] == "temperature"]
    np.testing.assert_allclose(temp["value"], store.series("align", "temperature", "align"))
    assert temp["step"].tolist() == list(range(1, 31))


def test_table1_before_and_after(everything: SimpleNamespace, store: Store) -> None:
    data = everything.csv("table1_completions")
    assert len(data) == 3 * 2  # three inits x two prompts
    row = data[(data["init"] == "random") & (data["prompt"] == "Hi |x")].iloc[0]
    assert row["before"] == "random says Hi |x at 0" and row["before_step"] == 0
    assert row["after"] == f"random says Hi |x at {STEPS}" and row["after_tokens"] == STEPS * TOKENS_PER_STEP
    assert row["run_id"] == store.ids[("t2i-random", "train")]
    md = (everything.out / "table1_completions.md").read_text()
    assert (
        "| random | Hi \\|x | random says Hi \\|x at 0 | random says Hi \\|x at 50 | 50k tokens, step 50 |"
        in md
    )
    # The paper's completions of its prompt beside ours, as printed (the CSV keeps the leading space).
    theirs = ["paper, before", "paper, after 5B tokens"]
    raw = pd.read_csv(everything.out / "table1_completions.csv", keep_default_na=False)
    assert raw[raw["prompt"] == PAPER_PROMPT][theirs].drop_duplicates().values.tolist() == [
        [" fromage", " I love cheese"]
    ]
    assert (raw[raw["prompt"] == "Hi |x"][theirs] == "").all(axis=None)
    assert "| fromage | I love cheese |" in md
    assert "placeholder" not in md.lower()


def test_text_ability_is_the_probe_per_init(everything: SimpleNamespace, store: Store) -> None:
    data = everything.csv("text_ability")
    run = data[data["run_id"] == store.ids[("t2i-pretrained", "train")]]
    assert run["tokens"].tolist() == [p * TOKENS_PER_STEP for p in PROBES]  # step 0 at 0 tokens included
    np.testing.assert_allclose(run["value"], [30.0, 60.0, 90.0])
    assert set(data["init"]) == {"pretrained", "random", "pretrained + contrastive"}


def test_sensitivity_lr_is_the_mean_of_the_last_steps(everything: SimpleNamespace, store: Store) -> None:
    data = everything.csv("sensitivity_lr")
    assert sorted(zip(data["init"], data["x"], strict=True)) == [
        ("pretrained", 1e-4), ("pretrained", 3e-4), ("random", 1e-4), ("random", 3e-4)
    ]  # fmt: skip
    row = data[(data["init"] == "random") & (data["x"] == 1e-4)].iloc[0]
    assert row["y"] == pytest.approx(store.series("lr-random-1e-4", "image_loss")[-3:].mean())
    assert str(row["tail_steps"]) == "3" and row["run_ids"] == store.ids[("lr-random-1e-4", "train")]


def test_summary_has_a_row_per_train_run(everything: SimpleNamespace, store: Store) -> None:
    data = everything.csv("summary").set_index("arm")
    assert set(data["train_run_id"]) == {v for (_, stage), v in store.ids.items() if stage == "train"}
    row = data.loc["t2i-pretrained"]
    assert row["sweeps"] == "lr;paper;t2i_init" and row["init"] == "pretrained" and row["lr"] == 3e-4
    # summary.csv holds 4 significant digits
    mean = store.series("t2i-pretrained", "image_loss")[-3:].mean()
    assert row["final_image_loss"] == pytest.approx(mean, rel=5e-4) and row["final_image_loss"] == float(
        f"{mean:.4g}"
    )
    assert row["tokens"] == STEPS * TOKENS_PER_STEP and row["steps"] == STEPS
    assert row["heldout_text_ppl"] == 90.0 and row["caption_match_seen"] == 0.75
    assert data.loc["t2i-contrastive", "image_init"] == "contrastive"
    frozen = data.loc["freeze-pretrained-all"]
    assert frozen["scene_valid"] == 0.9 and frozen["task"] == "uncond" and frozen["trainable"] == "all"
    assert np.isnan(frozen["final_text_loss"]) and frozen["final_image_loss"] > 0  # specials are no text
    assert np.isnan(data.loc["freeze-pretrained-emb_out", "scene_valid"])


def test_sweep_restricts_the_runs(store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="analysis.plot"):
        report = plot_report(store.uri, tmp_path / "lr", sweep="lr")
    names = sorted(p.name for p in report.paths)
    tables = ["comparisons.csv", "summary.csv", "summary_arms.csv"]  # with every drawing
    assert names == sorted(["sensitivity_lr.csv", "sensitivity_lr.pdf", "sensitivity_lr.png", *tables])
    summary = pd.read_csv(tmp_path / "lr" / "summary.csv")
    assert len(summary) == 4 and summary["sweeps"].str.contains("lr").all()
    # Figures the lr sweep does not produce are skipped, saying which sweep file does.
    assert "ablate launch sweeps/freeze.yaml" in report.skipped["figure6_freeze"]
    assert "ablate launch sweeps/t2i_init.yaml" in report.skipped["figure3_perplexity"]
    assert any("figure6_freeze" in r.message and "sweeps/freeze.yaml" in r.message for r in caplog.records)
    freeze = plot_report(store.uri, tmp_path / "freeze", sweep="freeze")
    assert {p.name for p in freeze.paths} == {"figure6_freeze.png", "figure6_freeze.pdf", "figure6_freeze.csv",
                                              *tables}  # fmt: skip
    paper = plot_report(store.uri, tmp_path / "paper", sweep="paper")
    assert set(paper.skipped) == {"sensitivity_batch"}  # the batch run is not in the paper sweep
    assert "batch-pretrained" not in set(pd.read_csv(tmp_path / "paper" / "summary.csv")["arm"])


def test_empty_store_fails_clearly(new_store: Callable[[str], Path], tmp_path: Path) -> None:
    uri = f"sqlite:///{new_store('empty') / 'mlflow.db'}"
    with pytest.raises(AblateError, match="No training runs") as err:
        plot_report(uri, tmp_path)
    assert "ablate launch" in str(err.value) and not any(tmp_path.iterdir())


def test_download_artifact_missing_names_the_run(store: Store, tmp_path: Path) -> None:
    run_id = store.ids[("freeze-pretrained-all", "evaluate")]
    with pytest.raises(AblateError, match=f"run {run_id} .*has no artifact 'samples.png'"):
        tracking.download_artifact(store.uri, run_id, "samples.png", tmp_path)
    train_id = store.ids[("t2i-random", "train")]
    local = tracking.download_artifact(store.uri, train_id, "completions.jsonl", tmp_path)
    assert local == tmp_path / "completions.jsonl" and local.read_text() == completions("random")


def test_table1_shows_the_papers_completions_beside_ours(tmp_path: Path) -> None:
    prompt = paper.TABLE1_PROMPTS[0]
    rows = pd.DataFrame(
        [
            ("pretrained", "a", "r1", 0, 0.0, "Once", "upon a time"),
            ("pretrained", "a", "r1", 9, 9e9, "Once", "zz"),
            ("pretrained", "a", "r1", 0, 0.0, prompt, "light is fast"),
            ("pretrained", "a", "r1", 9, 9e9, prompt, "cats"),
        ],
        columns=tables.COMPLETION_COLUMNS,
    )
    md, csv = tables.table1_completions(rows, tmp_path, TABLE1.name)
    data = pd.read_csv(csv, keep_default_na=False).set_index("prompt")
    theirs = ["paper, before", "paper, after 5B tokens"]
    assert list(data.columns[-2:]) == theirs
    assert data.loc[prompt, theirs].tolist() == [
        paper.TABLE1_COMPLETIONS[prompt]["before"], paper.TABLE1_COMPLETIONS[prompt]["after"]
    ]  # fmt: skip
    assert data.loc[prompt, ["before", "after"]].tolist() == ["light is fast", "cats"]
    # A demo prompt, not the paper's: ours only, the paper's columns empty.
    assert data.loc["Once", ["before", "after", *theirs]].tolist() == ["upon a time", "zz", "", ""]
    text = md.read_text()
    assert "| pretrained | Once | upon a time | zz | 9B tokens, step 9 |  |  |" in text
    paper_row = (
        f"| pretrained | {prompt} | light is fast | cats | 9B tokens, step 9 "
        f"| {paper.TABLE1_COMPLETIONS[prompt]['before']} | {paper.TABLE1_COMPLETIONS[prompt]['after']} |"
    )
    assert paper_row in text and "| paper, before | paper, after 5B tokens |" in text
