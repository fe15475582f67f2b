"""`ablate ui` serves the real MLflow UI on 127.0.0.1 over the results' tracking store, says so only once it
answers, and links each sweep's runs table."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ablate import tracking

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(results: Path, port: int) -> subprocess.Popen:
    """`ablate ui` over results/mlflow.db, in its own process group, stdout piped."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), "ui", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def descendants(pid: int) -> list[tuple[int, int, str]]:
    """(pid, RSS in KiB, command line) of every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                rss = next(
                    int(line.split()[1])
                    for line in (Path("/proc") / str(child) / "status").read_text().splitlines()
                    if line.startswith("VmRSS:")
                )
            except (OSError, StopIteration):
                continue
            out.append((child, rss, cmd))
            todo.append(child)
    return out


def test_ui_answers_before_it_prints_its_links(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "ablate/demo")
    tracking.ensure_experiment(uri, "ablate/demo/stages")  # a sweep's stage runs: no link of its own
    port = free_port()
    proc = start_ui(tmp_path, port)
    try:
        lines = []
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("MLflow UI on"):
                # Printed only once the server answers: it must answer now, not in a minute.
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert r.status == 200
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert "mlflow" in r.read().decode(errors="replace").lower()
            if line.strip().startswith("one row per arm"):
                break
        text = "\n".join(lines)
        assert re.search(rf"sweep demo: http://127\.0\.0\.1:{port}/#/experiments/{experiment}/runs", text), (
            text
        )
        assert text.index("MLflow UI on") < text.index("sweep demo:") and "stages:" not in text, text
        # No MLflow job runner (mlflow.server.jobs: a huey consumer per job kind, ~250 MB each): the server
        # launches it right after the UI process, before the port answers, so it would be there by now.
        procs = descendants(proc.pid)
        shown = "\n".join(f"{pid} {rss // 1024} MiB {cmd[:160]}" for pid, rss, cmd in procs)
        assert not [cmd for _, _, cmd in procs if "huey" in cmd or "mlflow.server.jobs" in cmd], shown
        # `mlflow ui` and its uvicorn server (with more than one worker, uvicorn's workers below it).
        workers = tracking.default_workers()
        assert 2 <= len(procs) <= 2 + (workers if workers > 1 else 0), shown
        # A SIGTERM to `ablate ui` alone (a service manager, `kill`) stops the server too, not only Ctrl-C.
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() for pid, _, _ in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid, _, _ in procs if Path(f"/proc/{pid}").exists()], shown
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # whatever is left of its process group
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def test_ui_workers_default_to_one_per_four_cores(monkeypatch):
    from ablate.tracking import default_workers

    for cores, workers in ((1, 1), (2, 1), (8, 2), (16, 4), (64, 4)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert default_workers() == workers
