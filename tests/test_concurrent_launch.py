"""One launcher per sweep, one job per stage directory, one builder of a new store: real concurrent
`ablate launch` processes on `cluster=local`, and the flock they rest on (ablate.filelock)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scales import tiny

from ablate.filelock import FileLock
from ablate.launch.manifest import launch_lock_path

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny(
    "train.batch_tokens=2304",
    "train.total_tokens=46080",  # 20 steps
    "train.checkpoint_every_tokens=23040",
)
ARM = "  - {data.task: uncond, model.init: random}\n"


def launch(results: Path, sweep: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), "launch", str(sweep), *TINY, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _hold(path: str) -> None:  # in a child process: take the lock, say so, then sleep until killed
    lock = FileLock(path, what="test holder")
    assert lock.acquire(wait=False)
    print("held", flush=True)
    time.sleep(600)


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    path = tmp_path / "x" / ".lock"
    child = subprocess.Popen(
        # tests/ on the path, as pytest puts it: the module imports its helpers (tiny) from there.
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, 'tests'); import test_concurrent_launch as t; "
            f"t._hold({str(path)!r})",
        ],  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    lock = FileLock(path)
    assert not lock.acquire(wait=False)
    who = lock.describe_holder()
    assert f"pid {child.pid} on host {os.uname().nodename}" in who and "since" in who
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert lock.acquire(wait=False) and lock.held  # no stale lock: the kernel dropped it
    assert not FileLock(path).acquire(wait=False)  # and it excludes others, in this process too
    lock.release()
    assert FileLock(path).acquire(wait=False)


@pytest.mark.slow
def test_a_second_launch_of_a_running_sweep_says_who_runs_it_or_waits(tmp_path: Path) -> None:
    results, sweep = tmp_path / "results", tmp_path / "one.yaml"
    sweep.write_text("name: one\narms:\n" + ARM)
    first = launch(results, sweep)
    lock = launch_lock_path(results, "one")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text()):
        time.sleep(0.1)
    assert json.loads(lock.read_text())["pid"] == first.pid
    second = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), "launch", str(sweep), *TINY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode != 0 and first.poll() is None
    assert f"pid {first.pid} on host {os.uname().nodename} since" in second.stderr
    assert second.stderr.count("\n") == 1 and second.stderr.startswith("error: sweep 'one' is already being")
    waiting = launch(results, sweep, "--wait")
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    w_out, w_err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, w_out[-2000:] + w_err[-2000:]
    assert "is being launched by pid" in w_out and "waiting (--wait)" in w_out
    assert "submitted" not in w_out and w_out.count("skipped") == 6  # it ran after the first: all done


@pytest.mark.slow
def test_two_sweeps_sharing_every_stage_launched_at_once_into_a_fresh_folder_run_each_once(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    procs = []
    for name in ("left", "right"):  # the same arm: every stage directory is shared
        sweep = tmp_path / f"{name}.yaml"
        sweep.write_text(f"name: {name}\narms:\n" + ARM)
        procs.append(launch(results, sweep))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-2000:]
        assert "duplicate column" not in err and "Traceback" not in err
    train_dir = next((results / "cache" / "train").iterdir())
    lines = (train_dir / "metrics.jsonl").read_text().splitlines()
    steps = [row["step"] for row in map(json.loads, lines) if "loss" in row]  # not the final values' row
    assert steps == list(range(1, 21))  # trained once: not steps 1-20 twice
    run_id = json.loads((train_dir / "provenance.json").read_text())["mlflow_run_id"]
    with sqlite3.connect(results / "mlflow.db") as db:
        counts = db.execute(
            "SELECT key, step, COUNT(*) FROM metrics WHERE run_uuid = ? GROUP BY key, step", (run_id,)
        ).fetchall()
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(counts) == sum(len(r) - 1 for r in rows) and all(n == 1 for _, _, n in counts)
    # The later job of a shared stage waited for the earlier one's lock, then found the stage done.
    logs = "".join(p.read_text() for p in (results / "jobs").rglob("*_log.out"))
    assert "is being run by pid" in logs and "; waiting" in logs
