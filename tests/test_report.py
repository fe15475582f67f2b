"""`ablate report`: the findings' verdicts from plot's CSVs, and a self-contained page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import report
from analysis.report import NOT_REPRODUCED, NOT_RUN, REPRODUCED


def comparisons(rows: list[dict]) -> pd.DataFrame:
    base = {"context": "", "ci_low": float("nan"), "ci_high": float("nan"), "excludes_zero": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def write(out: Path, name: str, frame: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{name}.csv", index=False)


def row(comparison: str, metric: str, a: float, b: float, seeds: int = 1, lo=float("nan"), hi=float("nan")):
    return {"comparison": comparison, "metric": metric, "a_mean": a, "b_mean": b, "difference": a - b,
            "seeds": seeds, "ci_low": lo, "ci_high": hi}  # fmt: skip


def test_no_gain_is_reproduced_within_5_percent_or_an_interval_through_zero(tmp_path):
    pr = "pretrained - random (text-to-image)"
    write(tmp_path / "a", "comparisons", comparisons([row(pr, "final_image_loss", 0.49, 0.50)]))
    assert report.image_loss_no_gain(tmp_path / "a").status == REPRODUCED
    write(tmp_path / "b", "comparisons", comparisons([row(pr, "final_image_loss", 0.40, 0.50)]))
    assert report.image_loss_no_gain(tmp_path / "b").status == NOT_REPRODUCED  # 20% better: a real gain
    # With seeds the interval decides: -0.10 but the interval crosses zero.
    write(tmp_path / "c", "comparisons", comparisons([row(pr, "final_image_loss", 0.40, 0.50, 3, -0.3, 0.1)]))
    verdict = report.image_loss_no_gain(tmp_path / "c")
    assert verdict.status == REPRODUCED and "95% CI [-0.3000, +0.1000] over 3 seeds" in verdict.numbers
    assert report.image_loss_no_gain(tmp_path / "none").status == NOT_RUN


def test_forgetting_and_freezing(tmp_path):
    text = pd.DataFrame({"init": ["pretrained"] * 3, "tokens": [0, 1, 2], "value": [500.0, 900.0, 1800.0]})
    write(tmp_path, "text_ability", text)
    verdict = report.forgetting(tmp_path)
    assert verdict.status == REPRODUCED and "x3.6" in verdict.numbers
    frozen = [row("emb_out - all (unconditional, pretrained)", "final_loss", 1.5, 0.5),
              row("emb_out_norm_ffn - all (unconditional, pretrained)", "final_loss", 0.45, 0.5)]  # fmt: skip
    write(tmp_path, "comparisons", comparisons(frozen))
    assert report.freezing_ends_above(tmp_path).status == NOT_REPRODUCED  # one setting ends below
    write(tmp_path, "comparisons", comparisons(frozen[:1]))
    assert report.freezing_ends_above(tmp_path).status == REPRODUCED


def test_text_gap_closes(tmp_path):
    tokens = list(range(0, 100, 5))
    rows = [{"metric": "text_loss", "kind": "raw", "init": init, "tokens": t,
             "value": (9.0 if init == "random" else 8.0) if t < 10 else 1.0} for init in ("pretrained", "random")
            for t in tokens]  # fmt: skip
    write(tmp_path, "figure4_loss_split", pd.DataFrame(rows))
    verdict = report.text_loss_gap_closes(tmp_path)
    assert verdict.status == REPRODUCED and "gap +1.000 -> +0.000" in verdict.numbers


def test_the_page_embeds_its_figures_and_lists_every_finding(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "figure3_perplexity.png")
    summary = pd.DataFrame({"arm": ["init=pretrained"], "final_loss": [0.5], "train_run_id": ["abc"]})
    write(tmp_path, "summary", summary)
    arms = {"demo": "http://127.0.0.1:5000/#/experiments/2/runs?viewStateShareKey=arms"}
    page = report.render(tmp_path, "t", {"abc": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}, {}, arms)
    assert (
        "href='http://127.0.0.1:5000/#/experiments/2/runs?viewStateShareKey=arms'>the arms of demo<" in page
    )
    assert page.count("data:image/png;base64,") == 1 and "<img src='http" not in page  # works offline
    assert all(f.claim in page for f in report.FINDINGS)
    assert "http://127.0.0.1:5000/#/experiments/1/runs/abc" in page
    assert "Figure 3: perplexity" in page
