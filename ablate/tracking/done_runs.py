"""The runs of stages already done when a sweep is launched (another sweep's, or this one's before a
relaunch): tagged as used by the sweep, and the runs of its arms whose result stages are all done filled
from their directories. The launcher's one call into the store."""

from __future__ import annotations

from collections.abc import Callable

from ablate.tracking.job_runs import (
    ArmRunSpec,
    RunSpec,
    arm_run,
    backfill,
    stage_run,
    sweep_arm_runs,
    sweep_stage_keys,
)
from ablate.tracking.runs import set_run_status
from ablate.tracking.store import Store
from ablate.tracking.tags import TAG_ARM_KEY, TAG_RUN_KEY, TAG_STAGE


def sync_done_runs(
    store: Store | str,
    sweep: str,
    stages: list[RunSpec],
    arms: list[tuple[ArmRunSpec, RunSpec | None]],
    echo: Callable[[str], None],
) -> None:
    """Tag the runs of the done `stages` as used by `sweep` (those not tagged yet; none is created), and
    give each of `arms` (an arm whose result stages are all done, with the run of its train stage if it
    has one) its filled, FINISHED arm run unless it has one. Only where the store exists: a new store has
    no such runs (and creating one costs seconds)."""
    store = Store.open(store)
    if store.missing:
        return
    tagged = sweep_stage_keys(store, sweep)
    for spec in stages:
        if (spec.tags[TAG_STAGE], spec.tags[TAG_RUN_KEY]) not in tagged:
            stage_run(store, spec, create=False)
    existing = sweep_arm_runs(store, arms[0][0].experiment, sweep) if arms else {}
    for spec, train in arms:
        if existing.get(spec.tags[TAG_ARM_KEY], ("", ""))[1] == "FINISHED":
            continue
        stage = train.tags[TAG_STAGE] if train else ""  # no stage run: arm_run reads no stage
        run_id = arm_run(store, spec, stage, stage_run(store, train, create=False) if train else None)
        rows = sum(backfill(store, run_id, d) for d in spec.dirs)
        set_run_status(store, run_id, "FINISHED")
        echo(
            f"arm run {spec.name!r} ({spec.arm_label}): filled from its finished stages ({rows} metric rows)"
        )
