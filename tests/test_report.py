"""`ablate report`: the findings' verdicts from plot's CSVs, and a self-contained page."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from ablate import paper
from analysis import report, tables
from analysis.report import NOT_REPRODUCED, NOT_RUN, ONE_SEED, REPRODUCED


def comparisons(rows: list[dict]) -> pd.DataFrame:
    base = {"context": "", "ci_low": float("nan"), "ci_high": float("nan"), "excludes_zero": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def write(out: Path, name: str, frame: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{name}.csv", index=False)


def row(comparison: str, metric: str, a: float, b: float, seeds: int = 1, lo=float("nan"), hi=float("nan")):
    return {"comparison": comparison, "metric": metric, "a_mean": a, "b_mean": b, "difference": a - b,
            "seeds": seeds, "ci_low": lo, "ci_high": hi}  # fmt: skip


PR, CR = "pretrained - random (text-to-image)", "contrastive - random image rows (text-to-image, pretrained)"


def test_one_seed_establishes_nothing_and_names_the_sweep_that_runs_seeds(tmp_path):
    # +17.7% with one seed: no longer "reproduced" under a 5% rule, nor refuted.
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.593, 0.504)]))
    verdict = report.image_loss_no_gain(tmp_path)
    assert verdict.status == ONE_SEED
    assert "0.5930 vs 0.5040 (+17.7%) with one seed" in verdict.numbers
    assert "`ablate launch sweeps/t2i_init.yaml` runs each arm with 3 seeds" in verdict.numbers
    write(tmp_path, "comparisons", comparisons([row(CR, "final_image_loss", 0.482, 0.504)]))
    verdict = report.contrastive_no_gain(tmp_path)
    assert verdict.status == ONE_SEED and "sweeps/contrastive.yaml" in verdict.numbers
    assert "(-4.4%) with one seed" in verdict.numbers


def test_the_named_sweeps_run_the_seeds_the_verdict_says():
    root = Path(__file__).resolve().parent.parent
    for path, seeds in report.SEEDED_SWEEPS.values():
        assert yaml.safe_load((root / path).read_text())["seeds"]["demo"] == seeds > 1


def test_seeds_decide_by_the_interval_in_the_gain_direction(tmp_path):
    # Loss: lower is a gain. An interval below zero is a real gain: the paper's "no help" is not reproduced.
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.40, 0.50, 3, -0.15, -0.05)]))
    verdict = report.image_loss_no_gain(tmp_path)
    assert (
        verdict.status == NOT_REPRODUCED
        and "95% CI [-0.1500, -0.0500] over 3 seeds: a gain" in verdict.numbers
    )
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.40, 0.50, 3, -0.3, 0.1)]))
    verdict = report.image_loss_no_gain(tmp_path)
    assert verdict.status == REPRODUCED and "95% CI [-0.3000, +0.1000] over 3 seeds" in verdict.numbers
    # Worse than random with certainty is still no help.
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.60, 0.50, 3, 0.05, 0.15)]))
    assert report.image_loss_no_gain(tmp_path).status == REPRODUCED
    assert report.image_loss_no_gain(tmp_path / "none").status == NOT_RUN


def test_caption_match_is_judged_by_the_same_rules_higher_being_better(tmp_path):
    one = [row(PR, "caption_match_seen", 0.75, 0.25), row(CR, "caption_match_seen", 0.875, 0.25)]
    write(tmp_path, "comparisons", comparisons(one))
    verdict = report.caption_match_no_gain(tmp_path)
    assert verdict.status == ONE_SEED and "0.750 vs 0.250" in verdict.numbers
    assert "sweeps/t2i_init.yaml" in verdict.numbers and "sweeps/contrastive.yaml" in verdict.numbers
    # Higher caption match is a gain: an interval above zero refutes "no gain" ...
    gain = [
        row(PR, "caption_match_seen", 0.75, 0.25, 3, 0.3, 0.7),
        row(CR, "caption_match_seen", 0.3, 0.25, 3, -0.1, 0.2),
    ]
    write(tmp_path, "comparisons", comparisons(gain))
    verdict = report.caption_match_no_gain(tmp_path)
    assert verdict.status == NOT_REPRODUCED and "over 3 seeds: a gain" in verdict.numbers
    # ... one through zero does not, nor does one below zero (worse).
    none = [
        row(PR, "caption_match_seen", 0.3, 0.25, 3, -0.1, 0.2),
        row(CR, "caption_match_seen", 0.1, 0.25, 3, -0.3, -0.01),
    ]
    write(tmp_path, "comparisons", comparisons(none))
    verdict = report.caption_match_no_gain(tmp_path)
    assert (
        verdict.status == REPRODUCED
        and "no difference established" in verdict.numbers
        and "worse" in verdict.numbers
    )
    # Without a contrastive arm the pretrained pair alone decides.
    write(tmp_path, "comparisons", comparisons(none[:1]))
    assert report.caption_match_no_gain(tmp_path).status == REPRODUCED
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.5, 0.5)]))
    assert report.caption_match_no_gain(tmp_path).status == NOT_RUN


def test_comparisons_csv_carries_caption_match_for_the_findings():
    from analysis.seeds import comparisons as compare

    rows = [{"arm": f"{init} seed={s}", "init": init, "image_init": image, "task": "t2i", "trainable": "all",
             "seed": s, "final_image_loss": 1.0, "caption_match_seen": match + 0.01 * s}
            for s in range(3) for init, image, match in
            (("pretrained", "random", 0.5), ("random", "random", 0.25), ("pretrained", "contrastive", 0.75))]  # fmt: skip
    table = compare(pd.DataFrame(rows)).set_index(["comparison", "metric"])
    assert table.loc[(PR, "caption_match_seen"), "difference"] == pytest.approx(0.25)
    assert table.loc[(CR, "caption_match_seen"), "difference"] == pytest.approx(0.25)


def test_forgetting_and_freezing(tmp_path):
    text = pd.DataFrame({"init": ["pretrained"] * 3, "tokens": [0, 1, 2], "value": [500.0, 900.0, 1800.0]})
    write(tmp_path, "text_ability", text)
    verdict = report.forgetting(tmp_path)
    assert verdict.status == REPRODUCED and "x3.6" in verdict.numbers
    # Two seeds: each run must forget; a perplexity of 1.9 is printed as 1.9, not 2.
    seeds = pd.DataFrame({"init": ["pretrained"] * 4, "run_id": ["a", "a", "b", "b"], "tokens": [0, 9e5, 0, 9e5],
                          "value": [1.9, 523.0, 1.9, 2.0]})  # fmt: skip
    write(tmp_path, "text_ability", seeds)
    verdict = report.forgetting(tmp_path)
    assert verdict.status == NOT_REPRODUCED
    assert "over 2 runs 1.9 before training, 2 to 523 after 900k tokens (x1.05 to x275)" in verdict.numbers
    frozen = [row("emb_out - all (unconditional, pretrained)", "final_loss", 1.5, 0.5, 3, 0.9, 1.1),
              row("emb_out_norm_ffn - all (unconditional, pretrained)", "final_loss", 0.45, 0.5, 3, -0.1, 0.02)]  # fmt: skip
    write(tmp_path, "comparisons", comparisons(frozen))
    assert report.freezing_ends_above(tmp_path).status == NOT_REPRODUCED  # one setting not shown above
    write(tmp_path, "comparisons", comparisons(frozen[:1]))
    assert report.freezing_ends_above(tmp_path).status == REPRODUCED
    write(
        tmp_path,
        "comparisons",
        comparisons([row("emb_out - all (unconditional, pretrained)", "final_loss", 1.5, 0.5)]),
    )
    verdict = report.freezing_ends_above(tmp_path)
    assert verdict.status == ONE_SEED and "sweeps/freeze.yaml" in verdict.numbers


def text_loss(seeds: int, early: dict[str, float], late: float = 1.0, jitter: float = 0.0) -> pd.DataFrame:
    """figure4_loss_split points: per init and seed a run whose text loss starts at early[init] + 1 (its
    first step), holds early[init] through the first 10% of tokens and ends at `late`."""
    rows = []
    for init, level in early.items():
        for s in range(seeds):
            arm = f"init={init} seed={s}" if seeds > 1 else f"init={init}"
            for t in range(0, 100, 5):
                value = (level + 1.0 if t == 0 else level) if t < 10 else late + jitter * s
                rows.append({"metric": "text_loss", "kind": "raw", "init": init, "run_id": f"{init}{s}",
                             "arm": arm, "step": t, "tokens": t, "value": value + jitter * s * (init == "random")})  # fmt: skip
    return pd.DataFrame(rows)


def test_text_gap_needs_seeds_and_prints_the_first_step_of_each_init(tmp_path):
    three = {"pretrained": 8.0, "random": 9.0, "pretrained + contrastive": 7.5}
    write(tmp_path, "figure4_loss_split", text_loss(1, three))
    verdict = report.text_loss_gap_closes(tmp_path)
    assert verdict.status == ONE_SEED and "gap +1.000 -> +0.000" in verdict.numbers
    assert "first step: pretrained 9.000, random 10.000, pretrained + contrastive 8.500" in verdict.numbers
    assert (
        "first 10% of tokens: pretrained 8.500, random 9.500, pretrained + contrastive 8.000"
        in verdict.numbers
    )
    assert "sweeps/t2i_init.yaml" in verdict.numbers
    # Three seeds, a gap that closes in every one: reproduced.
    write(tmp_path, "figure4_loss_split", text_loss(3, three, jitter=0.01))
    verdict = report.text_loss_gap_closes(tmp_path)
    assert verdict.status == REPRODUCED and "over 3 seeds, 95% CI of the early gap [+" in verdict.numbers
    # Pretrained not lower early: not reproduced.
    write(tmp_path, "figure4_loss_split", text_loss(3, {"pretrained": 9.0, "random": 9.0}, jitter=0.01))
    assert report.text_loss_gap_closes(tmp_path).status == NOT_REPRODUCED


def test_the_page_embeds_its_figures_and_lists_every_finding(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "figure3_perplexity.png")
    summary = pd.DataFrame({"arm": ["init=pretrained"], "final_loss": [0.5], "train_run_id": ["abc"]})
    write(tmp_path, "summary", summary)
    arms = {"demo": "http://127.0.0.1:5000/#/experiments/2/runs?viewStateShareKey=arms"}
    page = report.render(tmp_path, "t", {"abc": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}, {}, arms)
    assert (
        "href='http://127.0.0.1:5000/#/experiments/2/runs?viewStateShareKey=arms' "
        "data-ui-path='/#/experiments/2/runs?viewStateShareKey=arms'>the arms of demo<" in page
    )
    assert page.count("data:image/png;base64,") == 1 and "<img src='http" not in page  # works offline
    assert all(f.claim in page for f in report.FINDINGS)
    assert "http://127.0.0.1:5000/#/experiments/1/runs/abc" in page
    assert "Figure 3: perplexity" in page


def completions_of(prompts: list[str]) -> pd.DataFrame:
    rows = [("pretrained", "a", "r1", step, step * 1e5, p, f"{p[:4]} at {step} " + "word " * 40)
            for step in (0, 9) for p in prompts]  # fmt: skip
    return pd.DataFrame(rows, columns=tables.COMPLETION_COLUMNS)


def test_table1_is_an_html_table_with_the_papers_columns_only_for_its_prompts(tmp_path):
    tables.table1_completions(completions_of(["Once upon a time", "The cat <b>"]), tmp_path / "demo")
    page = report.render(tmp_path / "demo", "t", {}, {})
    assert "<table class='completions'>" in page and "<pre>" not in page
    assert "<td>The cat &lt;b&gt;</td>" in page and "Once at 9 word" in page
    assert (
        "paper, before" not in page
        and "paper, before" not in (tmp_path / "demo" / "table1_completions.md").read_text()
    )
    assert "900k tokens, step 9" in page
    prompt = paper.TABLE1_PROMPTS[1]
    tables.table1_completions(completions_of(["Once upon a time", prompt]), tmp_path / "paper")
    page = report.render(tmp_path / "paper", "t", {}, {})
    assert (
        "<th>paper, before</th>" in page and f"<td>{paper.TABLE1_COMPLETIONS[prompt]['after']}</td>" in page
    )
    assert "| paper, before |" in (tmp_path / "paper" / "table1_completions.md").read_text()


def test_numbers_keep_their_significant_digits():
    assert [report.num(v) for v in (1.9, 0.51234, 523.4, 12345.6, 100.0)] == [
        "1.9",
        "0.512",
        "523",
        "12,346",
        "100",
    ]


def test_mlflow_links_follow_the_ui_address_and_the_page_can_change_it(tmp_path):
    from ablate.tracking import ui_command

    argv = ui_command("sqlite:///x.db")
    host, port = argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]
    assert report.default_ui_url() == f"http://{host}:{port}"  # ablate ui's own default, not a copy
    summary = pd.DataFrame({"arm": ["init=pretrained"], "heldout_text_ppl": [1.9], "train_run_id": ["abc"]})
    write(tmp_path, "summary", summary)
    base = "http://127.0.0.1:5123"
    page = report.render(tmp_path, "t", {"abc": f"{base}/#/experiments/1/runs/abc"}, {}, ui_url=base)
    assert f"href='{base}/#/experiments/1/runs/abc' data-ui-path='/#/experiments/1/runs/abc'>run<" in page
    assert f"id='ui-url' size='30' value='{base}'" in page and "<td>1.9</td>" in page
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the page's script is not run")
    # The page's script against a stand-in DOM: a new address rewrites every MLflow link and is remembered.
    script = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    harness = """
    const links = [{path: '/#/experiments/1/runs/abc', href: ''}, {path: '/#/experiments/2/runs', href: ''}];
    const field = {value: ''}; let submit = null; const store = {};
    globalThis.document = {
      getElementById: (id) => id === 'ui-url' ? field : {addEventListener: (e, f) => { submit = f; }},
      querySelectorAll: () => links.map((l) => ({getAttribute: () => l.path, set href(v) { l.href = v; }})),
    };
    globalThis.location = {search: ''};
    globalThis.localStorage = {getItem: (k) => store[k] ?? null, setItem: (k, v) => { store[k] = v; }};
    SCRIPT
    field.value = ' http://localhost:5001/ ';
    submit({preventDefault() {}});
    field.value = 'javascript:alert(1)';
    submit({preventDefault() {}});
    console.log(JSON.stringify([links.map((l) => l.href), store]));
    """.replace("SCRIPT", script)
    out = subprocess.run(
        ["node", "-e", harness], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    hrefs, store = json.loads(out)
    assert hrefs == [
        "http://localhost:5001/#/experiments/1/runs/abc",
        "http://localhost:5001/#/experiments/2/runs",
    ]
    assert store == {report.UI_KEY: "http://localhost:5001"}  # the javascript: address was refused


def test_report_help_names_the_page_it_writes():
    import argparse

    from ablate.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = next(a.help for a in sub._choices_actions if a.dest == "report")
    assert "results/report-<sweep>.html with --sweep" in text and "report-demo.html" in text
    assert parser.parse_args(["report", "--sweep", "demo", "--ui-url", "http://h:1"]).ui_url == "http://h:1"


def test_contrastive_needs_the_plateau_and_seeds(tmp_path):
    def align(values: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            {"metric": "loss", "kind": "raw", "run_id": "a", "step": range(len(values)), "value": values}
        )

    write(tmp_path, "comparisons", comparisons([row(CR, "final_image_loss", 0.50, 0.50, 3, -0.01, 0.01)]))
    write(
        tmp_path, "figure7_contrastive", align([5.0 / (1 + s) for s in range(100)])
    )  # still falling: refuted
    verdict = report.contrastive_no_gain(tmp_path)
    assert verdict.status == NOT_REPRODUCED and "still falling" in verdict.numbers
    write(tmp_path, "figure7_contrastive", align([1.0 + 0.001 * (s % 3) for s in range(100)]))
    assert report.contrastive_no_gain(tmp_path).status == REPRODUCED
    # A plateau beside one seed of the comparison: the no-gain half is not established.
    write(tmp_path, "comparisons", comparisons([row(CR, "final_image_loss", 0.50, 0.50)]))
    verdict = report.contrastive_no_gain(tmp_path)
    assert (
        verdict.status == ONE_SEED
        and "(plateau)" in verdict.numbers
        and "sweeps/contrastive.yaml" in verdict.numbers
    )
