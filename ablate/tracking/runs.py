"""Run management: experiments, stage runs, statuses, each on a Store (or a URI, opening its Store)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ablate.errors import AblateError
from ablate.tracking.store import RUN_STATUSES, TERMINAL_STATUSES, Store, redact_uri
from ablate.tracking.tags import (
    EXPERIMENT_KIND_TRAINING,
    TAG_ARM,
    TAG_EXPERIMENT_KIND,
    TAG_RUN_KEY,
    TAG_STAGE,
    TAG_SWEEP,
)

log = logging.getLogger(__name__)


def ensure_experiment(store: Store | str, name: str) -> str:
    """The id of the experiment `name`, created (or restored from deletion) if needed."""
    from mlflow.exceptions import MlflowException

    store = Store.open(store)
    client = store.writer
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get(TAG_EXPERIMENT_KIND) is None:  # made by an older ablate: open it as ours do
            store.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
        return exp.experiment_id
    path = store.sqlite_path
    # Next to the SQLite file, not in ./mlruns of whatever directory the launcher ran from.
    location = (path.parent / "artifacts" / name).resolve().as_uri() if path else None
    kind = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}
    try:
        return client.create_experiment(name, artifact_location=location, tags=kind)
    except MlflowException as exc:  # another process created it since we looked
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise AblateError(f"cannot create experiment {name!r} in {redact_uri(store.uri)}: {exc}") from exc
        return exp.experiment_id


def get_or_create_stage_run(
    store: Store | str,
    experiment_id: str,
    run_key: str,
    stage: str,
    run_name: str,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
    create: bool = True,
    fresh: bool = False,
) -> str | None:
    """The run of one stage job, found by (ablate.run_key, ablate.stage) in any experiment, else created.

    The same stage is the same run whichever sweep launches it: a relaunch, or another sweep sharing the
    arm, reuses it (tags added or refreshed, e.g. the sweep's ablate.sweeps.<name>; missing params added).
    A new run lives in `experiment_id` and is RUNNING: its job
    creates it when it starts. With create=False a missing run is not created and None is returned.

    fresh=True says the stage starts from nothing (its output directory was deleted, or never existed
    here). A FINISHED run found for it then describes output that is gone: it is deleted (MLflow's trash,
    restorable) and a new run is created, because the recomputed metrics would otherwise be dropped as
    steps already logged, leaving the old values in the store.
    """
    store = Store.open(store)
    client = store.writer
    key_tags = {TAG_RUN_KEY: run_key, TAG_STAGE: stage}
    all_tags = {**{k: str(v) for k, v in tags.items()}, **key_tags}
    found = store.search_runs(key_tags)
    found.sort(key=lambda r: r.info.start_time or 0)
    if found and fresh and found[0].info.status == "FINISHED":
        for old in found:
            log.warning(
                "%s/%s: output gone, recomputing; MLflow run %s deleted", stage, run_key, old.info.run_id
            )
            client.delete_run(old.info.run_id)
        found = []
    if found:
        run = found[0]
        if len(found) > 1:
            log.warning("%d runs for %s/%s; using the oldest", len(found), run_key, stage)
        if run.info.experiment_id != experiment_id:
            # Shared with the sweep that created it: keep its experiment, first sweep and label.
            all_tags = {k: v for k, v in all_tags.items() if k not in (TAG_SWEEP, TAG_ARM)}
        changed = {k: v for k, v in all_tags.items() if run.data.tags.get(k) != v}
        store.set_tags(run.info.run_id, changed)
        store.log_params(run.info.run_id, params, run.data.params)
        return run.info.run_id
    if not create:
        return None
    run_id = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
    store.log_params(run_id, params, {})
    return run_id


def set_run_status(store: Store | str, run_id: str, status: str) -> None:
    """Set a run's status; a terminal status also sets its end time."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    client = Store.open(store).client
    if status in TERMINAL_STATUSES:
        client.set_terminated(run_id, status=status)
    else:
        client.update_run(run_id, status=status)


def run_info(store: Store | str, run_id: str) -> dict[str, Any]:
    """A run's name, status, times (ms), ablate.* tags, last metric values and the step they were logged at."""
    store = Store.open(store)
    if store.missing:
        raise AblateError(f"no run {run_id}: {store.describe()}; launch a sweep first")
    run = store.client.get_run(run_id)
    latest = getattr(run.data, "_metric_objs", [])
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "deleted": run.info.lifecycle_stage == "deleted",
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "tags": {k: v for k, v in run.data.tags.items() if k.startswith("ablate.")},
        "metrics": dict(run.data.metrics),
        "steps": {m.key: int(m.step) for m in latest},
        "step": max((int(m.step) for m in latest), default=None),
    }
