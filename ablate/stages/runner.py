"""The job entry point: run one stage into its directory, record state and provenance, mark it complete."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ablate.config.compose import config_from_dict
from ablate.errors import AblateError, StopRequested
from ablate.filelock import FileLock
from ablate.rundir import RunDir
from ablate.stages import registry
from ablate.stages.context import StageContext
from ablate.stages.job import Job
from ablate.train import distributed as dist
from ablate.train.distributed import DistEnv, init_distributed


def _null_tracker():
    from ablate.tracking import NullTracker

    return NullTracker()


def _open_tracking(job: Job, fresh: bool) -> tuple[Any, dict[str, Any]]:
    """The job's tracker and the run ids for its provenance. A store that cannot be reached (or refuses
    the runs) does not stop the stage: it runs with metrics.jsonl only, and `ablate resend` sends it later."""
    from ablate.tracking import JobTracking, NullTracker, open_job_tracker, redact_uri

    if job.tracking is None:
        return NullTracker(), {}
    spec = JobTracking.from_dict(job.tracking)
    try:
        tracker, stage_id, arm_ids = open_job_tracker(spec, job.out_dir, fresh=fresh)
    except Exception as exc:
        _say(
            f"{job.name}: cannot open its MLflow runs in {redact_uri(spec.uri)} ({exc}); the stage runs and "
            f"logs to {Path(job.out_dir) / 'metrics.jsonl'} only: `ablate resend {job.out_dir}` sends it later"
        )
        return NullTracker(), {}
    return tracker, {"mlflow_run_id": stage_id, "mlflow_arm_runs": arm_ids}


class _StopOnSignal:
    """First SIGINT/SIGTERM: ask the stage to checkpoint and stop; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.requested


def run_job(job: Job, extra_stop: Callable[[], bool] | None = None) -> str:
    """Run `job` unless its output is complete; returns 'done' or 'skipped'. Exceptions propagate (failed).

    ``extra_stop`` (e.g. the SLURM wrapper's preemption flag) is OR'ed into the SIGINT/SIGTERM stop request.
    With WORLD_SIZE > 1 (torchrun's variables, which the SLURM wrapper exports), the data-parallel stages
    (the registry's `data_parallel`) run on every rank inside a torch.distributed process group; rank 0 alone writes the run's
    description, status, tracker and completion marker. Other stages run on rank 0, and any other rank
    returns 'skipped' at once (the launcher normally gives them one task).
    """
    if job.unit is not None or not registry.get(job.stage).data_parallel:
        if not DistEnv.from_env().is_main:
            return "skipped"
        return _run(job, extra_stop)
    with init_distributed():
        return _run(job, extra_stop)


def _run(job: Job, extra_stop: Callable[[], bool] | None) -> str:
    """run_job's body on this rank (inside the process group, if any), holding the stage directory's lock.

    Two sweeps sharing a stage (or two launches of one sweep) may start its job twice: the second job
    waits for the first's lock on <dir>/.lock (saying whose in its log), then finds the stage complete and
    returns 'skipped', or (the first failed or was killed) resumes it. The kernel drops the lock of a
    killed process, so none is ever stale.
    """
    out = Path(job.out_dir)
    run_dir = RunDir(out)
    main = dist.is_main()
    # Rank 0's view decides for all, so that no rank trains alone while the others have returned.
    if dist.main_says(run_dir.is_complete()):
        return "skipped"
    lock = FileLock(run_dir.lock, what=f"job {job.name}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire(wait=True, on_wait=lambda who: _say(f"{job.name}: {out} is being run by {who}; waiting"))
    try:
        if dist.main_says(run_dir.is_complete()):  # the job we waited for finished it
            return "skipped"
        return _run_locked(job, extra_stop, run_dir)
    finally:
        lock.release()


def _record_end(run_dir: RunDir, state: str, error: str) -> None:
    """status.json after a stop or failure; a full or read-only disk (often the failure itself) must not
    hide the stage's own error nor keep the tracker from closing."""
    try:
        run_dir.set_status(state, error=error)
    except OSError as exc:
        _say(f"cannot record state {state!r} in {run_dir.status}: {exc}")


def _say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)  # the job's log


def _run_locked(job: Job, extra_stop: Callable[[], bool] | None, run_dir: RunDir) -> str:
    out = run_dir.path
    main = dist.is_main()
    import torch

    torch.set_num_threads(max(1, job.threads))
    tracker: Any = _null_tracker()
    runs: dict[str, Any] = {}
    if main:
        # Before the description: a directory without provenance starts from nothing (its old run goes).
        tracker, runs = _open_tracking(job, fresh=not run_dir.provenance.exists())
        out.mkdir(parents=True, exist_ok=True)
        run_dir.write_description(
            yaml.safe_dump(job.config, sort_keys=False),
            {
                "stage": job.stage,
                "key": job.key,
                "inputs": job.inputs,
                "arms": job.labels,
                **runs,
                "sweep": job.sweep,
                # Without the store's URI (it may hold a password): `ablate resend DIR --tracking-uri` names it.
                **(
                    {"tracking": {k: v for k, v in job.tracking.items() if k != "uri"}}
                    if job.tracking
                    else {}
                ),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                **({"unit": job.unit} if job.unit else {}),
            },
        )
        run_dir.set_status("running")
    dist.barrier()  # the output directory exists before any rank's stage looks into it
    signal_stop = _StopOnSignal()

    def should_stop() -> bool:
        return signal_stop() or (extra_stop is not None and bool(extra_stop()))

    ctx = StageContext(
        stage=job.stage,
        cfg=config_from_dict(job.config),
        out_dir=out,
        inputs={k: Path(v) for k, v in job.inputs.items()},
        tracker=tracker,
        labels=job.labels,
        should_stop=should_stop,
        unit=job.unit,
    )
    stage = registry.get(job.stage)
    run = stage.run if job.unit is None else stage.run_unit
    if run is None:
        raise AblateError(f"stage {job.stage!r} has no units, but job {job.name} is one")
    try:
        with signal_stop:
            run(ctx)
    except StopRequested as e:
        if main:
            _record_end(run_dir, "stopped", error=str(e))
        tracker.close("KILLED")
        raise
    except BaseException as e:
        if main:
            _record_end(run_dir, "failed", error=traceback.format_exc()[-4000:])
        tracker.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    dist.barrier()  # every rank finished before the output is marked complete
    if main:
        run_dir.mark_complete(
            {"stage": job.stage, "key": job.key, **({"unit": job.unit} if job.unit else {})}
        )
        run_dir.set_status("done")
    tracker.close("FINISHED")
    return "done"
