"""End to end through the real pieces: a tiny demo sweep on `cluster=local` (submitit subprocesses) into a
temporary MLflow SQLite store, then `ablate status`, a relaunch that runs nothing, a second sweep sharing
its arms, small LR and batch sweeps, and `ablate plot` drawing every figure and table from them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scales import tiny

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny(
    "pretrain.corpus_max_chars=150000",
    "pretrain.total_tokens=12000",
    "pretrain.batch_tokens=2304",
    "pretrain.warmup_tokens=2304",
    "train.total_tokens=14000",
    "train.checkpoint_every_tokens=4608",
    "align.steps=20",
    "align.batch_size=32",
    "evaluate.probe_every_tokens=4608",
    "evaluate.probe_sequences=8",
)
DEMO_ARMS = [
    "task=t2i init=pretrained",
    "task=t2i init=random",
    "task=t2i init=pretrained seed=1",
    "task=t2i init=random seed=1",
    "task=t2i init=pretrained image_init=contrastive",
    "task=uncond init=pretrained trainable=emb_out",
]


def ablate(results: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = ablate(results, "launch", "sweeps/demo.yaml", *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results, proc


@pytest.mark.slow
def test_sweep_runs_every_stage_once_and_tracks_it(demo):
    results, proc = demo
    assert "submitted train" in proc.stdout and "step " in proc.stdout  # progress lines while running
    db = sqlite3.connect(results / "mlflow.db")
    rows = db.execute(
        "SELECT t1.value, t2.value, r.status FROM runs r "
        "JOIN tags t1 ON t1.run_uuid = r.run_uuid AND t1.key = 'ablate.stage' "
        "JOIN tags t2 ON t2.run_uuid = r.run_uuid AND t2.key = 'ablate.run_key'"
    ).fetchall()
    stages = sorted(r[0] for r in rows)
    # Shared stages ran once for all arms; prepare once per task; pretrain once for the four arms that
    # start from the LM; align only for the contrastive arm; train and evaluate once per arm.
    assert stages == sorted(
        ["synth", "text_tokenizer", "image_tokenizer", "prepare", "prepare", "pretrain", "align"]
        + ["train"] * 6
        + ["evaluate"] * 6
    )
    assert all(r[2] == "FINISHED" for r in rows)
    dup = db.execute(
        "SELECT run_uuid, key, step, COUNT(*) FROM metrics GROUP BY run_uuid, key, step HAVING COUNT(*) > 1"
    ).fetchall()
    assert dup == []
    manifest = json.loads((results / "sweeps" / "demo" / "manifest.json").read_text())
    assert [a["label"] for a in manifest["arms"]] == DEMO_ARMS
    assert all(j["state"] == "done" for j in manifest["jobs"].values())


@pytest.mark.slow
def test_each_arm_is_one_run_with_its_results_in_the_sweeps_experiment(demo):
    from ablate import tracking
    from ablate.tracking.results import ARM_RESULT_METRICS
    from ablate.train.final import final_values

    results, _ = demo
    uri = f"sqlite:///{results / 'mlflow.db'}"
    arms = tracking.fetch_runs(uri, sweep="demo", arms=True).set_index(f"tags.{tracking.TAG_ARM}")
    assert sorted(arms.index) == sorted(DEMO_ARMS) and set(arms["experiment"]) == {"ablate/demo"}
    # Named short, from each arm's own values; the label is the tag above.
    assert sorted(arms["run_name"]) == [
        "pretrained +contrastive s0",
        "pretrained s0",
        "pretrained s1",
        "random s0",
        "random s1",
        "uncond pretrained emb_out s0",
    ]
    assert set(arms["status"]) == {"FINISHED"} and set(arms["params.model.init"]) == {"pretrained", "random"}
    assert set(tracking.fetch_runs(uri, sweep="demo")["experiment"]) == {"ablate/demo/stages"}
    logged: set[str] = set()
    for label, arm in arms.iterrows():
        info = tracking.run_info(uri, arm["run_id"])
        logged |= info["metrics"].keys()
        train_key = arm[f"tags.{tracking.TAG_STAGE_KEY_PREFIX}train"]
        rows = [
            json.loads(line) for line in (results / "cache" / "train" / train_key / "metrics.jsonl").open()
        ]
        expected = final_values([r for r in rows if "loss" in r])
        # On the arm's run to 4 significant digits (tracking.results); the train stage's run has every digit.
        assert info["metrics"]["final_image_loss"] == pytest.approx(expected["final_image_loss"], rel=5e-4)
        assert ("final_text_loss" in info["metrics"]) == label.startswith("task=t2i")  # not for uncond
        train = tracking.run_info(uri, arm[f"tags.{tracking.TAG_STAGE_RUN_PREFIX}train"])
        evaluate = tracking.run_info(uri, arm[f"tags.{tracking.TAG_STAGE_RUN_PREFIX}evaluate"])
        # The arm's run spans its jobs, not the launch: from its train job's start to its evaluate's end.
        assert train["start_time"] <= info["start_time"] <= train["end_time"] <= info["end_time"]
        assert info["end_time"] >= evaluate["start_time"]
    # Every result column of the arms' saved view is logged by some arm (FID needs real data).
    assert set(ARM_RESULT_METRICS) - {"fid"} <= logged


def _runs(results: Path, stage: str) -> pd.DataFrame:
    from ablate import tracking

    return tracking.fetch_runs(f"sqlite:///{results / 'mlflow.db'}", stage=stage)


def _history(results: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    db = sqlite3.connect(results / "mlflow.db")
    return db.execute(
        "SELECT step, value FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY step", (run_id, key)
    ).fetchall()


@pytest.mark.slow
def test_forgetting_is_measured_from_step_0_on_pretrained_text_to_image_runs(demo):
    results, _ = demo
    train = _runs(results, "train").set_index("tags.ablate.arm")
    pretrained = train.loc["task=t2i init=pretrained", "run_id"]
    ppl = _history(results, pretrained, "heldout_text_ppl")
    tokens = dict(_history(results, pretrained, "tokens"))
    steps = [s for s, _ in ppl]
    # Before the first update, every 4,608 tokens (4 steps of the demo's 1,152) and after the last (13).
    assert steps == [0, 4, 8, 12, 13]
    assert tokens[0] == 0 and tokens[4] == 4608
    assert all(v > 1 for _, v in ppl)
    probe_file = next((results / "cache" / "train").glob("*/completions.jsonl"))
    completions = [json.loads(line) for line in probe_file.read_text().splitlines()]
    assert completions[0]["step"] == 0 and len(completions[0]["completions"]) == 4
    # No text ability to lose: random init and unconditional runs have no probe.
    for arm in ("task=t2i init=random", "task=uncond init=pretrained trainable=emb_out"):
        assert _history(results, train.loc[arm, "run_id"], "heldout_text_ppl") == []


@pytest.mark.slow
def test_evaluate_and_align_runs_log_their_metrics_and_artifacts(demo):
    results, _ = demo
    train = _runs(results, "train")
    evals = _runs(results, "evaluate")
    # One evaluate run per train run, naming it.
    assert sorted(evals["tags.ablate.train_key"]) == sorted(train["tags.ablate.run_key"])
    for _, run in evals.iterrows():
        keys = (
            ["scene_valid"]
            if "uncond" in run["tags.ablate.arm"]
            else ["caption_match_seen", "caption_match_heldout"]
        )
        for key in keys:
            ((step, value),) = _history(results, run["run_id"], key)
            assert step == 0 and 0.0 <= value <= 1.0
    for d in (results / "cache" / "evaluate").iterdir():
        assert (d / "samples.png").stat().st_size > 0
        rows = pd.read_csv(d / "samples.csv")
        assert len(rows) in (8, 16) and set(rows["split"]) <= {"seen", "heldout", "uncond"}
    (align,) = _runs(results, "align")["run_id"]
    loss = [v for _, v in _history(results, align, "loss")]
    assert len(loss) == 20 and len(_history(results, align, "temperature")) == 20


@pytest.mark.slow
def test_run_directories_describe_themselves(demo):
    results, _ = demo
    for train_dir in (results / "cache" / "train").iterdir():
        assert (train_dir / "_COMPLETE.json").is_file() and (train_dir / "config.yaml").is_file()
        prov = json.loads((train_dir / "provenance.json").read_text())
        assert prov["stage"] == "train" and prov["git_commit"] and prov["mlflow_run_id"]
        rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
        *rows, finals = rows  # the last row: the final values, at the last step
        assert finals["step"] == rows[-1]["step"] and "final_loss" in finals
        steps = [r["step"] for r in rows]
        first = steps[0]  # 0: the text-ability probe's row before the first update (pretrained t2i arms)
        assert first in (0, 1) and steps == list(range(first, first + len(steps))) and len(steps) >= 5


@pytest.mark.slow
def test_status_and_relaunch_runs_nothing(demo):
    results, _ = demo
    status = ablate(results, "status", "demo")
    assert status.returncode == 0
    lines = [line for line in status.stdout.splitlines() if line.startswith("task=")]
    # Each arm at its last stage, not at train (issue 22: every arm read "train done").
    assert len(lines) == 6 and all(" evaluate " in line and " done " in line for line in lines), status.stdout
    again = ablate(results, "launch", "sweeps/demo.yaml", *TINY)
    assert again.returncode == 0
    assert "submitted" not in again.stdout and again.stdout.count("skipped") == 19


@pytest.mark.slow
def test_a_sweep_sharing_the_arms_trains_nothing_and_plots_them(demo, tmp_path):
    results, _ = demo
    # t2i_init at one seed (it has 3 at demo scale): its seed-0 arms are the demo's, the rest new.
    one_seed = tmp_path / "t2i_init.yaml"
    text = (ROOT / "sweeps" / "t2i_init.yaml").read_text()
    one_seed.write_text("\n".join(line for line in text.splitlines() if not line.startswith("seeds:")))
    proc = ablate(results, "launch", str(one_seed), *TINY)
    assert proc.returncode == 0 and "submitted" not in proc.stdout, proc.stdout[-2000:]
    out = tmp_path / "t2i_figures"
    proc = ablate(results, "plot", "--sweep", "t2i_init", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    fig3 = pd.read_csv(out / "figure3_perplexity.csv")
    assert set(fig3["init"]) == {"pretrained", "random"}  # the demo's runs, found through the shared tag
    from ablate import tracking

    # Its arms, all done by the demo, get their own runs in its experiment, filled from the stages.
    arms = tracking.fetch_runs(f"sqlite:///{results / 'mlflow.db'}", sweep="t2i_init", arms=True)
    assert sorted(arms["run_name"]) == ["pretrained", "random"] and set(arms["status"]) == {"FINISHED"}
    for run_id in arms["run_id"]:
        assert (
            "final_image_loss" in tracking.run_info(f"sqlite:///{results / 'mlflow.db'}", run_id)["metrics"]
        )
    assert not (out / "figure6_freeze.png").exists()  # t2i_init does not produce Figure 6


SMALL_SWEEPS = {
    "lr": "grid:\n  model.init: [random]\n  optim.lr: [5.0e-4, 1.0e-3]\n",
    "batch": "grid:\n  model.init: [random]\n  train.batch_tokens: [1152, 2304]\n",
}


@pytest.mark.slow
def test_plot_draws_every_figure_and_table(demo, tmp_path):
    results, _ = demo
    for name, grid in SMALL_SWEEPS.items():  # one new arm each: the other is the demo's random arm
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nbase: [data.task=t2i]\n{grid}")
        proc = ablate(results, "launch", str(path), *TINY)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.stdout.count("submitted train") == 1
    out = results / "figures"
    proc = ablate(results, "plot", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in (
        "figure3_perplexity",
        "figure4_loss_split",
        "figure5_samples",
        "figure6_freeze",
        "figure7_contrastive",
        "text_ability",
        "sensitivity_lr",
        "sensitivity_batch",
    ):
        for ext in ("png", "pdf", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    fig3 = pd.read_csv(out / "figure3_perplexity.csv")
    assert {"pretrained", "random"} <= set(fig3["init"]) and set(fig3["kind"]) == {"raw", "ema"}
    fig4 = pd.read_csv(out / "figure4_loss_split.csv")
    assert {"text_loss", "image_loss"} == set(fig4["metric"])
    # Figure 6: the one freeze setting of the demo; Figure 7: the align run's 20 steps of both metrics.
    fig6 = pd.read_csv(out / "figure6_freeze.csv")
    assert fig6["series"].str.contains("emb_out").all()
    fig7 = pd.read_csv(out / "figure7_contrastive.csv")
    assert set(fig7["metric"]) == {"loss", "temperature"}
    # Sensitivity: one point per value of the swept setting for the random init.
    lr = pd.read_csv(out / "sensitivity_lr.csv")
    assert list(lr["x_param"].unique()) == ["optim.lr"] and sorted(lr["x"]) == [5e-4, 1e-3]
    batch = pd.read_csv(out / "sensitivity_batch.csv")
    assert sorted(batch["x"]) == [1152, 2304] and set(batch["init"]) == {"random"}
    table1 = (out / "table1_completions.md").read_text()
    assert "Once upon a time, there was a" in table1  # a demo prompt, before and after
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 8  # the demo's 6 arms + one new LR arm + one new batch arm
    assert summary["final_image_loss"].notna().all()
    assert summary["caption_match_seen"].notna().sum() == 7 and summary["scene_valid"].notna().sum() == 1


def test_bad_override_fails_before_anything_is_written(tmp_path):
    proc = ablate(tmp_path, "launch", "sweeps/demo.yaml", "optim.lr=-3e-4")
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr and "> 0" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_plot_without_runs_is_a_clear_error(tmp_path):
    proc = ablate(tmp_path, "plot")
    assert proc.returncode != 0 and "ablate launch" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_lists_arms_and_submits_nothing(tmp_path):
    proc = ablate(tmp_path, "launch", "sweeps/demo.yaml", "--dry-run")
    assert proc.returncode == 0
    assert "init=pretrained" in proc.stdout and "init=random" in proc.stdout and "pretrain" in proc.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_resend_rebuilds_a_run_in_another_store_without_duplicates(demo, tmp_path):
    results, _ = demo
    train_dir = next((results / "cache" / "train").iterdir())
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    n_rows = sum("loss" in r for r in rows)  # a step-0 row holds only the text-ability probe
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    for _ in range(2):  # the second send must add nothing
        proc = ablate(results, "resend", str(train_dir), "--tracking-uri", uri)
        assert proc.returncode == 0, proc.stderr[-2000:]
    db = sqlite3.connect(tmp_path / "other.db")
    (n_runs,) = db.execute(
        "SELECT COUNT(*) FROM tags WHERE key = 'ablate.stage' AND value = 'train'"
    ).fetchone()
    steps = db.execute(
        "SELECT run_uuid, step, COUNT(*) FROM metrics WHERE key = 'loss' GROUP BY run_uuid, step"
    ).fetchall()
    assert n_runs == 1
    # The train run and its arm's run (which resend rebuilds too, from the same directory), each step once.
    assert len({run for run, _, _ in steps}) == 2
    assert len(steps) == 2 * n_rows and all(count == 1 for _, _, count in steps)
