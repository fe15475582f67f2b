"""The run table: one row per tracked stage run, with the fields the figures select and group by.

Built from `tracking.fetch_runs` rows (`tags.ablate.*`, `params.*` columns; see docs/CONTRACTS.md
"MLflow runs"). Pure pandas: nothing here talks to the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from ablate import tracking
from ablate.stages import names as stages

RUN_COLUMNS = [
    "run_id", "run_name", "status", "start_time", "stage", "sweeps", "arm", "run_key", "train_key",
    "init", "image_init", "label", "task", "trainable", "positional_params", "lr", "batch_tokens", "scale",
    "seed",
]  # fmt: skip
# Run metadata column (of the run table and of analysis.frames' curves) <- tracking.fetch_runs column.
SOURCES = {
    "stage": f"tags.{tracking.TAG_STAGE}",
    "sweep": f"tags.{tracking.TAG_SWEEP}",  # the sweep that created the run (the curves'; the table has `sweeps`)
    "arm": f"tags.{tracking.TAG_ARM}",
    "run_key": f"tags.{tracking.TAG_RUN_KEY}",
    "train_key": f"tags.{tracking.TAG_TRAIN_KEY}",
    "init": "params.model.init",
    "image_init": "params.model.image_init",
    "task": "params.data.task",
    "trainable": "params.train.trainable",
    "positional_params": f"tags.{tracking.TAG_POSITIONAL}",
    "lr": "params.optim.lr",
    "batch_tokens": "params.train.batch_tokens",
    "scale": "params.scale",
    "seed": "params.train.seed",
}
_SWEEP_COLUMN = f"tags.{tracking.TAG_SWEEPS_PREFIX}"


def source_column(runs: pd.DataFrame, column: str) -> pd.Series:
    """The fetch_runs column that SOURCES maps `column` to; all None where no run logged it."""
    source = SOURCES[column]
    return runs[source] if source in runs.columns else pd.Series(None, index=runs.index, dtype=object)


SEED_SUFFIX = re.compile(r"\s*\bseed=\d+$")  # ablate.sweep: a sweep's `seeds: N` labels each arm ' seed=k'


def arm_of(label: object) -> str:
    """An arm's label without its ' seed=k' suffix: the runs of one arm but for the seed share it."""
    return SEED_SUFFIX.sub("", label) if isinstance(label, str) else ""


def init_label(init: object, image_init: object = None) -> str:
    """How a run's initialisation is named in legends and tables: model.init, '+ contrastive' when the
    image-code embeddings come from the align stage (model.image_init=contrastive)."""
    name = str(init) if isinstance(init, str) and init else "unknown"
    return f"{name} + contrastive" if image_init == "contrastive" else name


def run_sweeps(runs: pd.DataFrame) -> pd.Series:
    """Per fetch_runs row, the sweeps that use it (tags ablate.sweeps.<name> = true), ';'-joined, sorted."""
    columns = sorted(c for c in runs.columns if c.startswith(_SWEEP_COLUMN))
    names = np.array([c[len(_SWEEP_COLUMN) :] for c in columns], dtype=object)
    if not columns:
        return pd.Series("", index=runs.index, dtype=object)
    member = (runs[columns].to_numpy(dtype=object) == "true").tolist()
    return pd.Series([";".join(names[np.array(m, dtype=bool)]) for m in member], index=runs.index)


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """tracking.fetch_runs rows -> RUN_COLUMNS. lr and batch_tokens are numbers (NaN if not logged);
    trainable falls back to the tracking.TAG_TRAINABLE tag; label is init_label(init, image_init)."""
    table = pd.DataFrame(index=runs.index)
    for column in ("run_id", "run_name", "status", "start_time"):
        table[column] = runs[column] if column in runs.columns else None
    for column in RUN_COLUMNS:
        if column in SOURCES:
            table[column] = source_column(runs, column)
    tag = f"tags.{tracking.TAG_TRAINABLE}"
    if tag in runs.columns:
        table["trainable"] = table["trainable"].fillna(runs[tag])
    for column in ("lr", "batch_tokens", "seed"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["sweeps"] = run_sweeps(runs)
    table["label"] = [init_label(i, m) for i, m in zip(table["init"], table["image_init"], strict=True)]
    numeric = ("lr", "batch_tokens", "seed", "start_time")
    table = table.astype({c: object for c in RUN_COLUMNS if c not in numeric})
    return table[RUN_COLUMNS].drop_duplicates("run_id").reset_index(drop=True)


def in_sweeps(table: pd.DataFrame, sweeps: Iterable[str]) -> pd.Series:
    """Mask of the run-table rows used by any of the sweeps."""
    wanted = set(sweeps)
    return table["sweeps"].map(lambda s: not wanted.isdisjoint(s.split(";")) if s else False).astype(bool)


def is_t2i(table: pd.DataFrame) -> pd.Series:
    """Text-to-image runs; a run with no data.task param counts as one (the default task)."""
    return table["task"].isna() | (table["task"] == "t2i")


def evaluations(table: pd.DataFrame) -> pd.Series:
    """train run id -> the run id of the evaluate run whose ablate.train_key is its ablate.run_key (the
    latest started, if several); train runs with no evaluate run are left out."""
    train = table[(table["stage"] == stages.TRAIN) & table["run_key"].notna()]
    evals = table[(table["stage"] == stages.EVALUATE) & table["train_key"].notna()]
    evals = evals.sort_values("start_time", kind="stable", na_position="first").drop_duplicates(
        "train_key", keep="last"
    )
    by_key = pd.Series(evals["run_id"].to_numpy(), index=evals["train_key"].to_numpy())
    linked = train["run_key"].map(by_key)
    return pd.Series(linked.to_numpy(), index=train["run_id"].to_numpy()).dropna()


def pick_per_label(table: pd.DataFrame, tokens: pd.Series) -> pd.DataFrame:
    """The rows ordered best first within each label (finished first, then most training tokens, then
    latest started), labels in legend order: one run per panel or table column when several qualify."""
    ranked = table.assign(
        _finished=(table["status"] == "FINISHED").astype(int),
        _tokens=table["run_id"].map(tokens).fillna(-1.0).astype(float),
        _start=pd.to_numeric(table["start_time"], errors="coerce").fillna(0),
        _label=table["label"].map(label_rank),
    )
    ranked = ranked.sort_values(
        ["_label", "_finished", "_tokens", "_start"], ascending=[True, False, False, False], kind="stable"
    )
    return ranked.drop(columns=["_finished", "_tokens", "_start", "_label"])


def label_rank(label: str) -> tuple[int, str]:
    """Legend order: pretrained first, random second, then the rest (contrastive variants) by name."""
    base = {"pretrained": 0, "random": 1}
    return (base.get(label, 2), label)
