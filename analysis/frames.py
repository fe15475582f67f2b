"""Tidy pandas frames from the tracked runs; reads only through ablate.tracking (never mlflow itself)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ablate import tracking
from ablate.metrics import STEP_METRICS, TOKENS
from ablate.stages import names as stages
from ablate.train.final import TAIL_FRACTION  # "final" value of a curve: its last 5% of steps, averaged
from analysis.runs import source_column

# Per run, from tracking.fetch_runs through the one column mapping, analysis.runs.SOURCES.
META_COLUMNS = ("sweep", "arm", "init", "image_init", "task", "trainable")
CURVE_COLUMNS = ["run_id", *META_COLUMNS, "step", "tokens", "metric", "value"]
CURVE_METRICS = STEP_METRICS  # a train run's own curves: what its every step logs
FINAL_COLUMNS = ["run_id", "key", "n", "last_step", "last", "tail_n", "tail_mean"]


def training_curves(
    uri: str, sweep: str | None = None, metrics: Sequence[str] = CURVE_METRICS
) -> pd.DataFrame:
    """Every train-stage run's metrics, one row per (run, metric, step), with `tokens` at that step."""
    return curves_from_runs(uri, tracking.fetch_runs(uri, sweep=sweep, stage=stages.TRAIN), metrics)


def curves_from_runs(uri: str, runs: pd.DataFrame, metrics: Sequence[str] = CURVE_METRICS) -> pd.DataFrame:
    """training_curves for the given rows of tracking.fetch_runs, ordered by run (as given), metric, step."""
    metrics = [m for m in dict.fromkeys(metrics) if m != TOKENS]
    ids = runs["run_id"].drop_duplicates() if not runs.empty else []
    hist = tracking.fetch_histories(uri, ids, [*metrics, TOKENS]) if len(ids) else None
    return curves_from_histories(runs, hist, metrics)


def curves_from_histories(
    runs: pd.DataFrame, hist: pd.DataFrame | None, metrics: Sequence[str] = CURVE_METRICS
) -> pd.DataFrame:
    """The curves frame from tracking.fetch_histories rows (which may hold other runs and keys: those are
    left out), with run metadata from the tracking.fetch_runs rows `runs`.

    Works on integer codes rather than string merges: at hundreds of runs x thousands of steps the
    frame has millions of rows, and string-keyed merges/sorts took longer than the fetch itself.
    """
    empty = pd.DataFrame(
        {c: pd.Series(dtype="float64" if c in ("tokens", "value") else "object") for c in CURVE_COLUMNS}
    )
    if runs.empty or hist is None or hist.empty:
        return empty
    runs = runs.drop_duplicates("run_id")
    metrics = [m for m in dict.fromkeys(metrics) if m != TOKENS]  # tokens is the x column, always fetched
    # hist is sorted by run, key (in fetch order), step, time; a subset of its rows stays so sorted.
    run = pd.Index(runs["run_id"]).get_indexer(hist["run_id"])
    key = pd.Index([*metrics, TOKENS]).get_indexer(hist["key"])
    wanted = (run >= 0) & (key >= 0)
    if not wanted.all():
        hist, run, key = hist[wanted], run[wanted], key[wanted]
    if hist.empty:
        return empty
    step = hist["step"].to_numpy()
    # A step logged twice (possible only from outside MLflowTracker) counts once: its latest value.
    same = (run[1:] == run[:-1]) & (key[1:] == key[:-1]) & (step[1:] == step[:-1])
    last = np.append(~same, True)
    run, key, step, value = run[last], key[last], step[last], hist["value"].to_numpy()[last]
    is_tokens = key == len(metrics)
    at = (run.astype(np.int64) << 32) | step  # (run, step) as one int64: tokens looked up by index
    tokens = pd.Series(value[is_tokens], index=at[is_tokens])
    run, key, step, value, at = (
        run[~is_tokens],
        key[~is_tokens],
        step[~is_tokens],
        value[~is_tokens],
        at[~is_tokens],
    )
    columns = {"run_id": runs["run_id"].to_numpy(dtype=object)[run]}
    for column in META_COLUMNS:
        columns[column] = source_column(runs, column).to_numpy(dtype=object)[run]
    columns["step"] = step
    columns["tokens"] = tokens.reindex(at).to_numpy(dtype=np.float64)
    columns["metric"] = np.asarray(metrics, dtype=object)[key]
    columns["value"] = value
    return pd.DataFrame(columns)[CURVE_COLUMNS]


def final_values(hist: pd.DataFrame, fraction: float = TAIL_FRACTION) -> pd.DataFrame:
    """Per run and metric key of tracking.fetch_histories rows (as it returns them: grouped by run and key,
    each group sorted by step and time): the number of logged steps `n`, the last step and its value, and
    `tail_mean`, the mean over the last `tail_n` = max(1, ceil(fraction * n)) steps (NaNs skipped): a
    curve's final value, steadier than its last, noisy point. A step logged twice counts once (its latest).
    """
    if hist.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in FINAL_COLUMNS})
    run, key = hist["run_id"].to_numpy(dtype=object), hist["key"].to_numpy(dtype=object)
    step, value = hist["step"].to_numpy(dtype=np.int64), hist["value"].to_numpy(dtype=np.float64)
    starts = np.ones(len(hist), dtype=bool)
    starts[1:] = (run[1:] != run[:-1]) | (key[1:] != key[:-1])
    keep = np.ones(len(hist), dtype=bool)
    keep[:-1] = starts[1:] | (step[1:] != step[:-1])  # drop a row whose step the next row logs again
    run, key, step, value, starts = run[keep], key[keep], step[keep], value[keep], starts[keep]
    first = np.flatnonzero(starts)
    end = np.append(first[1:], len(run))  # one past each group's last row
    n = end - first
    tail_n = np.maximum(1, np.ceil(fraction * n)).astype(
        np.int64
    )  # ablate.train.final.tail_count, vectorised
    group = np.cumsum(starts) - 1
    in_tail = (end[group] - np.arange(len(run))) <= tail_n[group]
    counted = in_tail & ~np.isnan(value)
    total = np.bincount(group[counted], weights=value[counted], minlength=len(first))
    count = np.bincount(group[counted], minlength=len(first))
    with np.errstate(invalid="ignore", divide="ignore"):
        tail_mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return pd.DataFrame(
        {
            "run_id": run[first],
            "key": key[first],
            "n": n,
            "last_step": step[end - 1],
            "last": value[end - 1],
            "tail_n": tail_n,
            "tail_mean": tail_mean,
        }
    )[FINAL_COLUMNS]
