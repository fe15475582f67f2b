"""`ablate launch`: sweep file -> validated arms -> job graph -> jobs' tracking -> manifest -> executor."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ablate.arms import ResolvedArm, execution_settings, resolve_arms
from ablate.atomic import as_storage_error
from ablate.config.validate import check_assets
from ablate.errors import AblateError, LaunchError
from ablate.filelock import FileLock
from ablate.launch.estimate import estimate_table, pretokenize_lines
from ablate.launch.executor import arms_label, make_executor, run_graph
from ablate.launch.graph import Graph, Node, build_graph
from ablate.launch.manifest import Manifest, launch_lock_path
from ablate.launch.runs import arm_run_names, attach_tracking, swept_params, sync_done
from ablate.schema import ClusterConfig, TrackingConfig
from ablate.stages.names import TRAIN
from ablate.sweep import Sweep, load_sweep
from ablate.tracking.store import Store
from ablate.tracking.tags import stages_experiment, sweep_experiment


def _units(graph: Graph, name: str) -> str:
    """'[3/40 units]' (done / all) for a stage split into units, else ''."""
    units = [n for n in graph.nodes.values() if n.job.unit is not None and n.job.name.startswith(name + "/")]
    return f"[{sum(n.done for n in units)}/{len(units)} units]" if units else ""


def dry_run_table(arms: list[ResolvedArm], graph: Graph) -> str:
    """The arms, the names of their MLflow runs, their train keys and stages, marking which outputs already
    exist.

    The train key is what a user looks the arm up by: its directory results/cache/train/<key> and the
    ablate.run_key tag of its MLflow train run (the arm's config hash, arm.key, names no file or run).
    """
    run_names = arm_run_names(swept_params(arms))
    rows = [("arm", "MLflow run", "train key", "stages (* = output exists)")]
    for arm in arms:
        names = graph.arm_stages[arm.label]
        stages = " -> ".join(
            f"{s}{_units(graph, n)}{'*' if graph.nodes[n].done else ''}" for s, n in names.items()
        )
        train = names.get(TRAIN)
        rows.append((arm.label, run_names[arm.label], graph.nodes[train].job.key if train else "-", stages))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(f"{c:<{w}}" for c, w in zip(r[:-1], width, strict=True)), r[-1]]) for r in rows]
    todo = sum(not n.done for n in graph.nodes.values())
    lines.append(f"{len(arms)} arm(s), {len(graph.nodes)} distinct stage job(s), {todo} to run")
    return "\n".join(lines)


def launch(
    sweep_file: str | Path,
    overrides: list[str],
    results: Path,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    wait: bool = False,
) -> int:
    """Validate every arm, then (unless dry_run) run the sweep; returns a process exit code.

    One launcher per sweep and results folder: while one runs, another raises LaunchError naming it (pid,
    host, since), or with `wait` waits for it to end and then launches (running only what is left).
    """
    sweep = load_sweep(sweep_file, overrides)
    arms = resolve_arms(sweep, overrides)  # raises ConfigError before anything is submitted
    cluster, settings = execution_settings(arms)
    missing = _missing_assets(arms)
    small = _small_splits(arms)
    if (missing or small) and not dry_run:
        raise (missing or small)[0]
    graph = build_graph(arms, results, threads=cluster.threads)
    echo(f"sweep {sweep.name!r} from {sweep.path}")
    echo(dry_run_table(arms, graph))
    if dry_run:
        for problem in dict.fromkeys(str(p) for p in missing):  # arms sharing an asset: said once
            echo(f"missing (a launch stops here): {problem}")
        for problem in dict.fromkeys(str(p) for p in small):
            echo(f"too small (a launch stops here): {problem}")
        echo("")
        echo(estimate_table([(a.label, a.config) for a in arms]))
        for line in pretokenize_lines([(a.label, a.config) for a in arms]):
            echo(line)
        return 0
    if cluster.kind == "slurm":  # before anything is written (the sweep's lock, the store, the manifest)
        from ablate.launch import slurm

        slurm.check_script_values(cluster, results / "jobs" / sweep.name, sweep.name)  # a newline in a path
        slurm.check_reachable()
    store = Store.for_results(results, settings.uri)  # opened, not touched: jobs make their runs
    try:
        return _launch_exclusive(sweep, arms, graph, cluster, store, settings, results, echo, wait)
    except Exception as exc:
        # A full or read-only disk under the store, manifest, lock or job folder: one line (cli prints
        # it), not a traceback; what was written stays valid (atomic files, SQLite transactions).
        err = as_storage_error(exc, path=store.sqlite_path)
        if err is None or err is exc:
            raise
        raise err from exc


def _launch_exclusive(
    sweep: Sweep,
    arms: list[ResolvedArm],
    graph: Graph,
    cluster: ClusterConfig,
    store: Store,
    settings: TrackingConfig,
    results: Path,
    echo: Callable[[str], None],
    wait: bool,
) -> int:
    """launch() under the sweep's lock (results/sweeps/<name>/launch.lock), waited for or refused."""
    lock = FileLock(launch_lock_path(results, sweep.name), what=f"ablate launch {sweep.path}")
    waited: list[str] = []

    def on_wait(who: str) -> None:
        waited.append(who)
        echo(f"sweep {sweep.name!r} is being launched by {who}; waiting (--wait)")

    if lock.acquire(wait, on_wait=on_wait) and waited:
        graph = build_graph(arms, results, threads=cluster.threads)  # the launch waited for did stages
    elif not lock.held:
        raise LaunchError(
            f"sweep {sweep.name!r} is already being launched into {results} by {lock.describe_holder()} "
            f"(lock {lock.path}); follow it with `ablate status {sweep.name}`, stop it with Ctrl-C there, or "
            "add --wait to launch once it ends"
        )
    try:
        return _launch_locked(sweep, arms, graph, cluster, store, settings, results, echo)
    finally:
        lock.release()


def _launch_locked(
    sweep: Sweep,
    arms: list[ResolvedArm],
    graph: Graph,
    cluster: ClusterConfig,
    store: Store,
    settings: TrackingConfig,
    results: Path,
    echo: Callable[[str], None],
) -> int:
    """launch() once it holds the sweep's lock: runs, manifest, then the jobs."""
    previous = Manifest.load_if_exists(results, sweep.name)
    active: dict[str, str] = {}
    if cluster.kind == "slurm":
        active = _active_slurm_jobs(graph, previous)  # fails here if SLURM is unreachable, before any run
    elif cluster.kind not in ("debug", "local"):
        make_executor(cluster, results / "jobs" / sweep.name)  # fails here, before any run is created

    uri = store.uri
    attach_tracking(graph, arms, sweep.name, uri, settings)  # jobs make their runs when they start
    sync_done(graph, arms, sweep.name, store, settings, echo)
    manifest = Manifest.create(
        results, sweep, arms, graph, cluster=cluster.kind, tracking_uri=uri, previous=previous
    )
    prefix = settings.experiment_prefix
    echo(
        f"tracking: {uri} (experiment {sweep_experiment(prefix, sweep.name)}: one run per arm; "
        f"{stages_experiment(prefix, sweep.name)}: the stage runs); manifest: {manifest.path}"
    )
    if cluster.kind == "slurm":
        return _submit_slurm(
            graph, cluster, results / "jobs" / sweep.name, sweep.name, manifest, active, echo
        )

    start = time.monotonic()

    def on_event(event: str, node: Node, detail: str) -> None:
        if event != "skipped" or len(graph.nodes) < 20:
            echo(
                f"[{time.strftime('%H:%M:%S')}] {event:<9} {node.job.stage:<15} {arms_label(node.job.labels)}"
                + (f"  ({detail})" if detail else "")
            )
        manifest.record(node.job.name, event, detail)  # after the line: a full disk must not hide it

    ok = run_graph(graph, cluster, results / "jobs" / sweep.name, on_event, echo=echo)
    took = time.monotonic() - start
    if ok:
        me = command_name()
        echo(
            f"sweep {sweep.name!r} finished in {took / 60:.1f} min. Next: `{me} report --sweep {sweep.name}`, "
            f"`{me} ui`, `{me} status {sweep.name}`"
        )
        return 0
    echo(
        f"sweep {sweep.name!r} has failed jobs after {took / 60:.1f} min: `ablate status {sweep.name}` shows "
        "which and their logs; `ablate launch` again resumes from the last checkpoints"
    )
    return 1


def _missing_assets(arms: list[ResolvedArm]) -> list[AblateError]:
    """Per arm, the first file it needs that is missing (data, tokenizers, checkpoint, held-out text)."""
    problems = []
    for arm in arms:
        try:
            check_assets(arm.config, arm=arm.label)
        except AblateError as e:
            problems.append(e)
    return problems


def _small_splits(arms: list[ResolvedArm]) -> list[AblateError]:
    """Per arm, a real-data split too small for a stage that reads it (prepare.check_splits), so that a
    set of a few hundred images is refused here rather than failing every evaluate after training."""
    from ablate.stages import prepare

    problems = []
    for arm in arms:
        try:
            prepare.check_splits(arm.config)
        except AblateError as e:
            problems.append(e)
    return problems


def _active_slurm_jobs(graph: Graph, previous: Manifest | None) -> dict[str, str]:
    """Jobs of an earlier launch still queued or running (job name -> SLURM job id): not submitted again."""
    from ablate.launch import slurm

    slurm.check_reachable()
    if previous is None:
        return {}
    last = {
        name: job["job_id"]
        for name, job in previous.data.get("jobs", {}).items()
        if job.get("job_id") and name in graph.nodes and not graph.nodes[name].done
    }
    states = slurm.sacct(list(last.values()))
    return {
        name: jid for name, jid in last.items() if jid in states and states[jid].state in slurm.ACTIVE_STATES
    }


def _submit_slurm(
    graph: Graph,
    cluster: ClusterConfig,
    folder: Path,
    sweep_name: str,
    manifest: Manifest,
    active: dict[str, str],
    echo: Callable[[str], None],
) -> int:
    """Submit the pending stages as job arrays and return (no waiting); the manifest records each sbatch."""
    from ablate.launch import slurm

    for name, job_id in active.items():
        n = graph.nodes[name]
        echo(
            f"queued or running: {n.job.stage:<15} {arms_label(n.job.labels)}  (job {job_id}, not resubmitted)"
        )

    def on_submitted(sub: slurm.Submitted) -> None:
        manifest.record_many([(name, "submitted", job_id) for name, job_id in sub.jobs.items()])
        labels = [label for name in sub.jobs for label in graph.nodes[name].job.labels]
        echo(
            f"[{time.strftime('%H:%M:%S')}] submitted {sub.stage:<15} array {sub.array_id} "
            f"({len(sub.jobs)} job(s): {arms_label(sorted(set(labels)))})"
        )

    subs = slurm.submit_graph(graph, cluster, folder, sweep_name, active=active, on_submitted=on_submitted)
    n_jobs = sum(len(s.jobs) for s in subs)
    echo(
        f"sweep {sweep_name!r}: {n_jobs} job(s) in {len(subs)} array(s) submitted, {len(active)} still queued "
        f"or running. Follow with `ablate status {sweep_name}`; stop with `ablate cancel {sweep_name}`; job "
        f"logs in {folder}/<job id>/"
    )
    return 0


def command_name(argv0: str | None = None) -> str:
    """How to run ablate again from here: `ablate` where that is on PATH, else the path that was run
    (`.venv/bin/ablate` after `make demo`, whose venv is not activated)."""
    exe = Path(argv0 if argv0 is not None else sys.argv[0])
    if exe.name != "ablate":  # python -m ablate.cli (tests, debuggers): the command's own name
        return "ablate"
    on_path = shutil.which("ablate")
    if on_path and Path(on_path).resolve() == exe.resolve():
        return "ablate"
    try:
        return str(exe.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(exe.resolve())
