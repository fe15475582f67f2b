"""`ablate ui`: the MLflow UI over the tracking store, started, waited for, and linked to each sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from ablate.errors import AblateError
from ablate.tracking.store import JOB_EXECUTION_ENV
from ablate.tracking.tags import ARMS_VIEW, TAG_ARM, sweep_of_experiment

START_TIMEOUT_S = 300.0  # the UI's workers import mlflow's server: tens of seconds on 2 busy cores
POLL_S = 0.5


def default_workers() -> int:
    """One UI worker per 4 cores, at most 4 (MLflow's default) and at least 1: each is a full process."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int | None = None) -> list[str]:
    """The argv of an MLflow UI over the store (bound to localhost by default)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    return [*cmd, "--host", host, "--port", str(port), "--workers", str(workers or default_workers())]


def ui_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the UI process: `base` (default: this process's) with MLflow's job runner off
    (store.JOB_EXECUTION_ENV) unless `base` turns it on."""
    env = dict(os.environ if base is None else base)
    env.setdefault(JOB_EXECUTION_ENV, "false")
    return env


def start_ui(
    uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int | None = None
) -> subprocess.Popen:
    """The MLflow UI over the store, started (not yet answering: see wait_until_up)."""
    return subprocess.Popen(ui_command(uri, host=host, port=port, workers=workers), env=ui_env())


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


def arms_view(params: list[str], metrics: list[str]) -> str:
    """The saved view of a sweep's arms, as MLflow 3's UI reads it (the shared-view experiment tag): the
    swept params, the results and the arm's full label (the run name is short) as table columns, every
    run in the charts (not the first 10), and line charts against the `tokens` metric (arms with
    different batch sizes compare by tokens). The charts are MLflow's own, one per metric: a line chart
    for a curve, a bar per run for a metric whose latest step is 0 in every run, which is how an arm run
    holds its single values (tracking.results)."""
    columns = [f"params.`{p}`" for p in params] + [f"metrics.`{m}`" for m in metrics]
    columns.append(f"tags.`{TAG_ARM}`")
    return json.dumps(
        {
            "selectedColumns": columns,
            "runsHiddenMode": "SHOW_ALL",
            "globalLineChartConfig": {
                "xAxisKey": "metric",
                "selectedXAxisMetricKey": "tokens",
                "lineSmoothness": 0,
            },
        }
    )


def arms_link(base_url: str, experiment_id: str) -> str:
    """The UI's page of a sweep's arms, in the view arms_view saved."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?viewStateShareKey={ARMS_VIEW}"


def sweep_links(base_url: str, prefix: str, timeout_s: float = 30.0) -> list[tuple[str, str]]:
    """(sweep name, link to its arms' runs table) of every sweep experiment (`prefix` + sweep; not the
    sweeps' stage-run experiments) that the UI at base_url serves.

    Asked of the UI's own REST API, not of the store through an MLflow client: importing mlflow here
    would cost this process seconds of CPU and ~250 MB, after the server already answered."""
    sweeps: list[tuple[str, str]] = []
    token = ""
    while True:
        query = urllib.parse.urlencode({"max_results": 1000, **({"page_token": token} if token else {})})
        url = f"{base_url}/api/2.0/mlflow/experiments/search?{query}"
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            page = json.load(r)
        for e in page.get("experiments", []):
            sweep = sweep_of_experiment(prefix, e["name"])
            if sweep is not None:
                sweeps.append((sweep, arms_link(base_url, e["experiment_id"])))
        token = page.get("next_page_token", "")
        if not token:
            return sorted(sweeps)
