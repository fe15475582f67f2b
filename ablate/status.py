"""`ablate status NAME`: each arm's current stage, state, tokens done/total, last loss, job and MLflow run.

Combines the sweep manifest, the run directories, one batched `sacct` call for all of the sweep's SLURM
jobs, and the runs' progress from MLflow (falling back to each run directory's progress.json when the
store is unreachable). A failed job shows the last lines of its error log.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from ablate.errors import AblateError
from ablate.launch.manifest import Manifest
from ablate.metrics import FINAL_LOSS, LOSS, TOKENS
from ablate.rundir import RunDir
from ablate.stages.names import TRAIN
from ablate.stages.registry import STAGE_ORDER
from ablate.train.final import TAIL_FRACTION, final_values

# SLURM state -> what status shows (anything else is shown lower-cased as SLURM says it).
_SLURM_STATE = {
    "PENDING": "queued",
    "REQUEUED": "requeued",
    "REQUEUE_HOLD": "requeued",
    "PREEMPTED": "requeued",
    "RUNNING": "running",
    "COMPLETING": "running",
    "CONFIGURING": "running",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
}
PROBLEM_STATES = ("failed", "lost", "stopped", "cancelled")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def job_state(job: dict[str, Any], slurm: Any | None = None) -> str:
    """done | queued | running | requeued | failed | cancelled | stopped | lost | pending.

    `slurm` is the job's sacct row (ablate.launch.slurm.JobState) for SLURM sweeps; a job SLURM says
    COMPLETED without a complete output, or one whose local process is gone, is `lost`.
    """
    out = RunDir(job["dir"])
    if out.is_complete():
        return "done"
    if slurm is not None:
        if slurm.state == "COMPLETED":
            return "lost"
        return _SLURM_STATE.get(slurm.state, slurm.state.lower())
    st = out.read_status()
    if st.get("state") in ("failed", "stopped"):
        return st["state"]
    if st.get("state") == "running":
        if st.get("host") == socket.gethostname() and not _alive(int(st.get("pid", 0))):
            return "lost"
        return "running"
    return job.get("state") or "pending"


def _slurm_states(manifest: Manifest) -> dict[str, Any]:
    if manifest.data.get("cluster") != "slurm":
        return {}
    from ablate.launch import slurm

    ids = [
        j["job_id"]
        for j in manifest.data["jobs"].values()
        if j.get("job_id") and not RunDir(j["dir"]).is_complete()
    ]
    return slurm.sacct(ids)


def _mlflow_progress(manifest: Manifest, run_ids: list[str]) -> tuple[dict[str, dict[str, Any]], str]:
    """Latest metrics per run from the store, and a note if it could not be read."""
    from ablate.tracking import latest_metrics

    try:
        return latest_metrics(manifest.data["tracking_uri"], run_ids), ""
    except Exception as e:  # an unreachable server must not hide the rest of the status
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {}, f"(tracking store unreachable: {first[:200]}; progress read from the run directories)"


def _run_id(job: dict[str, Any], arm: str | None = None) -> str:
    """The job's MLflow run (with `arm`: that arm's run, which the job logs to as well), as the job
    recorded it in its stage directory when it started ('' before)."""
    prov = RunDir(job["dir"]).read_provenance() or {}
    if arm is not None:
        return str((prov.get("mlflow_arm_runs") or {}).get(arm) or "")
    return str(prov.get("mlflow_run_id") or "")


# Which stage an arm's row shows when several are not done: a problem first (it needs the user), then one
# at work, then one waiting in the queue, then the first that has not started; ties go to the earlier stage.
_SHOWN_FIRST = (PROBLEM_STATES, ("running", "requeued"), ("queued",))


def current_stage(states: dict[str, str]) -> str:
    """The stage an arm's row shows, from its stages' states in run order: the last stage once every stage
    is done (an arm whose evaluate finished is at evaluate, not train), else the one that says most."""
    left = [stage for stage, state in states.items() if state != "done"]
    if not left:
        return list(states)[-1]
    for group in _SHOWN_FIRST:
        for stage in left:
            if states[stage] in group:
                return stage
    return left[0]


def arm_rows(manifest: Manifest, slurm_states: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per arm: its current stage (current_stage), that stage's state and job, and its train job."""
    slurm_states = _slurm_states(manifest) if slurm_states is None else slurm_states
    jobs = manifest.data["jobs"]
    rows = []
    for arm in manifest.data["arms"]:
        stages = arm["stages"]
        # The manifest's JSON keeps keys sorted: the stages in the order they run.
        states = {
            stage: job_state(jobs[name], slurm_states.get(jobs[name].get("job_id") or ""))
            for stage, name in sorted(stages.items(), key=lambda kv: STAGE_ORDER.index(kv[0]))
        }
        current = current_stage(states)
        job = jobs[stages[current]]
        train = jobs[stages[TRAIN]]
        rows.append(
            {
                "arm": arm["label"],
                "stage": current,
                "state": states[current],
                "train_done": states.get(TRAIN) == "done",
                "train_dir": train["dir"],
                "train_run_id": _run_id(train),
                "run_id": _run_id(job),
                "arm_run_id": _run_id(train, arm["label"]) or _run_id(train),
                "job_id": job.get("job_id") or "",
                "slurm": slurm_states.get(job.get("job_id") or ""),
                "dir": job["dir"],
            }
        )
    return rows


def _progress(row: dict[str, Any], mlflow: dict[str, dict[str, Any]]) -> tuple[Any, Any, Any]:
    """(tokens, total tokens, last loss) of the row's current stage, or of its train once that is done:
    MLflow first, then progress.json."""
    done = row.get("train_done", row["stage"] == TRAIN and row["state"] == "done")
    run_dir, run_id = row["dir"], row["run_id"]
    if done:
        run_dir, run_id = row.get("train_dir", run_dir), row.get("train_run_id", run_id)
    prog = RunDir(run_dir).read_progress()
    run = mlflow.get(run_id, {})
    metrics = run.get("metrics", {})
    tokens = metrics.get(TOKENS, prog.get("tokens"))
    total = run.get("total_tokens") or prog.get("total_tokens")
    loss = metrics.get(LOSS, prog.get("loss"))
    if done:  # the final loss, as summary.csv and the arm run
        loss = metrics.get(
            FINAL_LOSS, final_values(RunDir(run_dir).metrics_log().rows()).get(FINAL_LOSS, loss)
        )
    return tokens, total, loss


def _percent(row: dict[str, Any], tokens: Any, total: Any) -> str:
    """' 45%' for a running stage that says how far it is (tokens, else steps), else ''."""
    if row["state"] != "running":
        return ""
    if row["stage"] != TRAIN or not tokens or not total:
        # Past train the tokens shown are train's; the stage's own progress.json says how far it is.
        prog = RunDir(row["dir"]).read_progress()
        tokens, total = prog.get("tokens"), prog.get("total_tokens")
        if tokens is None or total is None:
            tokens, total = prog.get("step"), prog.get("total_steps")
    if not isinstance(tokens, int | float) or not isinstance(total, int | float) or total <= 0:
        return ""
    return f" {min(tokens / total, 1.0):.0%}"


def _tok(n: Any) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _error_tail(manifest: Manifest, row: dict[str, Any], lines: int = 6) -> str:
    """The end of the job's error log (SLURM), else the error the stage recorded in its directory."""
    if row["job_id"] and manifest.data.get("cluster") == "slurm":
        from ablate.launch import slurm

        text = slurm.tail(slurm.log_paths(Path(manifest.data["job_folder"]), row["job_id"])[1], 4 * lines)
        # srun's own "task 0: Exited with exit code 1" says less than the Python error above it.
        kept = [ln for ln in text.splitlines() if not ln.startswith(("srun: error", "srun: launch/"))]
        if kept:
            return "\n".join(kept[-lines:])
    err = RunDir(row["dir"]).read_status().get("error", "")
    return "\n".join(err.strip().splitlines()[-lines:])


def unit_lines(manifest: Manifest, rows: list[dict[str, Any]], slurm_states: dict[str, Any]) -> list[str]:
    """For each stage split into units that an arm is at: units done / running / failed, the running
    units' combined rate (images/s) and an ETA from their progress (each unit's progress.json)."""
    jobs = manifest.data["jobs"]
    seen, lines = set(), []
    for row in rows:
        arm = next(a for a in manifest.data["arms"] if a["label"] == row["arm"])
        name = arm["stages"][row["stage"]]
        units = {n: j for n, j in jobs.items() if n.startswith(name + "/")}
        if not units or name in seen:
            continue
        seen.add(name)
        states = {n: job_state(j, slurm_states.get(j.get("job_id") or "")) for n, j in units.items()}
        count = {s: sum(v == s for v in states.values()) for s in set(states.values())}
        progress = [RunDir(units[n]["dir"]).read_progress() for n, s in states.items() if s == "running"]
        rate = sum(p.get("images_per_s", 0.0) for p in progress)
        eta = max((p.get("eta_s", 0.0) for p in progress), default=0.0)
        left = sum(1 for s in states.values() if s != "done")
        parts = [f"{count.get('done', 0)}/{len(units)} units done"]
        parts += [f"{n} {s}" for s, n in sorted(count.items()) if s != "done"]
        if progress:
            per_unit = eta if left <= len(progress) else eta * left / len(progress)
            parts.append(f"{rate:,.0f} images/s, ETA {int(per_unit) // 60}m{int(per_unit) % 60:02d}s")
        lines.append(f"{row['stage']} ({name}): " + ", ".join(parts))
        lines += [
            f"  unit {n.rsplit('/', 1)[1]}: {s}" for n, s in sorted(states.items()) if s in PROBLEM_STATES
        ]
    return lines


def format_status(manifest: Manifest) -> str:
    """The status table, then for each problem the SLURM state, log location and the tail of its error."""
    try:
        slurm_states = _slurm_states(manifest)
        slurm_note = ""
    except AblateError as e:
        slurm_states, slurm_note = {}, f"(SLURM not reachable: {e}; states read from the run directories)"
    rows = arm_rows(manifest, slurm_states)
    mlflow, mlflow_note = _mlflow_progress(manifest, [r["run_id"] for r in rows])
    header = ("arm", "stage", "state", "tokens", "loss", "job", "mlflow arm run")
    table = [header]
    for r in rows:
        tokens, total, loss = _progress(r, mlflow)
        state = r["state"] + _percent(r, tokens, total)
        if r["slurm"] is not None and r["slurm"].state == "PENDING" and r["slurm"].reason not in ("", "None"):
            state += f" ({r['slurm'].reason})"
        table.append(
            (
                r["arm"],
                r["stage"],
                state,
                f"{_tok(tokens)}/{_tok(total)}",
                "-" if loss is None else f"{loss:.4f}",
                str(r["job_id"]),
                r["arm_run_id"],
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = [
        f"sweep {manifest.data['name']} ({manifest.data['file']}), cluster {manifest.data.get('cluster', '?')}, "
        f"tracking {manifest.data['tracking_uri']}"
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.append(
        f"stage: the arm's current stage (its last once all are done). tokens, loss: the running stage's last "
        f"step; once train is done, train's tokens and final loss (the mean over the last {TAIL_FRACTION:.0%} "
        "of steps, as summary.csv and the arm's MLflow run give it)"
    )
    lines += unit_lines(manifest, rows, slurm_states)
    lines += [note for note in (slurm_note, mlflow_note) if note]
    for r in rows:
        if r["state"] not in PROBLEM_STATES:
            continue
        why = f" (SLURM: {r['slurm'].state}, exit {r['slurm'].exit_code})" if r["slurm"] is not None else ""
        lines.append(f"\n{r['arm']}: {r['stage']} {r['state']}{why}  output: {r['dir']}")
        tail = _error_tail(manifest, r)
        if tail:
            lines.append("  " + tail.replace("\n", "\n  "))
        if r["job_id"]:
            lines.append(f"  job logs: {manifest.data['job_folder']}/{r['job_id']}/")
    if any(r["state"] in PROBLEM_STATES for r in rows):
        lines.append(
            f"\n`ablate launch {manifest.data['file']}` resubmits these from their last checkpoints."
        )
    return "\n".join(lines)


def cancel_sweep(manifest: Manifest) -> list[str]:
    """Cancel the sweep's SLURM jobs that are queued or running; returns the job ids cancelled."""
    if manifest.data.get("cluster") != "slurm":
        raise AblateError(
            f"sweep {manifest.data['name']!r} ran with cluster={manifest.data.get('cluster')}: its jobs belong "
            "to the `ablate launch` process; stop it with Ctrl-C (it checkpoints first)"
        )
    from ablate.launch import slurm

    states = _slurm_states(manifest)
    names = {
        name: j["job_id"]
        for name, j in manifest.data["jobs"].items()
        if j.get("job_id") in states and states[j["job_id"]].state in slurm.ACTIVE_STATES
    }
    slurm.cancel(sorted(set(names.values())))
    manifest.record_many(
        [(name, "cancelled", f"ablate cancel (was job {jid})") for name, jid in names.items()]
    )
    return sorted(set(names.values()))
