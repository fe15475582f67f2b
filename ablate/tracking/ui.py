"""`ablate ui`: the MLflow UI over the tracking store, started, waited for, and linked to each sweep."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

from ablate.errors import AblateError

START_TIMEOUT_S = 300.0  # the UI's workers import mlflow's server: tens of seconds on 2 busy cores
POLL_S = 0.5


def default_workers() -> int:
    """One UI worker per 4 cores, at most 4 (MLflow's default) and at least 1: each is a full process."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int | None = None) -> list[str]:
    """The argv of an MLflow UI over the store (bound to localhost by default)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    return [*cmd, "--host", host, "--port", str(port), "--workers", str(workers or default_workers())]


def wait_until_up(
    url: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S, echo: Callable[[str], None] = print
) -> None:
    """Return once `url` answers; AblateError if the server exits or stays silent past timeout_s."""
    start = time.monotonic()
    said = start
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise AblateError(f"the MLflow UI exited with code {proc.returncode} before it answered at {url}")
        now = time.monotonic()
        if now - start > timeout_s:
            raise AblateError(f"the MLflow UI did not answer at {url} within {timeout_s:.0f} s")
        if now - said >= 10:
            echo(f"waiting for the MLflow UI to start ({now - start:.0f} s) ...")
            said = now
        time.sleep(POLL_S)


def sweep_links(uri: str, base_url: str, prefix: str) -> list[tuple[str, str]]:
    """(sweep name, link to its runs table) of every experiment named `prefix` + sweep in the store."""
    from ablate.tracking.store import _client, _store_missing

    if _store_missing(uri):
        return []
    experiments = _client(uri).search_experiments()
    return sorted(
        (e.name[len(prefix) :], f"{base_url}/#/experiments/{e.experiment_id}/runs")
        for e in experiments
        if e.name.startswith(prefix)
    )
