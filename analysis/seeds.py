"""Seeds: per arm, the mean and spread of its final numbers across train.seed; for each of the paper's
comparisons, the difference with a 95% confidence interval and whether it excludes zero.

Runs of one arm differ only in `seed` (a sweep's `seeds: N`; the arm label ends in ' seed=k'). Two arms
compared run the same seeds, and a seed fixes the data order, so the comparison pairs them by seed: the
interval is Student's t over the per-seed differences (df = pairs - 1). Pure pandas over summary.csv's
rows (analysis.tables.summary_frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.atomic import atomic_write_text
from ablate.metrics import (
    CAPTION_MATCH_HELDOUT,
    CAPTION_MATCH_SEEN,
    FID,
    FINAL_IMAGE_LOSS,
    FINAL_LOSS,
    FINAL_PERPLEXITY,
    FINAL_TEXT_LOSS,
    HELDOUT_TEXT_PPL,
    SCENE_VALID,
)
from analysis.curves import FREEZE_SETTINGS
from analysis.runs import arm_of
from analysis.tables import as_written, to_csv

ARMS_TABLE, COMPARISONS_TABLE = (
    "summary_arms",
    "comparisons",
)  # the tables written (.csv); the findings read them
# What makes two runs the same arm but for the seed (summary.csv columns).
ARM_FIELDS = ("init", "image_init", "task", "trainable", "lr", "batch_tokens", "scale")
METRICS = (FINAL_LOSS, FINAL_TEXT_LOSS, FINAL_IMAGE_LOSS, FINAL_PERPLEXITY, HELDOUT_TEXT_PPL,
           CAPTION_MATCH_SEEN, CAPTION_MATCH_HELDOUT, SCENE_VALID, FID)  # fmt: skip
# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30); 1.96 beyond.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip
COMPARISON_COLUMNS = [
    "comparison", "metric", "context", "seeds", "a_mean", "b_mean", "difference", "ci_low", "ci_high",
    "excludes_zero",
]  # fmt: skip
ARM_COLUMNS = [
    "arm",
    *ARM_FIELDS,
    "seeds",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd", "min", "max")),
]


@dataclass(frozen=True)
class Comparison:
    """Arms with `vary` = a against the same arms with `vary` = b, among rows matching `where`."""

    name: str
    vary: str
    a: str
    b: str
    where: dict[str, str] = field(default_factory=dict)
    metrics: tuple[str, ...] = (FINAL_LOSS,)


COMPARISONS = (
    Comparison(
        "pretrained - random (text-to-image)",
        "init",
        "pretrained",
        "random",
        {"task": "t2i", "trainable": "all", "image_init": "random"},
        (FINAL_IMAGE_LOSS, FINAL_TEXT_LOSS, FINAL_LOSS, CAPTION_MATCH_SEEN),
    ),
    *(
        Comparison(
            f"{preset} - all (unconditional, pretrained)",
            "trainable",
            preset,
            "all",
            {"task": "uncond", "init": "pretrained"},
        )
        for preset in FREEZE_SETTINGS
        if preset != "all"
    ),
    Comparison(
        "contrastive - random image rows (text-to-image, pretrained)",
        "image_init",
        "contrastive",
        "random",
        {"task": "t2i", "init": "pretrained"},
        (FINAL_IMAGE_LOSS, FINAL_LOSS, CAPTION_MATCH_SEEN),
    ),
)


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t with df degrees of freedom."""
    if df < 1:
        return math.nan
    return T975[df - 1] if df <= len(T975) else 1.96


def _normalised(summary: pd.DataFrame) -> pd.DataFrame:
    rows = summary.copy()
    defaults = {"task": "t2i", "trainable": "all", "image_init": "random", "seed": 0}
    for column, default in defaults.items():
        if column not in rows.columns:
            rows[column] = default
        rows[column] = rows[column].where(rows[column].notna(), default)
    rows["arm"] = rows["arm"].map(arm_of)
    for column in ARM_FIELDS:
        if column not in rows.columns:
            rows[column] = None
    return rows


def arm_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: its seeds and, per metric, mean, sample standard deviation, min and max."""
    rows = _normalised(summary)
    out = []
    for (arm, *fields), group in rows.groupby(["arm", *ARM_FIELDS], sort=False, dropna=False):
        row: dict[str, object] = {
            "arm": arm,
            **dict(zip(ARM_FIELDS, fields, strict=True)),
            "seeds": len(group),
        }
        for m in METRICS:
            values = (
                pd.to_numeric(group[m], errors="coerce").dropna() if m in group else pd.Series(dtype=float)
            )
            row[f"{m}_mean"] = values.mean() if len(values) else np.nan
            row[f"{m}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{m}_min"] = values.min() if len(values) else np.nan
            row[f"{m}_max"] = values.max() if len(values) else np.nan
        out.append(row)
    return pd.DataFrame(out, columns=ARM_COLUMNS)


def paired_interval(a: pd.Series, b: pd.Series) -> tuple[int, float, float, float]:
    """(pairs, mean difference, 95% CI low, high) of a - b paired by index (seed); NaN bounds below 2."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    d = both["a"] - both["b"]
    n = len(d)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(d.mean())
    if n < 2:
        return n, mean, math.nan, math.nan
    half = t975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return n, mean, mean - half, mean + half


def comparisons(summary: pd.DataFrame) -> pd.DataFrame:
    """COMPARISON_COLUMNS: every comparison of COMPARISONS the runs allow, per context (the other arm
    fields) and metric."""
    rows = _normalised(summary)
    out = []
    for c in COMPARISONS:
        mask = np.ones(len(rows), dtype=bool)
        for k, v in c.where.items():
            mask &= (rows[k].astype(str) == v).to_numpy()
        chosen = rows[mask & rows[c.vary].astype(str).isin([c.a, c.b]).to_numpy()]
        context_fields = [f for f in ARM_FIELDS if f != c.vary and f not in c.where]
        for context, group in chosen.groupby(context_fields, sort=False, dropna=False):
            side = {
                v: group[group[c.vary].astype(str) == v].drop_duplicates("seed").set_index("seed")
                for v in (c.a, c.b)
            }
            if side[c.a].empty or side[c.b].empty:
                continue
            label = " ".join(
                f"{f}={as_written(v)}" for f, v in zip(context_fields, context, strict=True) if pd.notna(v)
            )
            for m in c.metrics:
                if m not in group:
                    continue
                a, b = (pd.to_numeric(side[v][m], errors="coerce") for v in (c.a, c.b))
                # Means over the paired seeds only, so that a_mean - b_mean is the difference shown.
                both = pd.concat({"a": a, "b": b}, axis=1).dropna()
                a, b = both["a"], both["b"]
                n, diff, lo, hi = paired_interval(a, b)
                if n == 0:
                    continue
                out.append(
                    {
                        "comparison": c.name,
                        "metric": m,
                        "context": label,
                        "seeds": n,
                        "a_mean": float(a.mean()),
                        "b_mean": float(b.mean()),
                        "difference": diff,
                        "ci_low": lo,
                        "ci_high": hi,
                        "excludes_zero": bool(lo > 0 or hi < 0) if n > 1 else None,
                    }
                )
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def write_seed_tables(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """summary_arms.csv (arm_summary) and comparisons.csv (comparisons): config values as the sweep
    writes them, measured numbers to 4 significant digits (analysis.tables.to_csv)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{ARMS_TABLE}.csv", out_dir / f"{COMPARISONS_TABLE}.csv"]
    for path, frame in zip(paths, (arm_summary(summary), comparisons(summary)), strict=True):
        atomic_write_text(path, to_csv(frame))
    return paths
