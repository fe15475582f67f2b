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


def test_ui_answers_before_it_prints_its_links(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "ablate/demo")
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
            if line.strip().startswith("sweep demo:"):
                break
        text = "\n".join(lines)
        assert re.search(rf"sweep demo: http://127\.0\.0\.1:{port}/#/experiments/{experiment}/runs", text), (
            text
        )
        assert text.index("MLflow UI on") < text.index("sweep demo:")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_workers_default_to_one_per_four_cores(monkeypatch):
    from ablate.tracking import default_workers

    for cores, workers in ((1, 1), (2, 1), (8, 2), (16, 4), (64, 4)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert default_workers() == workers
