"""The paper's findings: their verdicts from the CSVs `ablate plot` writes (analysis.findings)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import findings
from analysis.findings import NOT_REPRODUCED, NOT_RUN, ONE_SEED, REPRODUCED


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
    verdict = findings.image_loss_no_gain(tmp_path)
    assert verdict.status == ONE_SEED
    assert "0.5930 vs 0.5040 (+17.7%) with one seed" in verdict.numbers
    assert "`ablate launch sweeps/t2i_init.yaml` runs each arm with 3 seeds" in verdict.numbers
    write(tmp_path, "comparisons", comparisons([row(CR, "final_image_loss", 0.482, 0.504)]))
    verdict = findings.contrastive_no_gain(tmp_path)
    assert verdict.status == ONE_SEED and "sweeps/contrastive.yaml" in verdict.numbers
    assert "(-4.4%) with one seed" in verdict.numbers


def test_the_named_sweeps_run_the_seeds_the_verdict_says():
    root = Path(__file__).resolve().parent.parent
    for path, seeds in findings.SEEDED_SWEEPS.values():
        assert yaml.safe_load((root / path).read_text())["seeds"]["demo"] == seeds > 1


def test_seeds_decide_by_the_interval_in_the_gain_direction(tmp_path):
    # Loss: lower is a gain. An interval below zero is a real gain: the paper's "no help" is not reproduced.
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.40, 0.50, 3, -0.15, -0.05)]))
    verdict = findings.image_loss_no_gain(tmp_path)
    assert (
        verdict.status == NOT_REPRODUCED
        and "95% CI [-0.1500, -0.0500] over 3 seeds: a gain" in verdict.numbers
    )
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.40, 0.50, 3, -0.3, 0.1)]))
    verdict = findings.image_loss_no_gain(tmp_path)
    assert verdict.status == REPRODUCED and "95% CI [-0.3000, +0.1000] over 3 seeds" in verdict.numbers
    # Worse than random with certainty is still no help.
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.60, 0.50, 3, 0.05, 0.15)]))
    assert findings.image_loss_no_gain(tmp_path).status == REPRODUCED
    assert findings.image_loss_no_gain(tmp_path / "none").status == NOT_RUN


def test_caption_match_is_judged_by_the_same_rules_higher_being_better(tmp_path):
    one = [row(PR, "caption_match_seen", 0.75, 0.25), row(CR, "caption_match_seen", 0.078, 0.031)]
    write(tmp_path, "comparisons", comparisons(one))
    verdict = findings.caption_match_no_gain(tmp_path)
    # Rates as percentages of samples, without a relative change (of a rate of a few percent: noise).
    assert verdict.status == ONE_SEED and "75.0% vs 25.0% of samples with one seed" in verdict.numbers
    assert (
        "embeddings: 7.8% vs 3.1% of samples with one seed" in verdict.numbers and "(+" not in verdict.numbers
    )
    assert "sweeps/t2i_init.yaml" in verdict.numbers and "sweeps/contrastive.yaml" in verdict.numbers
    # Higher caption match is a gain: an interval above zero refutes "no gain" ...
    gain = [
        row(PR, "caption_match_seen", 0.75, 0.25, 3, 0.3, 0.7),
        row(CR, "caption_match_seen", 0.3, 0.25, 3, -0.1, 0.2),
    ]
    write(tmp_path, "comparisons", comparisons(gain))
    verdict = findings.caption_match_no_gain(tmp_path)
    assert verdict.status == NOT_REPRODUCED and "over 3 seeds: a gain" in verdict.numbers
    assert (
        "pretrained vs random: 75.0% vs 25.0% of samples, difference +50.0 points, "
        "95% CI [+30.0, +70.0] points over 3 seeds" in verdict.numbers
    )
    # ... one through zero does not, nor does one below zero (worse).
    none = [
        row(PR, "caption_match_seen", 0.3, 0.25, 3, -0.1, 0.2),
        row(CR, "caption_match_seen", 0.1, 0.25, 3, -0.3, -0.01),
    ]
    write(tmp_path, "comparisons", comparisons(none))
    verdict = findings.caption_match_no_gain(tmp_path)
    assert (
        verdict.status == REPRODUCED
        and "no difference established" in verdict.numbers
        and "worse" in verdict.numbers
    )
    # Without a contrastive arm the pretrained pair alone decides.
    write(tmp_path, "comparisons", comparisons(none[:1]))
    assert findings.caption_match_no_gain(tmp_path).status == REPRODUCED
    write(tmp_path, "comparisons", comparisons([row(PR, "final_image_loss", 0.5, 0.5)]))
    assert findings.caption_match_no_gain(tmp_path).status == NOT_RUN


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
    verdict = findings.forgetting(tmp_path)
    assert verdict.status == REPRODUCED and "x3.6" in verdict.numbers
    # Two seeds: each run must forget; a perplexity of 1.9 is printed as 1.9, not 2.
    seeds = pd.DataFrame({"init": ["pretrained"] * 4, "run_id": ["a", "a", "b", "b"], "tokens": [0, 9e5, 0, 9e5],
                          "value": [1.9, 523.0, 1.9, 2.0]})  # fmt: skip
    write(tmp_path, "text_ability", seeds)
    verdict = findings.forgetting(tmp_path)
    assert verdict.status == NOT_REPRODUCED
    assert "over 2 runs 1.9 before training, 2 to 523 after 900k tokens (x1.05 to x275)" in verdict.numbers
    frozen = [row("emb_out - all (unconditional, pretrained)", "final_loss", 1.5, 0.5, 3, 0.9, 1.1),
              row("emb_out_norm_ffn - all (unconditional, pretrained)", "final_loss", 0.45, 0.5, 3, -0.1, 0.02)]  # fmt: skip
    write(tmp_path, "comparisons", comparisons(frozen))
    assert findings.freezing_ends_above(tmp_path).status == NOT_REPRODUCED  # one setting not shown above
    write(tmp_path, "comparisons", comparisons(frozen[:1]))
    assert findings.freezing_ends_above(tmp_path).status == REPRODUCED
    write(
        tmp_path,
        "comparisons",
        comparisons([row("emb_out - all (unconditional, pretrained)", "final_loss", 1.5, 0.5)]),
    )
    verdict = findings.freezing_ends_above(tmp_path)
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
    verdict = findings.text_loss_gap_closes(tmp_path)
    assert verdict.status == ONE_SEED and "gap +1.000 -> +0.000" in verdict.numbers
    assert "first step: pretrained 9.000, random 10.000, pretrained + contrastive 8.500" in verdict.numbers
    assert (
        "first 10% of tokens: pretrained 8.500, random 9.500, pretrained + contrastive 8.000"
        in verdict.numbers
    )
    assert "sweeps/t2i_init.yaml" in verdict.numbers
    # Three seeds, a gap that closes in every one: reproduced.
    write(tmp_path, "figure4_loss_split", text_loss(3, three, jitter=0.01))
    verdict = findings.text_loss_gap_closes(tmp_path)
    assert verdict.status == REPRODUCED and "over 3 seeds, 95% CI of the early gap [+" in verdict.numbers
    # Pretrained not lower early: not reproduced.
    write(tmp_path, "figure4_loss_split", text_loss(3, {"pretrained": 9.0, "random": 9.0}, jitter=0.01))
    assert findings.text_loss_gap_closes(tmp_path).status == NOT_REPRODUCED


def test_numbers_keep_their_significant_digits():
    assert [findings.num(v) for v in (1.9, 0.51234, 523.4, 12345.6, 100.0)] == [
        "1.9",
        "0.512",
        "523",
        "12,346",
        "100",
    ]


def test_contrastive_needs_the_plateau_and_seeds(tmp_path):
    def align(values: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            {"metric": "loss", "kind": "raw", "run_id": "a", "step": range(len(values)), "value": values}
        )

    write(tmp_path, "comparisons", comparisons([row(CR, "final_image_loss", 0.50, 0.50, 3, -0.01, 0.01)]))
    write(
        tmp_path, "figure7_contrastive", align([5.0 / (1 + s) for s in range(100)])
    )  # still falling: refuted
    verdict = findings.contrastive_no_gain(tmp_path)
    assert verdict.status == NOT_REPRODUCED and "still falling" in verdict.numbers
    write(tmp_path, "figure7_contrastive", align([1.0 + 0.001 * (s % 3) for s in range(100)]))
    assert findings.contrastive_no_gain(tmp_path).status == REPRODUCED
    # A plateau beside one seed of the comparison: the no-gain half is not established.
    write(tmp_path, "comparisons", comparisons([row(CR, "final_image_loss", 0.50, 0.50)]))
    verdict = findings.contrastive_no_gain(tmp_path)
    assert (
        verdict.status == ONE_SEED
        and "(plateau)" in verdict.numbers
        and "sweeps/contrastive.yaml" in verdict.numbers
    )
