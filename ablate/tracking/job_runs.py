"""The MLflow runs a stage job logs to, found or created by the job when it starts.

Not at launch: a launch of hundreds of jobs then costs no store round trip per job, and a run's start
time and duration are its job's, not the queue's. Each job logs to its stage's run (in the sweep's
stages experiment, shared by every sweep using the stage) and, for the stages that make an arm's results
(train, evaluate), to the run of every arm it serves (in the sweep's experiment, one row per arm).
The launcher writes a JobTracking into each job; the job's provenance.json keeps it, so `ablate resend`
rebuilds the same runs from the directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ablate.rundir import RunDir
from ablate.tracking.runs import ensure_experiment, get_or_create_stage_run
from ablate.tracking.store import Store, is_permanent
from ablate.tracking.tags import (
    ARMS_VIEW,
    KIND_ARM,
    TAG_ARM_KEY,
    TAG_KIND,
    TAG_RUN_COLOR,
    TAG_RUN_KEY,
    TAG_SHARED_VIEW_PREFIX,
    TAG_STAGE,
    TAG_STAGE_RUN_PREFIX,
    TAG_SWEEP,
    sweep_tag,
)
from ablate.tracking.tracker import MLflowTracker, Tracker

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """A run to find or create: its experiment (by name), display name, tags and params."""

    experiment: str
    name: str
    tags: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArmRunSpec(RunSpec):
    """An arm's run, `name` its short display name; `dirs` are the arm's result-stage directories (train,
    evaluate), whose metrics.jsonl rows it lacks are sent to it when a job opens it (the train stage may
    have run for another sweep)."""

    dirs: list[str] = field(default_factory=list)
    view: str = ""
    """The experiment's saved view of its arms (tracking.ui.arms_view), set when an arm run is made."""
    label: str = ""
    """The arm's label (also its TAG_ARM tag), which the manifest and `ablate status` know it by; "" in
    the JobTracking of a job launched before arm runs had short names (their name was the label)."""

    @property
    def arm_label(self) -> str:
        """The arm's label, for a spec of either kind."""
        return self.label or self.name


@dataclass
class JobTracking:
    """Where a job logs: the store, its stage run, the arm runs it feeds, and the tracker's timing."""

    uri: str
    stage: RunSpec
    arms: list[ArmRunSpec] = field(default_factory=list)
    flush_interval_s: float = 2.0
    close_timeout_s: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], uri: str | None = None) -> JobTracking:
        """From to_dict's output; `uri` replaces (or stands in for) the one it holds."""
        return cls(
            uri=uri or d["uri"],
            stage=RunSpec(**d["stage"]),
            arms=[ArmRunSpec(**a) for a in d.get("arms", [])],
            flush_interval_s=d.get("flush_interval_s", 2.0),
            close_timeout_s=d.get("close_timeout_s", 300.0),
        )


class FanOut:
    """A Tracker that logs metrics to a primary run and to secondary runs; params, tags and artifacts go
    to the primary only (an arm run has the arm's params, not each stage's)."""

    def __init__(self, primary: MLflowTracker, secondaries: list[MLflowTracker]) -> None:
        self.primary, self.secondaries = primary, secondaries
        self.run_id: str | None = primary.run_id

    def log_params(self, params: dict) -> None:
        self.primary.log_params(params)

    def set_tags(self, tags: dict) -> None:
        self.primary.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for t in (self.primary, *self.secondaries):
            t.log_metrics(metrics, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.primary.log_artifact(path, artifact_path)

    def flush(self, timeout: float | None = None) -> bool:
        return all([t.flush(timeout) for t in (self.primary, *self.secondaries)])

    def close(self, status: str = "FINISHED") -> None:
        for t in (self.primary, *self.secondaries):
            t.close(status)


def stage_run(store: Store | str, spec: RunSpec, fresh: bool = False, create: bool = True) -> str | None:
    """The stage run of spec (found by its run key and stage in any experiment, else created in spec's
    experiment); see runs.get_or_create_stage_run for `fresh` and `create`."""
    store = Store.open(store)
    experiment_id = ensure_experiment(store, spec.experiment)
    return get_or_create_stage_run(
        store,
        experiment_id,
        run_key=spec.tags[TAG_RUN_KEY],
        stage=spec.tags[TAG_STAGE],
        run_name=spec.name,
        tags=spec.tags,
        params=spec.params,
        create=create,
        fresh=fresh,
    )


def _arm_identity(spec: RunSpec) -> dict[str, str]:
    return {TAG_SWEEP: spec.tags[TAG_SWEEP], TAG_KIND: KIND_ARM, TAG_ARM_KEY: spec.tags[TAG_ARM_KEY]}


def arm_run(store: Store | str, spec: ArmRunSpec, stage: str, stage_run_id: str | None) -> str:
    """The arm's run in its sweep's experiment (found by sweep, kind and the arm's config hash), created
    if missing, its tags refreshed and missing params added, for `stage`'s run `stage_run_id` to log to.

    An arm run that shows another run of this stage (the stage was recomputed from nothing, so its run is
    new) holds that run's values, which would keep the new ones out (a step is logged once): it is moved
    to MLflow's trash and made again. One process at a time for an SQLite store (a flock beside it), so
    two jobs of one arm starting together make one run.
    """
    store = Store.open(store)
    with store.sqlite_lock(".arms.lock", "creating arm runs"):
        client = store.writer
        experiment_id = ensure_experiment(store, spec.experiment)
        found = sorted(
            store.search_runs(_arm_identity(spec), [experiment_id]), key=lambda r: r.info.start_time or 0
        )
        tags = dict(spec.tags)
        if stage_run_id is not None:
            tags[TAG_STAGE_RUN_PREFIX + stage] = stage_run_id
        shown = found[0].data.tags.get(TAG_STAGE_RUN_PREFIX + stage) if found else None
        if found and stage_run_id is not None and shown not in (None, stage_run_id):
            log.warning("arm %s: its %s stage was recomputed; its MLflow run is made again", spec.name, stage)
            for old in found:
                client.delete_run(old.info.run_id)
            found = []
        if found:
            run = found[0]
            if TAG_RUN_COLOR in run.data.tags:  # a colour picked in the UI stays
                tags.pop(TAG_RUN_COLOR, None)
            store.set_tags(run.info.run_id, {k: v for k, v in tags.items() if run.data.tags.get(k) != v})
            store.log_params(run.info.run_id, spec.params, run.data.params)
            if run.info.run_name != spec.name:  # made by an ablate that named arm runs by their label
                client.update_run(run.info.run_id, name=spec.name)
            return str(run.info.run_id)
        run_id = str(client.create_run(experiment_id, tags=tags, run_name=spec.name).info.run_id)
        store.log_params(run_id, spec.params, {})
        if spec.view:
            store.set_experiment_tag(experiment_id, TAG_SHARED_VIEW_PREFIX + ARMS_VIEW, spec.view)
        return run_id


def backfill(store: Store | str, run_id: str, run_dir: str | Path) -> int:
    """Send the rows of run_dir's metrics.jsonl holding a (key, step) the run lacks; returns how many."""
    tracker = MLflowTracker(store, run_id, run_dir=run_dir, mark_running=False)
    tracker.close(None)
    return tracker.backfilled_rows


# A job that cannot open its runs at once (a store restarting, another job's write in the way) tries again
# after these pauses before running untracked; the MLflow client retries each HTTP call on its own as well.
OPEN_RETRY_DELAYS_S = (1.0, 3.0, 9.0)


def _open_runs(store: Store, spec: JobTracking, out: str, fresh: bool) -> tuple[str, dict[str, str]]:
    """(stage run id, {arm label: arm run id}): found or created, each arm run filled from the arm's other
    finished stages. Safe to repeat: a second call finds what the first made."""
    stage = spec.stage.tags[TAG_STAGE]
    stage_id = stage_run(store, spec.stage, fresh=fresh)
    if stage_id is None:  # create=True always gives a run
        raise RuntimeError(f"no MLflow run for {out}")
    arm_ids: dict[str, str] = {}
    for arm in spec.arms:
        arm_id = arm_run(store, arm, stage, stage_id)
        for other in arm.dirs:
            if Path(other) != Path(out) and RunDir(other).is_complete():
                backfill(store, arm_id, other)
        arm_ids[arm.arm_label] = arm_id
    return stage_id, arm_ids


def open_job_tracker(
    spec: JobTracking, run_dir: str | Path, fresh: bool
) -> tuple[Tracker, str, dict[str, str]]:
    """(tracker, stage run id, {arm label: arm run id}) of a job starting in run_dir (`fresh`: from
    nothing): the runs found or created (tried again after OPEN_RETRY_DELAYS_S unless the store refuses
    for good), one tracker for all."""
    out, store = str(Path(run_dir)), Store.open(spec.uri)
    for delay in (*OPEN_RETRY_DELAYS_S, None):
        try:
            stage_id, arm_ids = _open_runs(store, spec, out, fresh)
            break
        except Exception as exc:
            if delay is None or is_permanent(exc):
                raise
            log.warning("%s: cannot open its MLflow runs yet (%s); trying again in %.0f s", out, exc, delay)
            time.sleep(delay)

    def tracker(run_id: str) -> MLflowTracker:
        return MLflowTracker(
            store,
            run_id,
            flush_interval_s=spec.flush_interval_s,
            close_timeout_s=spec.close_timeout_s,
            run_dir=out,  # rows of this stage's metrics.jsonl the run lacks (a crash) are sent first
        )

    primary = tracker(stage_id)
    secondaries = [tracker(arm_id) for arm_id in arm_ids.values()]
    return FanOut(primary, secondaries), stage_id, arm_ids


def sweep_stage_keys(store: Store | str, sweep: str) -> set[tuple[str, str]]:
    """(stage, run key) of every stage run already tagged as used by `sweep`, in any experiment."""
    runs = Store.open(store).search_runs({sweep_tag(sweep): "true"})
    return {(r.data.tags.get(TAG_STAGE, ""), r.data.tags.get(TAG_RUN_KEY, "")) for r in runs}


def sweep_arm_runs(store: Store | str, experiment: str, sweep: str) -> dict[str, tuple[str, str]]:
    """Arm config hash -> (run id, status) of the sweep's arm runs in `experiment` (none if it is missing)."""
    store = Store.open(store)
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        return {}
    runs = store.search_runs({TAG_SWEEP: sweep, TAG_KIND: KIND_ARM}, [exp.experiment_id])
    return {r.data.tags.get(TAG_ARM_KEY, ""): (r.info.run_id, r.info.status) for r in runs}
