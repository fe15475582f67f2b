"""SLURM through submitit: one job array per stage, `afterok` dependencies, sacct states, cancel.

`ablate launch` with cluster.kind=slurm submits and returns: each stage of the sweep (synth, tokenizers,
prepare, pretrain, align, train, evaluate) becomes one `sbatch --array` whose tasks are that stage's
pending jobs, capped at cluster.array_parallelism running at once and split when larger than the
cluster's MaxArraySize. An array waits (`--dependency=afterok:...`) for the arrays and the still-active
jobs of earlier launches that hold its inputs, and is cancelled by SLURM if one of those fails
(`--kill-on-invalid-dep=yes`), so a failure never leaves jobs pending forever: the next launch resubmits.

Only the training stages (pretrain, train) use every node and task of cluster=...; the other stages
are single-process and get one task (with one GPU when the cluster has GPUs).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from ablate.config.sbatch import check_cluster_sbatch, check_text
from ablate.errors import LaunchError
from ablate.launch.graph import Graph, Node
from ablate.launch.slurm_job import StageJob
from ablate.schema import ClusterConfig
from ablate.stages import registry

"""Stages that run data-parallel on all of cluster.nodes x cluster.tasks_per_node."""

# sacct states of a job that may still run: a relaunch must not submit it again.
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
     "CONFIGURING", "COMPLETING", "PREEMPTED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
)  # fmt: skip


def _run(cmd: list[str], timeout: float = 60) -> str:
    """Run a SLURM client command; a LaunchError quoting SLURM's own message if it fails."""
    if shutil.which(cmd[0]) is None:
        raise LaunchError(
            f"`{cmd[0]}` is not installed here: cluster.kind=slurm needs the SLURM client tools on this "
            "machine (a login node). To try the SLURM path on one machine: `python -m ablate.ops.local_slurm up`"
        )
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LaunchError(
            f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s: is slurmctld up?"
        ) from None
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip() or f"exit code {out.returncode}"
        raise LaunchError(f"`{' '.join(cmd)}` failed: {msg}")
    return out.stdout


def check_reachable() -> None:
    """LaunchError unless slurmctld answers (before anything is created or submitted)."""
    try:
        out = _run(["scontrol", "ping"], timeout=30)
    except LaunchError as e:
        raise LaunchError(f"SLURM is unreachable: {e}") from None
    if "UP" not in out:
        raise LaunchError(f"SLURM is unreachable: `scontrol ping` says {out.strip()!r}")


def max_array_size(cluster: ClusterConfig) -> int:
    """How many tasks one array may hold: cluster.max_array_size, else the cluster's MaxArraySize."""
    if cluster.max_array_size:
        return cluster.max_array_size
    for line in _run(["scontrol", "show", "config"]).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            # Indices run 0..MaxArraySize-1, so an array of MaxArraySize tasks fits.
            return max(1, int(value.strip()))
    return 1001  # SLURM's default


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """`items` in consecutive lists of at most `size`."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def job_parameters(cluster: ClusterConfig, stage: str, job_name: str, units: bool = False) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one stage's array (without the dependency); `units`: the array
    of the stage's units of work, one task (and one GPU where nodes have them) each."""
    distributed = registry.get(stage).data_parallel and not units
    gpus = cluster.gpus_per_node if distributed else min(cluster.gpus_per_node, 1)
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": cluster.nodes if distributed else 1,
        "ntasks_per_node": cluster.tasks_per_node if distributed else 1,
        "cpus_per_task": cluster.cpus_per_task,
        "time": cluster.timeout_min,
        "signal_delay_s": cluster.signal_delay_s,
        "array_parallelism": cluster.array_parallelism,
        "additional_parameters": {"kill-on-invalid-dep": "yes", **cluster.additional_parameters},
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if cluster.mem_gb is not None:
        # Memory is per node; a one-task stage asks for its share (0 stays 0: the whole node).
        share = 1 if distributed else cluster.tasks_per_node
        params["mem"] = f"{max(1, cluster.mem_gb // share) if cluster.mem_gb else 0}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cluster, key):
            params[key] = getattr(cluster, key)
    return params


def check_script_values(cluster: ClusterConfig, folder: Path, sweep_name: str) -> None:
    """ConfigError for a value that would break a line of the sbatch script: the cluster's own (validate
    checks those per arm), the sweep name (job names), the jobs folder and the python path (log paths and
    the command line)."""
    check_cluster_sbatch(cluster)
    check_text("sweep name", sweep_name, what="it names the SLURM jobs")
    check_text("results folder", str(folder), what="the job logs are written under it")
    check_text("python", sys.executable, what="the jobs run it")


def make_executor(cluster: ClusterConfig, folder: Path) -> submitit.SlurmExecutor:
    """A SlurmExecutor writing job files under folder/<job id>/."""
    folder.mkdir(parents=True, exist_ok=True)
    return submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=cluster.max_timeouts)


def render_sbatch(
    cluster: ClusterConfig, stage: str, folder: Path, *, array: int = 1, dependency: str = ""
) -> str:
    """The sbatch script submitit would submit for `stage` (for review and the golden-file test)."""
    check_script_values(cluster, folder, f"ablate-{stage}")
    executor = make_executor(cluster, folder)
    params = job_parameters(cluster, stage, f"ablate-{stage}")
    if dependency:
        params["additional_parameters"] = {**params["additional_parameters"], "dependency": dependency}
    executor.update_parameters(**params)
    if array > 1:
        executor.parameters["map_count"] = array
    return executor._make_submission_file_text(executor._submitit_command_str, "render")


@dataclass
class Submitted:
    """One sbatch: the stage, its array id, and the graph jobs it holds (with their array-task ids)."""

    stage: str
    array_id: str
    jobs: dict[str, str]  # graph job name -> SLURM job id ("123_4", or "123" for a one-task array)


def submit_graph(
    graph: Graph,
    cluster: ClusterConfig,
    folder: Path,
    sweep_name: str,
    *,
    active: dict[str, str],
    on_submitted: Callable[[Submitted], None],
) -> list[Submitted]:
    """Submit every node that is neither done nor active (name -> job id), one array per stage.

    `on_submitted` runs after each successful sbatch (the manifest records it there), so an sbatch that
    fails leaves a manifest holding exactly what was submitted. Raises LaunchError quoting SLURM, or
    ConfigError (before any sbatch) for a value that would break a line of the script.
    """
    check_script_values(cluster, folder, sweep_name)
    executor = make_executor(cluster, folder)
    limit = max_array_size(cluster)
    # What a node waits for: a job of an earlier launch by its own id (its array may hold failures), a job
    # of this launch by its whole array.
    wait_for: dict[str, str] = dict(active)
    tasks_of: dict[str, list[str]] = {}  # array id of this launch -> node names in task order
    done: list[Submitted] = []
    # A stage split into units is two sbatch: the units' array, then the stage's own job waiting for it.
    for stage, units in ((s, u) for s in registry.STAGE_ORDER for u in (True, False)):
        nodes = [
            n
            for n in graph.ordered()
            if n.job.stage == stage
            and (n.job.unit is not None) == units
            and not n.done
            and n.job.name not in active
        ]
        for corr, part in _groups(nodes, tasks_of, limit):
            deps = sorted({wait_for[d] for n in part for d in n.deps if d in wait_for} - {corr})
            spec = ",".join(
                ([f"afterok:{':'.join(deps)}"] if deps else []) + ([f"aftercorr:{corr}"] if corr else [])
            )
            params = job_parameters(
                cluster, stage, f"{sweep_name}:{stage}" + (":units" if units else ""), units
            )
            if spec:
                params["additional_parameters"] = {**params["additional_parameters"], "dependency": spec}
            executor.update_parameters(**params)
            try:
                jobs = executor.map_array(StageJob(), [n.job for n in part])
            except Exception as e:  # submitit wraps sbatch's own message; quote it
                raise LaunchError(_sbatch_error(e, stage, done)) from None
            sub = Submitted(stage, str(jobs[0].job_id).split("_")[0], {})
            for node, job in zip(part, jobs, strict=True):
                sub.jobs[node.job.name] = str(job.job_id)
                wait_for[node.job.name] = sub.array_id
            tasks_of[sub.array_id] = [n.job.name for n in part]
            done.append(sub)
            on_submitted(sub)
    return done


def _groups(nodes: list[Node], tasks_of: dict[str, list[str]], limit: int) -> list[tuple[str, list[Node]]]:
    """Split one stage's nodes into arrays: (array they correspond to task by task, or '', nodes).

    When each task i of an earlier array feeds exactly task i of this one and nothing else is left
    (train -> evaluate, one arm each), the array waits with `aftercorr`, so one arm's failed or cancelled
    training holds back only that arm's evaluation; otherwise it waits for whole arrays (`afterok`).
    """
    rest = list(nodes)
    groups: list[tuple[str, list[Node]]] = []
    for array_id, names in tasks_of.items():
        fed = {}
        for n in rest:
            hits = [d for d in n.deps if d in names]
            if len(hits) == 1 and hits[0] not in fed:
                fed[hits[0]] = n
        # Only when it covers the whole stage: one sbatch per stage matters more than finer waiting.
        # (A one-task array gains nothing from aftercorr.)
        if len(fed) == len(names) == len(rest) > 1:
            ordered = [fed[name] for name in names]
            groups.append((array_id, ordered))
            rest = [n for n in rest if all(n is not m for m in ordered)]
    return groups + [("", part) for part in chunks(rest, limit)]


def _sbatch_error(e: BaseException, stage: str, done: list[Submitted]) -> str:
    text = str(e).strip()
    # submitit's FailedJobError carries the whole command output; SLURM's message is the `sbatch: error` part.
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()] or text.splitlines()[-3:]
    msg = f"sbatch refused the {stage!r} array: " + " | ".join(lines)
    if done:
        msg += "\nAlready submitted (kept; `ablate cancel` stops them): " + ", ".join(
            f"{s.stage} array {s.array_id} ({len(s.jobs)} job(s))" for s in done
        )
    else:
        msg += "\nNothing was submitted."
    return msg + "\nFix the cluster settings (cluster.partition, cluster.timeout_min, ...) and launch again."


@dataclass
class JobState:
    """One sacct row: SLURM's state (first word, e.g. CANCELLED of 'CANCELLED by 0'), exit code, reason."""

    job_id: str
    state: str
    exit_code: str = ""
    elapsed: str = ""
    node: str = ""
    reason: str = ""


def _expand(array_id: str, spec: str) -> list[str]:
    """'123' + '[0-3,7%2]' -> ['123_0', ..., '123_3', '123_7'] (sacct's line for pending array tasks)."""
    spec = spec.strip("[]").split("%")[0]
    ids = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{array_id}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, JobState]:
    """`sacct -X -n -P -o JobID,State,ExitCode,Elapsed,NodeList,Reason` output -> job id -> state."""
    states: dict[str, JobState] = {}
    ranges: list[tuple[list[str], dict[str, str]]] = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 2 or not fields[0]:
            continue
        fields += [""] * (6 - len(fields))
        job_id, state = fields[0], fields[1].split()[0] if fields[1] else "UNKNOWN"
        row = dict(state=state, exit_code=fields[2], elapsed=fields[3], node=fields[4], reason=fields[5])
        base, _, suffix = job_id.partition("_")
        if suffix.startswith("["):
            ranges.append((_expand(base, suffix), row))
        else:
            states[job_id] = JobState(job_id=job_id, **row)
    # A range row is the array's record for tasks not split off yet; its range can still name tasks that
    # have their own row (e.g. 213_[0-1%2] CANCELLED beside 213_0 COMPLETED), and those rows win.
    for ids, row in ranges:
        for i in ids:
            states.setdefault(i, JobState(job_id=i, **row))
    return states


def sacct(job_ids: Sequence[str]) -> dict[str, JobState]:
    """The state of every job in `job_ids` (array task ids included) from one sacct call."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids}, key=int)
    out = _run(
        [
            "sacct",
            "-X",
            "-n",
            "-P",
            "-j",
            ",".join(arrays),
            "-o",
            "JobID,State,ExitCode,Elapsed,NodeList,Reason",
        ]
    )
    states = parse_sacct(out)
    # A one-task "array" has the bare id; an array task appears as 123_4 (or in a pending range).
    return {j: states[j] for j in job_ids if j in states}


def cancel(job_ids: Sequence[str]) -> None:
    """scancel the given jobs (array task ids included)."""
    if job_ids:
        _run(["scancel", *job_ids])


def log_paths(folder: Path, job_id: str) -> tuple[Path, Path]:
    """A job's stdout and stderr files as submitit writes them (rank 0's)."""
    d = Path(folder) / job_id
    return d / f"{job_id}_0_log.out", d / f"{job_id}_0_log.err"


def tail(path: Path, lines: int = 8) -> str:
    """The last `lines` lines of a text file, or '' if it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
