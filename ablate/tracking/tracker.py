"""Trackers: the Tracker protocol the trainer logs through, NullTracker, and MLflowTracker."""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from ablate.errors import AblateError
from ablate.rundir import METRICS, RunDir
from ablate.tracking.items import Artifact, Item, MetricBatch, Op, Params, Row, Status, Tags
from ablate.tracking.read import logged_steps
from ablate.tracking.results import arm_rows
from ablate.tracking.store import (
    MAX_METRICS_PER_BATCH,
    TERMINAL_STATUSES,
    Store,
    chunks,
    is_permanent,
    new_params,
    redact_uri,
)
from ablate.tracking.tags import KIND_ARM, TAG_KIND

log = logging.getLogger(__name__)

# How long close() waits for a store that does not answer. Minutes, not seconds: a tracking server restart
# (or PostgreSQL failover) takes that long, and an undelivered run needs a manual `ablate resend`.
DEFAULT_CLOSE_TIMEOUT_S = 300.0


class Tracker(Protocol):
    """What the trainer logs through; MLflowTracker in jobs, NullTracker in unit tests and dry runs."""

    run_id: str | None

    def log_params(self, params: dict) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """A tracker that sends nothing and keeps everything it was given, for tests to inspect."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        self.params: list[dict] = []
        self.tags: list[dict] = []
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[str, str | None]] = []
        self.status: str | None = None

    def log_params(self, params: dict) -> None:
        self.params.append(dict(params))

    def set_tags(self, tags: dict) -> None:
        self.tags.append(dict(tags))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((int(step), {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((str(path), artifact_path))

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, status: str = "FINISHED") -> None:
        self.status = status


# What a dropped batch is called in the warning.
_OP_NAMES: dict[type, str] = {
    MetricBatch: "metrics",
    Params: "params",
    Tags: "tags",
    Artifact: "artifact",
    Status: "status",
}


class MLflowTracker:
    """Logs to an existing MLflow run from a background thread; the caller never waits on the store.

    Items are queued and sent in order by one daemon thread, metrics in `log_batch` calls of <= 1000.
    Before sending anything the thread reads the run: every (key, step) it holds and the params already
    logged. Each (key, step) is delivered once: one the store or this tracker already has is dropped (a
    resumed run re-executes the steps after its last checkpoint), so the first value logged for a step is
    the one kept, as metrics.jsonl keeps it. With `run_dir`, the rows of its metrics.jsonl that the store
    lacks (logged before a crash, never delivered) are sent first, so a resumed job or `ablate resend`
    leaves the run equal to metrics.jsonl whenever the process died; and every artifact logged is recorded
    in the directory (RunDir.artifacts) for `ablate resend` to log again.
    An arm's run (tag ablate.kind = arm) holds each row as tracking.results.arm_rows shows it: results
    rounded, single values at step 0; "each (key, step)" above means as shown there.
    A failed send (store down, SQLite locked) is retried with exponential backoff; a permanent error
    (deleted run, invalid value) drops that batch with a warning. Nothing raises into the caller but the
    constructor when the run does not exist, and log_metrics given a value float() cannot convert.

    Outages (docs/TRACKING_SERVER.md): while the store or tracking server is down, training goes on and
    everything is kept in memory, in order, and delivered when it answers again. Re-sending a batch the
    store already applied adds nothing (MLflow keys metric rows by key, timestamp, step and value, and the
    timestamp is fixed when the value is logged). close() waits up to `close_timeout_s`; what it still
    cannot deliver is named in a warning with the command that re-sends it from `run_dir`'s metrics.jsonl.
    """

    def __init__(
        self,
        store: Store | str,
        run_id: str,
        flush_interval_s: float = 2.0,
        *,
        init_wait_s: float = 5.0,
        max_backoff_s: float = 60.0,
        mark_running: bool = True,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        run_dir: str | Path | None = None,
    ) -> None:
        """Start the sending thread; waits up to `init_wait_s` to read the run (a store that does not
        answer by then is retried in the background). `close_timeout_s` is close()'s default wait;
        `run_dir` is the stage directory whose metrics.jsonl is sent where the store lacks it, and whose
        artifacts record log_artifact keeps."""
        self.store = Store.open(store)
        self.uri, self.run_id, self.flush_interval_s = self.store.uri, run_id, flush_interval_s
        self.max_backoff_s, self.mark_running = max_backoff_s, mark_running
        self.close_timeout_s, self.run_dir = close_timeout_s, (Path(run_dir) if run_dir else None)
        self.dropped_steps = 0  # metric values dropped: the store or this tracker had their (key, step)
        self.backfilled_rows = 0  # metrics.jsonl rows with a value the store lacked, sent at start
        self._cond = threading.Condition()
        self._incoming: deque[Item] = deque()  # what callers queued; guarded by _cond
        self._pending: deque[Op] = deque()  # ops built from it, not yet delivered; guarded by _cond
        self._kick = self._stop = self._closed = self._dead = False
        self._client: Any = None  # the store's client, once the run was read
        self._logged: dict[str, set[int]] = {}  # (key, step) delivered or queued; read from the store first
        self._params: dict[str, str] = {}
        self._arm = False  # an arm's run: rows go through arm_rows; known once the run is read
        self._failing_since: float | None = None
        self._last_error: BaseException | None = None
        self._ready = threading.Event()
        self._init_error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-tracker-{run_id[:8]}", daemon=True)
        self._thread.start()
        # Wait briefly so that a wrong run id fails here, loudly; an unreachable store does not hold us up.
        self._ready.wait(init_wait_s)
        if self._init_error is not None:
            raise AblateError(
                f"cannot log to MLflow run {run_id} in {redact_uri(self.uri)}: {self._init_error}. "
                "The launcher creates the run; relaunch the sweep, or check MLFLOW_TRACKING_URI."
            )
        atexit.register(self._at_exit)

    # -- caller side: only queue work, never touch the store
    def _put(self, item: Item) -> None:
        with self._cond:
            if self._closed or self._dead:
                return
            self._incoming.append(item)

    def log_params(self, params: dict) -> None:
        self._put(Params(dict(params)))

    def set_tags(self, tags: dict) -> None:
        self._put(Tags({k: str(v) for k, v in tags.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._put(Row(int(step), values, int(time.time() * 1000)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_dir is not None:  # recorded before it is queued: `ablate resend` logs it again
            RunDir(self.run_dir).record_artifact(path, artifact_path)
        self._put(Artifact(str(Path(path).resolve()), artifact_path))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered (or dropped); False if `timeout` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._kick = True
            self._cond.notify_all()
            while (self._incoming or self._pending) and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return not (self._incoming or self._pending)

    def close(self, status: str | None = "FINISHED", timeout: float | None = None) -> None:
        """Flush, then set the run's status (None: leave it); later calls do nothing.

        Waits up to `timeout` s (default: the tracker's close_timeout_s; math.inf: until delivered). What
        is still queued then is given up on with a warning naming metrics.jsonl and `ablate resend`.
        """
        if status is not None and status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, got {status!r}")
        with self._cond:
            if self._closed or self._dead:
                self._closed = True
                return
            if status is not None:
                self._incoming.append(Status(status))
            self._closed = True
        timeout = self.close_timeout_s if timeout is None else timeout
        delivered = self.flush(None if math.isinf(timeout) else timeout)
        with self._cond:
            self._stop = True  # the thread sends nothing more, whatever it still holds
            self._cond.notify_all()
        if not delivered:
            self._warn_undelivered(f"within {timeout:g}s")
        atexit.unregister(self._at_exit)

    def _warn_undelivered(self, when: str) -> None:
        """Say what is being given up on, that metrics.jsonl still has it, and how to re-send it."""
        with self._cond:
            items = list(self._incoming) + list(self._pending)
        values = sum(len(i.values) for i in items if isinstance(i, Row))
        values += sum(len(i.metrics) for i in items if isinstance(i, MetricBatch))
        artifacts = [i.path for i in items if isinstance(i, Artifact)]
        run_dir = RunDir(self.run_dir or "results/cache/<stage>/<key>")
        log.warning(
            "MLflow run %s: %d queued items (%d metric values%s) not delivered to %s %s (last error: %s). "
            "They are not lost: %s holds every logged step. Once the store answers, re-send "
            "them with `ablate resend %s --tracking-uri %s` (steps already in the run are skipped; the "
            "artifacts recorded in %s are logged again).",
            self.run_id, len(items), values, f", {len(artifacts)} artifacts" if artifacts else "",
            redact_uri(self.uri), when, self._last_error or "none yet, the client is still retrying its call",
            run_dir.metrics, run_dir.path, redact_uri(self.uri), run_dir.artifacts.name,
        )  # fmt: skip

    def _at_exit(self) -> None:
        # A job that forgets close() still delivers its last metrics (daemon threads die at exit).
        if not self.flush(timeout=10.0):
            self._warn_undelivered("by interpreter exit (close() was not called)")

    # -- background thread
    def _loop(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                # Checked before every attempt, not only after one: once close() gave up (and told the user
                # to `ablate resend` from metrics.jsonl), a late delivery would put every step in twice.
                if self._stop or self._dead:
                    self._cond.notify_all()
                    return
            try:
                ok = self._work()
            except Exception:  # a bug here must not kill the thread silently and lose everything queued
                log.exception("MLflow run %s: tracker thread error; retrying", self.run_id)
                ok = False
            backoff = 0.0 if ok else min(max(2 * backoff, 0.5), self.max_backoff_s)
            with self._cond:
                if self._stop or self._dead:
                    self._cond.notify_all()
                    return
                if not self._kick:
                    self._cond.wait(backoff or self.flush_interval_s)
                self._kick = False

    def _init(self) -> None:
        if self.store.missing:  # opening it would create an empty store: wait for the real one
            raise FileNotFoundError(f"SQLite store {self.store.sqlite_path} does not exist")
        client = self.store.client
        run = client.get_run(self.run_id)  # first: a wrong run id fails here, before the reads below
        logged = logged_steps(self.store, self.run_id)
        self._params = dict(run.data.params)
        self._arm = run.data.tags.get(TAG_KIND) == KIND_ARM
        if self.mark_running and run.info.status != "RUNNING":
            client.update_run(self.run_id, status="RUNNING")
        self._logged = logged  # only this thread reads or changes it
        backlog = self._backlog(logged)
        with self._cond:  # ahead of what the caller queued meanwhile: the file's value of a step is kept
            self._incoming.extendleft(reversed(backlog))
        self._client = client

    def _backlog(self, logged: dict[str, set[int]]) -> list[Item]:
        """Queue items for the rows of run_dir's metrics.jsonl holding a (key, step) the store lacks."""
        if self.run_dir is None:
            return []
        ts = int(time.time() * 1000)
        items: list[Item] = []
        for row in RunDir(self.run_dir).metrics_log().rows():
            step = int(row.pop("step"))
            values = {k: float(v) for k, v in row.items()}
            if any(s not in logged.get(k, ()) for s, shown in self._shown(step, values) for k in shown):
                items.append(Row(step, values, ts))  # as logged: _to_ops shows it
        self.backfilled_rows = len(items)
        if items:
            log.warning(
                "MLflow run %s: %d rows of %s were never delivered (a crash or an outage); sending them",
                self.run_id, len(items), RunDir(self.run_dir).metrics,
            )  # fmt: skip
        return items

    def _work(self) -> bool:
        """Deliver what is queued; False on a transient failure (the caller backs off and retries)."""
        if self._client is None:
            try:
                self._init()
            except Exception as exc:
                if is_permanent(exc):
                    self._init_error = exc
                    log.error("MLflow run %s unusable: %s; nothing will be logged", self.run_id, exc)
                    with self._cond:
                        self._dead = True
                        self._incoming.clear()
                    self._ready.set()
                    return True
                return self._failed(exc)
            self._ready.set()
        with self._cond:  # under the lock so that flush() never sees the items in neither queue
            items = list(self._incoming)
            self._incoming.clear()
            self._pending.extend(self._to_ops(items))
        while True:
            with self._cond:
                if self._stop:  # close() gave up on what is left: resend delivers it from metrics.jsonl
                    return True
                if not self._pending:
                    self._cond.notify_all()
                    break
                op = self._pending[0]
            try:
                self._send(op)
            except Exception as exc:
                if not is_permanent(exc):
                    return self._failed(exc)
                log.warning(
                    "MLflow run %s: dropped a %s batch the store rejected: %s (%s keeps metrics; "
                    "`ablate resend <run_dir>` re-sends them, to a new run if this one is gone)",
                    self.run_id, _OP_NAMES[type(op)], exc, METRICS,
                )  # fmt: skip
            with self._cond:
                self._pending.popleft()
                self._cond.notify_all()
        if self._failing_since is not None:
            log.warning(
                "MLflow store %s reachable again after %.0fs; queued items delivered",
                redact_uri(self.uri), time.monotonic() - self._failing_since,
            )  # fmt: skip
            self._failing_since = None
        return True

    def _failed(self, exc: BaseException) -> bool:
        """Note a transient failure (store or server down, SQLite locked); the loop backs off and retries."""
        self._last_error = exc
        if self._failing_since is None:  # warn once per outage, not once per retry
            self._failing_since = time.monotonic()
            log.warning(
                "MLflow store %s unavailable (%s); training goes on, items are queued in memory and retried",
                redact_uri(self.uri), exc,
            )  # fmt: skip
        return False

    def _shown(self, step: int, values: dict[str, float]) -> list[tuple[int, dict[str, float]]]:
        """The (step, values) rows the run holds of one logged row: itself, or on an arm run arm_rows'."""
        return arm_rows(step, values) if self._arm else [(step, values)]

    def _to_ops(self, items: list[Item]) -> list[Op]:
        """Queued items -> send operations: de-duplicated metric steps, batched within MLflow's limits."""
        from mlflow.entities import Metric

        ops: list[Op] = []
        metrics: list[Any] = []
        for item in items:
            if isinstance(item, Row):
                for step, values in self._shown(item.step, item.values):
                    for key, value in values.items():
                        steps = self._logged.setdefault(key, set())
                        if step in steps:
                            self.dropped_steps += 1
                            continue
                        steps.add(step)
                        metrics.append(Metric(key, value, item.timestamp_ms, step))
                continue
            if metrics:
                ops.extend(MetricBatch(list(c)) for c in chunks(metrics, MAX_METRICS_PER_BATCH))
                metrics = []
            if isinstance(item, Params):
                new = new_params(item.values, self._params, self.run_id)
                self._params.update(new)  # later log_params calls compare against what is queued
                ops.append(Params(new))
            else:
                ops.append(item)
        ops.extend(MetricBatch(list(c)) for c in chunks(metrics, MAX_METRICS_PER_BATCH))
        return ops

    def _send(self, op: Op) -> None:
        client = self._client
        if isinstance(op, MetricBatch):
            client.log_batch(self.run_id, metrics=op.metrics)
        elif isinstance(op, Params):
            self.store.log_params(self.run_id, op.values, {})
        elif isinstance(op, Tags):
            self.store.set_tags(self.run_id, op.values)
        elif isinstance(op, Artifact):
            if not Path(op.path).exists():
                log.warning("MLflow run %s: artifact %s no longer exists; not logged", self.run_id, op.path)
                return
            client.log_artifact(self.run_id, op.path, op.artifact_path)
        elif isinstance(op, Status):
            client.set_terminated(self.run_id, status=op.status)
