"""The tracking store: constants, URIs, the MLflow client, and the param, tag and search helpers.

Every other module of ablate.tracking builds on these; mlflow is imported inside the functions only.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ablate.errors import AblateError

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# MLflow 3's server starts a job runner beside itself (mlflow.server.jobs: a huey consumer per job kind and
# one for periodic tasks, each a process importing all of mlflow, ~250 MB) unless this is false. Its jobs
# are GenAI features (scorers, prompt optimisation, issue detection, trace roll-ups) ablate never uses; the
# servers ablate starts turn it off unless the environment says otherwise.
JOB_EXECUTION_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
RUN_STATUSES = ("SCHEDULED", "RUNNING", *TERMINAL_STATUSES)
# MLflow's limits (mlflow.utils.validation): 6000 chars per param value, 100 params or tags and 1000
# metrics per log_batch call.
MAX_PARAM_VALUE_LEN, MAX_PARAMS_PER_BATCH, MAX_METRICS_PER_BATCH = 6000, 100, 1000
TRUNCATION_MARK = "...[truncated]"
HISTORY_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]
# Errors that retrying cannot fix (bad run id, deleted run, invalid value): the batch is dropped, not retried.
_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE"}
_PERMANENT_CODES |= {"PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_ALREADY_EXISTS"}
# ...except a write that lost a race: MLflow's SQL store upserts a tag or param by select-then-insert, so two
# processes setting one new key at once make one of them fail on the table's unique key (reported as
# BAD_REQUEST by a server). Sent again, it finds the row and updates it: these are retried, not dropped.
_LOST_RACE_MARKS = (
    "violates unique constraint",  # PostgreSQL
    "UNIQUE constraint failed",  # SQLite
    "Duplicate entry",  # MySQL
)
_RACE_ATTEMPTS = 5


def all_experiment_ids(client: Any) -> list[str]:
    """Ids of every active experiment in the store (all pages)."""
    ids: list[str] = []
    token: str | None = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def default_tracking_uri(results_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set, else an SQLite store `<results_dir>/mlflow.db` (absolute path)."""
    env = os.environ.get(TRACKING_URI_ENV)
    if env:
        return env
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ***, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an `sqlite:///...` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    db = make_url(uri).database
    return Path(db) if db and db != ":memory:" else None


def describe_store(uri: str) -> str:
    """'tracking store <uri>' (password hidden) for messages, noting an SQLite file that does not exist."""
    missing = " (the file does not exist)" if _store_missing(uri) else ""
    return f"tracking store {redact_uri(uri)}{missing}"


def _store_missing(uri: str) -> bool:
    """True for an SQLite URI whose file does not exist (opening it would create an empty store)."""
    path = _sqlite_path(uri)
    return path is not None and not path.exists()


_OPENED: set[str] = set()  # SQLite URIs this process has opened under the creation lock


def _client(uri: str, create: bool = False) -> Any:
    """An MlflowClient; `create` makes the SQLite file's directory (mlflow creates the file and tables).

    MLflow builds a new SQLite store by running its migrations on first use; two processes doing that at
    once collide ("duplicate column name"), so the first use in a process happens under a flock on
    `<db>.lock` beside the file: one builds the store, the others wait and find it built.
    """
    from mlflow.tracking import MlflowClient

    path = _sqlite_path(uri)
    if not (create and path is not None and uri not in _OPENED):
        return MlflowClient(tracking_uri=uri)
    from ablate.filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock"), what="creating the MLflow store") as lock:
        lock.acquire(wait=True, poll_s=0.2)
        client = MlflowClient(tracking_uri=uri)  # builds or migrates the store, while we hold the lock
    _OPENED.add(uri)
    return client


def lost_write_race(exc: BaseException) -> bool:
    """Whether exc is another process's write of the same new row winning (see _LOST_RACE_MARKS)."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and any(m in str(exc) for m in _LOST_RACE_MARKS)


def _is_permanent(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return (
        isinstance(exc, MlflowException) and exc.error_code in _PERMANENT_CODES and not lost_write_race(exc)
    )


def _retry_race(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs), sent again (after a short random pause) while it loses a write race to another process."""
    for attempt in range(1, _RACE_ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not lost_write_race(exc):
                raise
        time.sleep(random.uniform(0.05, 0.3) * attempt)
    return call(*args, **kwargs)  # the last attempt: whatever it raises is the caller's


def set_experiment_tag(client: Any, experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag, safe against other jobs setting it at the same moment."""
    _retry_race(client.set_experiment_tag, experiment_id, key, value)


def _param_value(value: Any) -> str:
    """A param value as MLflow stores it: str, cut to MLflow's limit (deterministically, so a resume matches)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_PARAM_VALUE_LEN:
        text = text[: MAX_PARAM_VALUE_LEN - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def _new_params(params: Mapping[str, Any], existing: Mapping[str, str], run_id: str) -> dict[str, str]:
    """The params not yet on the run. A changed value cannot be re-logged (MLflow forbids it): warn, skip."""
    new: dict[str, str] = {}
    for key, value in params.items():
        text = _param_value(value)
        if key not in existing:
            new[key] = text
        elif existing[key] != text:
            log.warning("run %s: param %r is %r already; not set to %r", run_id, key, existing[key], text)
    return new


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _log_params(client: Any, run_id: str, params: Mapping[str, Any], existing: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    new = [Param(k, v) for k, v in _new_params(params, existing, run_id).items()]
    for chunk in _chunks(new, MAX_PARAMS_PER_BATCH):
        _retry_race(client.log_batch, run_id, params=list(chunk))


def _set_tags(client: Any, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
        _retry_race(client.log_batch, run_id, tags=list(chunk))


def _filter_string(tags: Mapping[str, str]) -> str:
    """An MLflow search filter matching all the given tags exactly."""
    clauses = []
    for key, value in tags.items():
        if "'" in value and '"' in value:
            raise AblateError(f"tag {key}={value!r}: cannot hold both ' and \" (MLflow filter syntax)")
        quoted = f'"{value}"' if "'" in value else f"'{value}'"
        clauses.append(f"tags.`{key}` = {quoted}")
    return " and ".join(clauses)


def _search_runs(client: Any, experiment_ids: list[str], tags: Mapping[str, str]) -> list[Any]:
    """All active runs of the experiments carrying the tags, oldest first (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=_filter_string(tags),
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
