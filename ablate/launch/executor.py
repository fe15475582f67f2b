"""Run a job graph and wait: submitit's DebugExecutor (in-process) or LocalExecutor (subprocesses).

Jobs start once the jobs they depend on are done, at most cluster.max_concurrent at a time; while they
run, a status line per running job is printed every cluster.poll_s seconds (tokens, loss, ETA).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import submitit

from ablate.errors import LaunchError, StorageError
from ablate.launch.graph import Graph, Node
from ablate.rundir import RunDir
from ablate.schema import ClusterConfig
from ablate.stages import registry

Event = Callable[[str, Node, str], None]  # (event, node, detail): submitted | done | failed | skipped


def make_executor(cluster: ClusterConfig, folder: Path) -> submitit.Executor:
    """The submitit executor for cluster.kind."""
    folder.mkdir(parents=True, exist_ok=True)
    if cluster.kind == "debug":
        return submitit.DebugExecutor(folder=folder / "%j")
    if cluster.kind == "local":
        ex = submitit.LocalExecutor(folder=folder / "%j")
        ex.update_parameters(timeout_min=cluster.timeout_min)
        return ex
    # cluster.kind=slurm never waits here: ablate.launch.slurm submits job arrays and returns.
    raise LaunchError(f"cluster.kind={cluster.kind!r} does not run in-process; use debug or local")


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def arms_label(labels: list[str]) -> str:
    """Who a job is for: the arm labels, or a count when a shared stage serves many arms."""
    return ", ".join(labels) if len(labels) <= 2 else f"{len(labels)} arms"


def progress_line(node: Node) -> str:
    """One status line for a running job, from its progress.json (steps; tokens and ETA when known)."""
    p = RunDir(node.job.out_dir).read_progress()
    who = f"{node.job.stage:<15} {arms_label(node.job.labels):<32}"
    if "images" in p:  # a unit of work reading images (the prepare stage on real data)
        unit = f" unit {node.job.unit}" if node.job.unit else ""
        rate = f"  {p.get('images_per_s', 0.0):,.0f} images/s" if "images_per_s" in p else ""
        eta = f"  ETA {_fmt_eta(p['eta_s'])}" if "eta_s" in p else ""
        return f"  {who}{unit} {p['images']:,} images{rate}{eta}"
    if "step" not in p:
        return f"  {who} running"
    parts = [f"step {p['step']}/{p.get('total_steps', '?')}"]
    if "tokens" in p:
        parts.append(f"tokens {p['tokens'] / 1e6:.2f}M/{p['total_tokens'] / 1e6:.2f}M")
    if "loss" in p:
        parts.append(f"loss {p['loss']:.3f}")
    if "tokens_per_s" in p:
        parts.append(f"{p['tokens_per_s'] / 1e3:.1f}k tok/s")
    if "eta_s" in p:
        parts.append(f"ETA {_fmt_eta(p['eta_s'])}")
    return f"  {who} " + "  ".join(parts)


def by_priority(ready: list[Node], pending: list[Node]) -> list[Node]:
    """The order in which ready jobs take free slots: first a job that unblocks a chain of at least two
    jobs (a shared stage such as pretrain, align before its arm's train: keeps the long jobs flowing and
    no arm's chain left for the end), then the job furthest along its arm (an evaluate before another
    arm's train, so arms finish and show their results one by one, not all at the end of a sweep), then
    graph order. `pending` is in graph order (dependencies first)."""
    below: dict[str, int] = {}  # the longest chain of pending jobs waiting on a job, itself excluded
    for n in reversed(pending):
        below.setdefault(n.job.name, 0)
        for d in n.deps:
            below[d] = max(below.get(d, 0), below[n.job.name] + 1)
    # sorted is stable: ties keep graph order
    return sorted(ready, key=lambda n: (below.get(n.job.name, 0) < 2, -registry.order(n.job.stage)))


def run_graph(
    graph: Graph, cluster: ClusterConfig, folder: Path, on_event: Event, echo: Callable[[str], None] = print
) -> bool:
    """Run every not-done node in dependency order; returns True if all succeeded."""
    from ablate.stages.runner import run_job  # torch (in the runner's imports): only once a job runs

    executor = make_executor(cluster, folder)
    pending = [n for n in graph.ordered() if not n.done]
    for n in graph.ordered():
        if n.done:
            on_event("skipped", n, "output exists")
    running: dict[str, tuple[Node, submitit.Job]] = {}
    failed: set[str] = set()
    last_print = time.monotonic()
    try:
        while pending or running:
            # Anything downstream of a failure cannot run.
            for n in list(pending):
                if any(d in failed for d in n.deps):
                    pending.remove(n)
                    failed.add(n.job.name)
                    on_event("failed", n, "a stage it needs failed")
            ready = [n for n in pending if all(graph.nodes[d].done for d in n.deps)]
            for n in by_priority(ready, pending):
                if len(running) >= cluster.max_concurrent:
                    break
                pending.remove(n)
                job = executor.submit(run_job, n.job)
                running[n.job.name] = (n, job)
                on_event("submitted", n, str(job.job_id))
                if cluster.kind == "debug":
                    break  # DebugExecutor runs a job when it is polled below, one at a time
            for name, (n, job) in list(running.items()):
                if cluster.kind != "debug" and not job.done():
                    continue
                del running[name]
                try:
                    job.result()
                except Exception as e:  # the job's own exception, re-raised by submitit
                    failed.add(name)
                    on_event("failed", n, failure_detail(n, e, job.paths.stderr))
                    continue
                n.done = True
                on_event("done", n, str(job.job_id))
            if running and time.monotonic() - last_print >= cluster.poll_s:
                last_print = time.monotonic()
                echo(f"[{time.strftime('%H:%M:%S')}] running:")
                for n, _ in running.values():
                    echo(progress_line(n))
            if running:
                time.sleep(0.5)
    except KeyboardInterrupt:
        _wind_down(running, echo, "interrupted")
        raise
    except StorageError:  # the manifest's disk is full or read-only: the jobs on it cannot go on either
        _wind_down(running, echo, "cannot write to the results folder")
        raise
    return not failed


def _wind_down(
    running: dict[str, tuple[Node, submitit.Job]], echo: Callable[[str], None], why: str, grace_s: float = 60
) -> None:
    """After Ctrl-C: give running jobs time to checkpoint and stop (a terminal's SIGINT reached them too)."""
    if not running:
        return
    echo(f"{why}: waiting up to {grace_s:.0f}s for {len(running)} running job(s) to checkpoint and stop")
    start = time.monotonic()
    signalled = False
    while running and time.monotonic() - start < grace_s:
        for name, (_, job) in list(running.items()):
            if job.done():
                del running[name]
        if running and not signalled and time.monotonic() - start > 5:
            # A SIGINT sent to this process alone never reached them: ask them directly, once.
            for _, job in running.values():
                job.cancel(check=False)
            signalled = True
        time.sleep(0.5)


_TRACE_RULE = "----------------------"  # submitit's FailedJobError frames the job's traceback with these


def failure_detail(node: Node, e: BaseException, log: str | Path) -> str:
    """'<the error's last line>; log <path>': what went wrong, then where to read more."""
    return f"{error_line(node, e)}; log {log}"


def error_line(node: Node, e: BaseException) -> str:
    """The last line of the job's error: the runner's record in status.json, else submitit's trace."""
    status = RunDir(node.job.out_dir).read_status()
    if status.get("state") == "failed" and status.get("error"):
        return _last_line(str(status["error"]))
    text = str(e)
    if _TRACE_RULE in text:  # "failed during processing with trace:\n---\n<trace>\n---\nYou can check..."
        text = text.split(_TRACE_RULE)[1]
    return _last_line(text) or type(e).__name__


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
