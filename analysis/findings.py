"""The paper's findings and their verdicts at this scale: pure functions over the CSVs `ablate plot` writes.

Each finding (FINDINGS) reads what plot wrote (summary.csv, comparisons.csv, the figures' points), so a
verdict says exactly what the figures show: reproduced, not reproduced, one seed: not established, or not
run (the sweep lacks the arms). `ablate report` (analysis.report) puts them on its page. A verdict's
numbers are plain text, a command in them in backticks as Markdown writes it (the page shows it as code).

What a verdict rests on. A finding that compares two arms (pretrained vs random, contrastive vs random,
frozen vs fully trainable; the text-token loss gap) rests on several seeds per arm and the 95% interval
of their seed-paired difference (analysis.seeds): with one seed a difference cannot be told from
seed-to-seed variation (the per-step loss alone swings by about 0.01 around its final value), so the
verdict is ONE_SEED, with the one-seed numbers and the sweep file that runs the seeds. A finding about a
run against its own start rests on that run: forgetting (the step-0 probe is the pretrained model
itself, the same for every seed) and the align loss's plateau (one align run serves every seed); with
several runs, each must show it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ablate import paper
from ablate.metrics import CAPTION_MATCH_SEEN, FINAL_IMAGE_LOSS, FINAL_LOSS, LOSS, TEXT_LOSS
from analysis.plot import FIGURE4, FIGURE7, TEXT_ABILITY
from analysis.runs import label_rank
from analysis.seeds import COMPARISONS_TABLE, paired_interval
from analysis.tables import human

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
ONE_SEED = "one seed: not established"
PLATEAU = 0.05  # the align loss's last tenth within 5% of the tenth before: it has stopped falling
FORGOT = 1.2  # held-out text perplexity at least 1.2x its value before text-to-image training
# The sweep file that runs a comparison's arms with several seeds, and how many at demo scale
# (tests/test_findings.py holds these to the files).
SEEDED_SWEEPS = {
    "pretrained - random": ("sweeps/t2i_init.yaml", 3),
    "contrastive - random": ("sweeps/contrastive.yaml", 3),
    "freeze": ("sweeps/freeze.yaml", 3),
}
SEED_OF_ARM = re.compile(r"\bseed=(\d+)$")  # ablate.sweep labels the runs of `seeds: N` ' seed=k'


@dataclass(frozen=True)
class Verdict:
    """A finding's status (REPRODUCED, NOT_REPRODUCED, ONE_SEED, NOT_RUN) and the numbers it rests on."""

    status: str
    numbers: str


@dataclass(frozen=True)
class Finding:
    """One claim of the paper and how this sweep's outputs test it."""

    claim: str
    check: Callable[[Path], Verdict]


def read_csv(out_dir: Path, name: str) -> pd.DataFrame:
    """<name>.csv as plot wrote it into out_dir; empty when plot did not write it."""
    path = out_dir / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _comparison(out_dir: Path, prefix: str, metric: str) -> pd.DataFrame:
    table = read_csv(out_dir, COMPARISONS_TABLE)
    if table.empty:
        return table
    return table[table["comparison"].str.startswith(prefix) & (table["metric"] == metric)]


def num(value: float, digits: int = 3) -> str:
    """A number at `digits` significant digits, thousands grouped: 1.9, 0.512, 523, 12,345."""
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _seeds_hint(key: str) -> str:
    path, seeds = SEEDED_SWEEPS[key]
    return (
        f"`ablate launch {path}` runs each arm with {seeds} seeds at demo scale; their 95% interval decides"
    )


def _seeded(row: Any) -> bool:
    """A comparisons.csv row (itertuples) with several seeds and an interval."""
    return bool(row.seeds > 1 and pd.notna(row.ci_low) and pd.notna(row.ci_high))


def _combine(parts: list[Verdict]) -> Verdict:
    """One verdict from a finding's parts: refuted by any, else unestablished by any, else reproduced;
    parts not run are left out."""
    ran = [v for v in parts if v.status != NOT_RUN] or parts
    numbers = "; ".join(v.numbers for v in ran)
    for status in (NOT_RUN, NOT_REPRODUCED, ONE_SEED):
        if any(v.status == status for v in ran):
            return Verdict(status, numbers)
    return Verdict(REPRODUCED, numbers)


def _no_gain(
    rows: pd.DataFrame, what: str, key: str, higher_is_better: bool = False, rate: bool = False
) -> Verdict:
    """'a is no better than b' over comparisons.csv rows (a - b): reproduced when the seeds' 95% interval
    does not exclude 0 in a's favour, not reproduced when it does; one seed establishes neither. `rate`:
    a and b are fractions of samples (caption match), printed as percentages, their difference in
    percentage points and with no relative change (of a rate of a few percent, mostly noise)."""
    if rows.empty:
        return Verdict(NOT_RUN, f"no {what} pair in this sweep")

    def value(v: float) -> str:
        return f"{v:.1%}" if rate else f"{v:.4f}"

    def change(v: float) -> str:
        return f"{100 * v:+.1f}" if rate else f"{v:+.4f}"

    unit, of = (" points", " of samples") if rate else ("", "")
    parts, seeded, gain = [], False, False
    for r in rows.itertuples():
        where = f" ({r.context})" if isinstance(r.context, str) and r.context and len(rows) > 1 else ""
        head = f"{what}{where}: {value(r.a_mean)} vs {value(r.b_mean)}{of}"
        if _seeded(r):
            better = r.ci_low > 0 if higher_is_better else r.ci_high < 0
            worse = r.ci_high < 0 if higher_is_better else r.ci_low > 0
            seeded, gain = True, gain or better
            word = "a gain" if better else "worse" if worse else "no difference established"
            parts.append(
                f"{head}, difference {change(r.difference)}{unit}, 95% CI [{change(r.ci_low)}, "
                f"{change(r.ci_high)}]{unit} over {r.seeds} seeds: {word}"
            )
        else:
            rel = f" ({r.difference / r.b_mean:+.1%})" if r.b_mean and not rate else ""
            parts.append(f"{head}{rel} with one seed")
    if not seeded:
        return Verdict(ONE_SEED, "; ".join(parts) + f"; {_seeds_hint(key)}")
    return Verdict(NOT_REPRODUCED if gain else REPRODUCED, "; ".join(parts))


def image_loss_no_gain(out_dir: Path) -> Verdict:
    rows = _comparison(out_dir, "pretrained - random", FINAL_IMAGE_LOSS)
    return _no_gain(rows, "image-token loss, pretrained vs random", "pretrained - random")


def caption_match_no_gain(out_dir: Path) -> Verdict:
    pairs = (("pretrained - random", "pretrained vs random"),
             ("contrastive - random", "contrastive vs random image-code embeddings"))  # fmt: skip
    parts = [
        _no_gain(
            _comparison(out_dir, key, CAPTION_MATCH_SEEN),
            f"caption match (seen), {what}",
            key,
            higher_is_better=True,
            rate=True,
        )
        for key, what in pairs
    ]
    if all(p.status == NOT_RUN for p in parts):
        return Verdict(NOT_RUN, "no caption match of a pretrained and a random text-to-image arm")
    return _combine(parts)


def _plateau(out_dir: Path) -> Verdict:
    """The align loss has stopped falling: per align run, its last tenth of steps within PLATEAU of the
    tenth before."""
    points = read_csv(out_dir, FIGURE7.name)
    if points.empty:
        return Verdict(NOT_RUN, "no align run")
    raw = points[(points["metric"] == LOSS) & (points["kind"] == "raw")]
    parts, ok = [], True
    for _, run in raw.groupby(
        raw["run_id"] if "run_id" in raw else pd.Series(0, index=raw.index), sort=False
    ):
        values = run.sort_values("step")["value"].to_numpy()
        tenth = max(1, len(values) // 10)
        last, before = values[-tenth:].mean(), values[-2 * tenth : -tenth].mean()
        flat = bool(before) and abs(last - before) / before < PLATEAU
        ok = ok and flat
        parts.append(
            f"contrastive loss over the last tenth {last:.3f} vs the tenth before {before:.3f} "
            f"({'plateau' if flat else 'still falling'})"
        )
    if not parts:
        return Verdict(NOT_RUN, "no align loss logged")
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(parts))


def contrastive_no_gain(out_dir: Path) -> Verdict:
    rows = _comparison(out_dir, "contrastive - random", FINAL_IMAGE_LOSS)
    gain = _no_gain(
        rows, "image-token loss, contrastive vs random image-code embeddings", "contrastive - random"
    )
    return gain if gain.status == NOT_RUN else _combine([gain, _plateau(out_dir)])


def _text_loss_per_run(points: pd.DataFrame) -> pd.DataFrame:
    """Per run of figure 4's raw text-token loss: init, seed, the loss at its first step, its mean over the
    first 10% of the run's tokens and over the last 5%."""
    rows = []
    runs = points["run_id"] if "run_id" in points else points["init"]
    for _, run in points.groupby(runs, sort=False):
        run = run.sort_values("tokens")
        end, tokens = float(run["tokens"].max()), run["tokens"]
        arm = run["arm"].iloc[0] if "arm" in run else None
        seed = SEED_OF_ARM.search(arm) if isinstance(arm, str) else None
        rows.append(
            {
                "init": run["init"].iloc[0],
                "seed": int(seed.group(1)) if seed else 0,
                "first": float(run["value"].iloc[0]),
                "early": float(run[tokens <= 0.1 * end]["value"].mean()),
                "late": float(run[tokens >= 0.95 * end]["value"].mean()),
            }
        )
    return pd.DataFrame(rows).groupby(["init", "seed"]).mean()


def text_loss_gap_closes(out_dir: Path) -> Verdict:
    """Pretrained below random early on text tokens (the first 10% of tokens), the gap smaller by the
    end (the last 5%): over seeds, both intervals must exclude 0 (seed-paired, per seed the early gap and
    the early gap less the late one's size)."""
    points = read_csv(out_dir, FIGURE4.name)
    if points.empty:
        return Verdict(NOT_RUN, "no text-to-image runs")
    runs = _text_loss_per_run(points[(points["metric"] == TEXT_LOSS) & (points["kind"] == "raw")])
    inits = sorted(set(runs.index.get_level_values("init")), key=label_rank)
    if not {"pretrained", "random"} <= set(inits):
        return Verdict(NOT_RUN, "needs both a pretrained and a random text-to-image run")
    by = {i: runs.xs(i, level="init") for i in inits}
    mean = {i: by[i].mean() for i in inits}
    gap_early = mean["random"]["early"] - mean["pretrained"]["early"]
    gap_late = mean["random"]["late"] - mean["pretrained"]["late"]
    numbers = (
        "text-token loss at the first step: " + ", ".join(f"{i} {mean[i]['first']:.3f}" for i in inits)
        + "; mean over the first 10% of tokens: " + ", ".join(f"{i} {mean[i]['early']:.3f}" for i in inits)
        + f"; last 5%: pretrained {mean['pretrained']['late']:.3f}, random {mean['random']['late']:.3f} "
        f"(gap {gap_early:+.3f} -> {gap_late:+.3f})"
    )  # fmt: skip
    pretrained, random = by["pretrained"], by["random"]
    seeds = pretrained.index.intersection(random.index)
    if len(seeds) < 2:
        return Verdict(ONE_SEED, f"{numbers}, one seed; {_seeds_hint('pretrained - random')}")
    early = random.loc[seeds, "early"] - pretrained.loc[seeds, "early"]
    late = random.loc[seeds, "late"] - pretrained.loc[seeds, "late"]
    n, _, early_lo, early_hi = paired_interval(early, pd.Series(0.0, index=seeds))
    _, _, close_lo, close_hi = paired_interval(early - late.abs(), pd.Series(0.0, index=seeds))
    ok = early_lo > 0 and close_lo > 0
    return Verdict(
        REPRODUCED if ok else NOT_REPRODUCED,
        f"{numbers}; over {n} seeds, 95% CI of the early gap [{early_lo:+.3f}, {early_hi:+.3f}], of its "
        f"closing (early gap less the late gap's size) [{close_lo:+.3f}, {close_hi:+.3f}]",
    )


def forgetting(out_dir: Path) -> Verdict:
    """Every pretrained run's held-out text perplexity ends at least FORGOT times its value before
    training (the step-0 probe: the pretrained model itself)."""
    points = read_csv(out_dir, TEXT_ABILITY.name)
    if points.empty or "pretrained" not in set(points["init"]):
        return Verdict(NOT_RUN, "no pretrained text-to-image run with the text-ability probe")
    pretrained = points[points["init"] == "pretrained"]
    runs = pretrained["run_id"] if "run_id" in pretrained else pretrained["init"]
    ends = []
    for _, run in pretrained.groupby(runs, sort=False):
        run = run.sort_values("tokens")
        ends.append(
            (float(run["value"].iloc[0]), float(run["value"].iloc[-1]), float(run["tokens"].iloc[-1]))
        )
    first, last, tokens = (pd.Series(column) for column in zip(*ends, strict=True))
    factor = last / first
    ok = bool((factor > FORGOT).all())

    def span(values: pd.Series, show: Callable[[float], str] = num) -> str:
        low, high = show(values.min()), show(values.max())
        return low if low == high else f"{low} to {high}"

    runs_note = f" over {len(ends)} runs" if len(ends) > 1 else ""
    return Verdict(
        REPRODUCED if ok else NOT_REPRODUCED,
        f"held-out text perplexity{runs_note} {span(first)} before training, {span(last)} after "
        f"{span(tokens, human)} tokens ({span(factor, lambda v: 'x' + num(v))})",
    )


def freezing_ends_above(out_dir: Path) -> Verdict:
    """Every partial-freeze setting ends above the fully trainable arm: over seeds, the 95% interval of
    each setting's final loss less the full arm's above 0."""
    table = read_csv(out_dir, COMPARISONS_TABLE)
    rows = (
        table[table["comparison"].str.contains("- all (unconditional", regex=False)]
        if not table.empty
        else table
    )
    rows = rows[rows["metric"] == FINAL_LOSS] if not rows.empty else rows
    if rows.empty:
        return Verdict(
            NOT_RUN, "needs the fully trainable unconditional arm beside a frozen one (sweeps/freeze.yaml)"
        )
    parts, seeded, ok = [], False, True
    for r in rows.itertuples():
        head = f"{r.comparison.split(' - ')[0]}: {r.a_mean:.3f} vs all {r.b_mean:.3f}"
        if _seeded(r):
            seeded, above = True, r.ci_low > 0
            ok = ok and above
            parts.append(
                f"{head}, difference 95% CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}] over {r.seeds} seeds"
                + ("" if above else ": not above")
            )
        else:
            parts.append(f"{head} with one seed")
    if not seeded:
        return Verdict(ONE_SEED, "; ".join(parts) + f"; {_seeds_hint('freeze')}")
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(parts))


FINDINGS = (
    Finding("Image-token loss: pretraining the language model does not help (pretrained vs random init).",
            image_loss_no_gain),
    Finding(f"Generation quality: pretraining does not help (the paper: FID {paper.FID['pretrained']} pretrained "
            f"vs {paper.FID['random']} random); here the exact caption match of samples for seen "
            "combinations, pretrained and contrastive vs random.", caption_match_no_gain),
    Finding("Text-token loss: lower early for the pretrained model, the gap closing with training.",
            text_loss_gap_closes),
    Finding("The pretrained model forgets language: its held-out text perplexity rises.", forgetting),
    Finding("Every partial-freeze setting ends above full fine-tuning (unconditional generation).",
            freezing_ends_above),
    Finding("Contrastive alignment of the image embeddings plateaus and its initialisation gives no gain.",
            contrastive_no_gain),
)  # fmt: skip
