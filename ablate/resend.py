"""`ablate resend DIR`: send a run directory's metrics.jsonl and artifacts to a tracking store, without the
original server.

Every stage directory records its metrics as they were logged, the files it logged as artifacts, its
resolved config and its provenance, so a run whose tracking store was down, lost or elsewhere can be
(re)built from disk. Each (key, step) the target run already has is skipped (the tracker compares every
one, not only the highest step), so resending fills any gap and resending twice adds nothing; artifacts
are logged again under the same names (an artifact store overwrites them).
"""

from __future__ import annotations

from pathlib import Path

from ablate.config.compose import flatten
from ablate.errors import AblateError
from ablate.rundir import RunDir
from ablate.schema import TrackingConfig


def resend(run_dir: Path, uri: str) -> tuple[str, int]:
    """Send run_dir's params, tags, metrics and artifacts to `uri`; returns (run id, metric rows sent:
    those holding a (key, step) the run lacked)."""
    from ablate import tracking

    store = tracking.Store.open(uri)
    rd = RunDir(run_dir)
    prov = rd.read_provenance()
    if prov is None:
        raise AblateError(
            f"{rd.path} is not a stage directory (no {rd.provenance.name}); give results/cache/<stage>/<key>/"
        )
    config = rd.read_config()
    sweep = prov.get("sweep") or "resent"
    run_id = prov.get("mlflow_run_id")
    try:
        info = tracking.run_info(store, run_id) if run_id else {}
        exists = bool(run_id) and info.get("run_id") == run_id and not info.get("deleted")
    except Exception:  # not in this store (another server, or a lost database)
        exists = False
    saved = prov.get("tracking")  # what the job was launched with: the same runs, found or made again
    job_tracking = tracking.JobTracking.from_dict(saved, uri=uri) if saved else None
    if not exists:
        run_id = tracking.stage_run(
            store, job_tracking.stage if job_tracking else _older_spec(prov, config, sweep)
        )
    if run_id is None:  # stage_run creates the run unless told not to
        raise AblateError(f"no MLflow run for {rd.path} in {store.describe()}")
    # Given the directory, the tracker sends the metrics.jsonl rows the run lacks before anything else.
    tracker = tracking.MLflowTracker(store, run_id, run_dir=rd.path, mark_running=False)
    for path, artifact_path in rd.recorded_artifacts():
        if path.exists():
            tracker.log_artifact(path, artifact_path)
    tracker.close("FINISHED" if rd.is_complete() else "KILLED")
    for arm in job_tracking.arms if job_tracking else []:  # the arms' runs show this stage's metrics too
        tracking.backfill(store, tracking.arm_run(store, arm, prov["stage"], run_id), rd.path)
    return run_id, tracker.backfilled_rows


def _older_spec(prov: dict, config: dict, sweep: str):
    """The stage run of a directory from before jobs recorded their tracking: tags from provenance."""
    from ablate import tracking

    # The experiment the launch used: the run's own tracking.experiment_prefix (config.yaml).
    prefix = (config.get("tracking") or {}).get("experiment_prefix", TrackingConfig.experiment_prefix)
    labels = prov.get("arms", [])
    tags = tracking.stage_run_tags(
        sweep=sweep,
        stage=prov["stage"],
        key=prov["key"],
        labels=labels,
        sweeps=[sweep],
        inputs=prov.get("inputs"),
        git_commit=prov.get("git_commit", "unknown"),
    )
    return tracking.RunSpec(
        experiment=tracking.stages_experiment(prefix, sweep),
        name=tracking.stage_run_name(prov["stage"], labels),
        tags={k: str(v) for k, v in tags.items()},
        params=flatten(config),
    )
