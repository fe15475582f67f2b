"""The record each stage module declares (`STAGE = Stage(...)`): everything the rest of ablate knows of it.

The plan (keys and inputs), the launcher (MLflow params), the runner (dispatch, data parallelism) and the
SLURM launcher and job wrapper (tasks per job, requeue on a signal) read a stage only through this record,
collected in ablate.stages.registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ablate.schema import RunConfig
from ablate.stages.context import StageContext


def always(cfg: RunConfig) -> bool:
    """For stages every arm needs."""
    return True


@dataclass(frozen=True)
class Stage:
    """One stage: what it reads (config slice and input stages), how it runs, and how it is tracked."""

    name: str
    """Its directory under results/cache/ and its `ablate.stage` tag (ablate.stages.names)."""
    version: int
    """Part of the key: bump it when the stage's code changes what it writes."""
    config: Callable[[RunConfig], dict[str, Any]]
    """The slice of the run config its key hashes: every field its code reads that no input's key
    covers (tests/test_stage_reads.py checks this on every stage)."""
    run: Callable[[StageContext], None]
    """Writes the stage's outputs under ctx.out_dir."""
    inputs: tuple[str, ...] = ()
    """Stages whose outputs it reads; those an arm does not plan (see `applies`) are left out."""
    applies: Callable[[RunConfig], bool] = always
    """Whether an arm needs this stage at all (e.g. align only for model.image_init=contrastive)."""
    params: tuple[str, ...] | None = None
    """Config sections (or dotted keys) logged as its MLflow params; None: the whole resolved config."""
    data_parallel: bool = False
    """Runs on every task of a multi-task job (torch.distributed); otherwise on rank 0 of one task."""
    checkpoints: bool = False
    """Polls ctx.should_stop, checkpoints at a step boundary and resumes: a SLURM signal lets it finish
    its step before the requeue; other stages are requeued at once and start over."""
    units: Callable[[RunConfig], tuple[str, ...]] | None = None
    """Units of work (e.g. one per input shard), or none: each unit is a job of its own (a task of the
    stage's array on SLURM) that `run_unit` does into units/<unit>/ with its own completion marker, so a
    failed or preempted unit resumes alone; `run` then assembles the units' outputs. An empty tuple: the
    stage is one job, as a stage without units."""
    run_unit: Callable[[StageContext], None] | None = None
    """Does one unit (ctx.unit) into ctx.out_dir (the unit's directory)."""

    def logs_param(self, key: str) -> bool:
        """Whether the flattened config key `key` (e.g. 'model.init') is one of its MLflow params."""
        if self.params is None:
            return True
        return any(key == p or key.startswith(p + ".") for p in self.params)
