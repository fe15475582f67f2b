"""Many jobs logging to a real `mlflow server` over a real PostgreSQL cluster, and outages of either.

One server for the whole file (session fixture, ~20 s to start: initdb + schema migration). Skipped, with
the reason, where PostgreSQL's binaries are missing (Debian: apt-get install postgresql) or, as root, there
is no `postgres` user to run them as.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ablate.ops import tracking_server as srv

REPO = Path(__file__).resolve().parent.parent

# A job's logging, as its own OS process: at least `steps` steps of `keys` metrics, then (if a stop file is
# given) more until the file appears, then close(FINISHED). Prints what it did as one JSON line.
WORKER = """
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from ablate.tracking import MLflowTracker

uri, run_id, steps, keys, sleep_s, stop_file = sys.argv[1:7]
steps, keys, sleep_s = int(steps), int(keys), float(sleep_s)
started = time.time()
tracker = MLflowTracker(uri, run_id, flush_interval_s=0.2, max_backoff_s=1.0)
step = 0
while step < steps or (stop_file and not Path(stop_file).exists()):
    tracker.log_metrics({f"m{k}": step + k / 10 for k in range(keys)}, step)
    step += 1
    time.sleep(sleep_s)
logged = time.time() - started
tracker.close("FINISHED")
print(json.dumps({"steps": step, "log_s": logged, "total_s": time.time() - started}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stack(tracking_server: Any) -> Any:
    """The session's PostgreSQL + mlflow server (tests/conftest.py); a test that stops either restores it."""
    return tracking_server


def _client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def _new_runs(url: str, n: int) -> list[str]:
    client = _client(url)
    experiment = client.create_experiment(f"test-{uuid.uuid4().hex[:8]}")
    return [client.create_run(experiment).info.run_id for _ in range(n)]


def _spawn(
    url: str, run_id: str, steps: int, keys: int, sleep_s: float = 0.0, stop_file: str = "", **env: str
) -> subprocess.Popen:
    cmd = [sys.executable, "-c", WORKER, url, run_id, str(steps), str(keys), str(sleep_s), stop_file]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _assert_every_step_once(url: str, run_id: str, steps: int, keys: int) -> None:
    client = _client(url)
    for k in range(keys):
        history = client.get_metric_history(run_id, f"m{k}")
        got = sorted(m.step for m in history)
        assert got == list(range(steps)), f"run {run_id} m{k}: {len(got)} rows for {steps} steps"
        assert all(m.value == m.step + k / 10 for m in history)
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_eight_processes_log_every_step_exactly_once(stack: Any) -> None:
    n, steps, keys = 8, 200, 4
    runs = _new_runs(stack.url, n)
    started = time.monotonic()
    procs = [_spawn(stack.url, run_id, steps, keys) for run_id in runs]
    results = [_finish(p, timeout=300)[0] for p in procs]
    elapsed = time.monotonic() - started
    for run_id in runs:
        _assert_every_step_once(stack.url, run_id, steps, keys)
    values = n * steps * keys
    print(
        f"\n{n} processes x {steps} steps x {keys} metrics = {values} values in {elapsed:.1f}s wall "
        f"(process start, mlflow import, logging, close); slowest close after "
        f"{max(r['total_s'] - r['log_s'] for r in results):.2f}s; {values / elapsed:.0f} values/s overall"
    )


def test_exact_resend_of_a_batch_is_idempotent(stack: Any) -> None:
    # What the tracker's retry of a batch the server applied but whose answer was lost amounts to.
    from mlflow.entities import Metric

    (run_id,) = _new_runs(stack.url, 1)
    client = _client(stack.url)
    batch = [Metric("m0", float(step), 1_700_000_000_000 + step, step) for step in range(50)]
    client.log_batch(run_id, metrics=batch)
    client.log_batch(run_id, metrics=batch)
    assert sorted(m.step for m in client.get_metric_history(run_id, "m0")) == list(range(50))


def _wait_for_steps(url: str, run_ids: list[str], at_least: int, timeout: float = 120) -> None:
    client, deadline = _client(url), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(client.get_metric_history(r, "m0")) >= at_least for r in run_ids):
            return
        time.sleep(0.5)
    raise AssertionError(f"runs {run_ids}: fewer than {at_least} steps logged after {timeout}s")


@pytest.mark.slow
def test_server_and_database_outage_loses_nothing(stack: Any, tmp_path: Path) -> None:
    # Two jobs through the same outages: one with mlflow's in-client HTTP retries as they are (they
    # absorb a short outage inside one call), one without (every failure reaches the tracker, which
    # keeps the batch and re-sends it).
    runs = _new_runs(stack.url, 2)
    stop_file = tmp_path / "stop"
    common = {"steps": 100, "keys": 2, "sleep_s": 0.02, "stop_file": str(stop_file)}
    procs = [
        _spawn(stack.url, runs[0], **common),
        _spawn(stack.url, runs[1], **common, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"),
    ]
    try:
        _wait_for_steps(stack.url, runs, 20)
        stack.server.stop()  # the mlflow server goes away mid-run; the jobs keep logging
        time.sleep(4)
        stack.server.start()  # same port
        _wait_for_steps(stack.url, runs, 150)
        srv.stop_postgres(stack.pg_dir)  # then the database (fast shutdown): the server answers 500s
        time.sleep(4)
        srv.start_postgres(stack.pg_dir, stack.pg_port)
        stop_file.touch()
        results = [_finish(p, timeout=420) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        stack.restore()
    (default, _), (no_retries, err) = results
    assert "unavailable" in err and "reachable again" in err  # the tracker itself saw the outage
    print("".join(f"\n{line}" for line in err.splitlines() if "reachable again" in line))
    print(f"jobs logged {default['steps']} and {no_retries['steps']} steps through both outages")
    _assert_every_step_once(stack.url, runs[0], default["steps"], 2)
    _assert_every_step_once(stack.url, runs[1], no_retries["steps"], 2)


def test_close_with_server_down_warns_and_resend_restores(
    stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ablate.atomic import atomic_write_json
    from ablate.resend import resend
    from ablate.rundir import MetricsLog, RunDir
    from ablate.tracking import MLflowTracker

    (run_id,) = _new_runs(stack.url, 1)
    run_dir = tmp_path / "train" / "k1"
    run_dir.mkdir(parents=True)
    atomic_write_json(
        run_dir / "provenance.json",
        {"stage": "train", "key": "k1", "mlflow_run_id": run_id, "sweep": "outage", "arms": ["a"]},
    )
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    # No in-client retries: the tracker's calls fail at once, so its thread stops when close() gives up.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    stack.server.stop()
    try:
        started = time.monotonic()
        tracker = MLflowTracker(
            stack.url, run_id, flush_interval_s=0.1, init_wait_s=1.0, close_timeout_s=2.0, run_dir=run_dir
        )
        assert time.monotonic() - started < 10  # a server down at job start does not hold the job up
        for step in range(50):
            values = {"m0": step + 0.0, "m1": step + 0.1}
            metrics_log.append(step, values)
            tracker.log_metrics(values, step)
        RunDir(run_dir).mark_complete()
        with caplog.at_level(logging.WARNING, logger="ablate.tracking.tracker"):
            tracker.close("FINISHED")
    finally:
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        stack.restore()
    warning = "\n".join(r.getMessage() for r in caplog.records if "not delivered" in r.getMessage())
    assert f"ablate resend {run_dir}" in warning and f"{run_dir}/metrics.jsonl" in warning
    assert "100 metric values" in warning

    assert resend(run_dir, stack.url) == (run_id, 50)
    # Twice adds nothing: every (key, step) the run has is skipped.
    assert resend(run_dir, stack.url) == (run_id, 0)
    _assert_every_step_once(stack.url, run_id, 50, 2)


def test_unreachable_server_is_transient_and_does_not_fail_the_job(caplog: pytest.LogCaptureFixture) -> None:
    """No PostgreSQL needed: nothing listens on the port; mlflow's own HTTP retries are left as they are."""
    from ablate.tracking import MLflowTracker

    url = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    tracker = MLflowTracker(url, uuid.uuid4().hex, init_wait_s=0.5)  # does not raise: run unknown, not wrong
    assert time.monotonic() - started < 5
    tracker.log_metrics({"m0": 1.0}, 0)
    with caplog.at_level(logging.WARNING, logger="ablate.tracking.tracker"):
        tracker.close("FINISHED", timeout=0.5)
    assert "ablate resend results/cache/<stage>/<key>" in caplog.text


def test_a_write_race_is_retried_and_other_refusals_are_not() -> None:
    """MLflow's SQL store upserts by select-then-insert: the loser of two writes of one new key gets the
    table's unique-key error, which a second send resolves; any other BAD_REQUEST stays permanent."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    from ablate.tracking.store import is_permanent, lost_write_race

    race = MlflowException(
        '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "experiment_tag_pk"',
        error_code=BAD_REQUEST,
    )
    other = MlflowException("Invalid value 'x' for parameter 'step'", error_code=BAD_REQUEST)
    assert lost_write_race(race) and not is_permanent(race)
    assert not lost_write_race(other) and is_permanent(other)


def _at_once(n: int, call: Any) -> tuple[dict[int, Any], list[str]]:
    """call(i) for i < n in n threads released together: ({i: result}, [errors])."""
    import threading

    start, results, errors = threading.Barrier(n), {}, []

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # what a job would have run untracked with
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_eight_clients_setting_one_new_experiment_tag_at_once_all_succeed(stack: Any) -> None:
    """The race itself, on the server's PostgreSQL: eight clients set one new tag at the same moment."""
    from ablate.tracking.store import set_experiment_tag

    client, key = _client(stack.url), "mlflow.sharedViewState.arms"
    for trial in range(5):
        experiment = client.create_experiment(f"tagrace-{uuid.uuid4().hex[:8]}")
        _, errors = _at_once(8, lambda i, e=experiment: set_experiment_tag(_client(stack.url), e, key, "v"))
        assert errors == [], f"trial {trial}"
        assert client.get_experiment(experiment).tags[key] == "v"


def test_eight_jobs_opening_their_arm_runs_at_once_all_get_them(stack: Any) -> None:
    """The jobs of one array start together and each makes its arm's run in the sweep's new experiment,
    setting the experiment's saved view as it does: every one gets its run, none is left untracked."""
    from ablate import tracking

    view = tracking.arms_view(["optim.lr"], ["final_loss"])
    for trial in range(3):
        sweep = f"race{trial}-{uuid.uuid4().hex[:6]}"

        def open_arm(i: int, sweep: str = sweep) -> str:
            spec = tracking.ArmRunSpec(
                experiment=tracking.sweep_experiment("ablate/", sweep),
                name=f"lr={i}",
                tags=tracking.arm_run_tags(sweep=sweep, label=f"lr={i}", arm_key=f"arm{i}", stage_keys={}),
                params={"optim.lr": str(i)},
                view=view,
            )
            return tracking.arm_run(stack.url, spec, "train", None)

        ids, errors = _at_once(8, open_arm)
        assert errors == [], f"trial {trial}"
        client = _client(stack.url)
        exp = client.get_experiment_by_name(tracking.sweep_experiment("ablate/", sweep))
        runs = client.search_runs([exp.experiment_id])
        assert sorted(r.info.run_id for r in runs) == sorted(ids.values()) and len(ids) == 8
        assert exp.tags["mlflow.sharedViewState.arms"] == view
