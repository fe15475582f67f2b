"""The tracking store: a `Store` per URI (its MLflow client, SQLite file and creation lock, opened once per
process), its param, tag and search methods, and the constants and URI helpers around it.

Every other module of ablate.tracking builds on a Store; mlflow is imported inside the methods only.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from ablate.errors import AblateError
from ablate.filelock import FileLock

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
# Stores whose metrics table read.py queries directly (the URI's scheme, before any "+driver").
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
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
# search_runs takes a bounded list of experiments.
_EXPERIMENTS_PER_SEARCH = 100


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


def describe_store(uri: str) -> str:
    """'tracking store <uri>' (password hidden) for messages, noting an SQLite file that does not exist."""
    return Store.open(uri).describe()


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """items in consecutive slices of at most `size`."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def lost_write_race(exc: BaseException) -> bool:
    """Whether exc is another process's write of the same new row winning (see _LOST_RACE_MARKS)."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and any(m in str(exc) for m in _LOST_RACE_MARKS)


def is_permanent(exc: BaseException) -> bool:
    """Whether sending again cannot help (a bad run id, a deleted run, an invalid value): not a lost race."""
    from mlflow.exceptions import MlflowException

    return (
        isinstance(exc, MlflowException) and exc.error_code in _PERMANENT_CODES and not lost_write_race(exc)
    )


def retry_race(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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
    """Set an experiment tag through `client`, safe against other jobs setting it at the same moment."""
    retry_race(client.set_experiment_tag, experiment_id, key, value)


def param_value(value: Any) -> str:
    """A param value as MLflow stores it: str, cut to MLflow's limit (deterministically, so a resume matches)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_PARAM_VALUE_LEN:
        text = text[: MAX_PARAM_VALUE_LEN - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def new_params(params: Mapping[str, Any], existing: Mapping[str, str], run_id: str) -> dict[str, str]:
    """The params not yet on the run. A changed value cannot be re-logged (MLflow forbids it): warn, skip."""
    new: dict[str, str] = {}
    for key, value in params.items():
        text = param_value(value)
        if key not in existing:
            new[key] = text
        elif existing[key] != text:
            log.warning("run %s: param %r is %r already; not set to %r", run_id, key, existing[key], text)
    return new


def _filter_string(tags: Mapping[str, str]) -> str:
    """An MLflow search filter matching all the given tags exactly."""
    clauses = []
    for key, value in tags.items():
        if "'" in value and '"' in value:
            raise AblateError(f"tag {key}={value!r}: cannot hold both ' and \" (MLflow filter syntax)")
        quoted = f'"{value}"' if "'" in value else f"'{value}'"
        clauses.append(f"tags.`{key}` = {quoted}")
    return " and ".join(clauses)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of an `sqlite:///...` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    db = make_url(uri).database
    return Path(db) if db and db != ":memory:" else None


class Store:
    """One tracking store: its URI, its SQLite file (None for other stores) and its MLflow client.

    Opened once per process per URI (`Store.open`); opening costs nothing (no mlflow import): the client is
    made on first use. MLflow builds a new SQLite store by running its migrations on first use; two
    processes doing that at once collide ("duplicate column name"), so `writer` first builds it under a
    flock on `<db>.lock` beside the file: one process builds the store, the others wait and find it built.
    """

    _opened: ClassVar[dict[str, Store]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: Any = None
        self._built = False  # this process built (or found) the SQLite store under the creation lock
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store: Store | str) -> Store:
        """This process's Store for a URI (a Store is returned as it is)."""
        if isinstance(store, Store):
            return store
        with cls._registry_lock:
            if store not in cls._opened:
                cls._opened[store] = cls(store)
            return cls._opened[store]

    @classmethod
    def for_results(cls, results_dir: Path, uri: str | None = None) -> Store:
        """The store at `uri`, else default_tracking_uri(results_dir)."""
        return cls.open(uri or default_tracking_uri(results_dir))

    @cached_property
    def sqlite_path(self) -> Path | None:
        """The database file of an `sqlite:///...` store (None for other stores and in-memory SQLite)."""
        return _sqlite_file(self.uri)  # on first use: parsing the URI imports sqlalchemy

    def __repr__(self) -> str:
        return f"Store({redact_uri(self.uri)!r})"

    @property
    def missing(self) -> bool:
        """True for an SQLite store whose file does not exist (opening it would create an empty store)."""
        return self.sqlite_path is not None and not self.sqlite_path.exists()

    @property
    def is_sql(self) -> bool:
        """Whether MLflow's tables can be read directly (an SQL database, not a server over HTTP)."""
        return self.uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES

    def describe(self) -> str:
        """'tracking store <uri>' (password hidden) for messages, noting an SQLite file that does not exist."""
        return f"tracking store {redact_uri(self.uri)}{' (the file does not exist)' if self.missing else ''}"

    @property
    def client(self) -> Any:
        """The MLflow client, for reading or writing a store that exists."""
        with self._lock:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self.uri)
            return self._client

    @property
    def writer(self) -> Any:
        """The MLflow client, an SQLite store (and its directory) built first if it is new."""
        if self.sqlite_path is None or self._built:
            return self.client
        from mlflow.tracking import MlflowClient

        self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        with self.sqlite_lock(".lock", "creating the MLflow store"), self._lock:
            self._client = MlflowClient(tracking_uri=self.uri)  # builds or migrates the store, lock held
            self._built = True
        return self._client

    @contextmanager
    def sqlite_lock(self, suffix: str, what: str) -> Iterator[None]:
        """One process at a time in the block: a flock on `<db><suffix>` beside an SQLite file; other
        stores (a server serialises their writes) take none."""
        if self.sqlite_path is None:
            yield
            return
        with FileLock(self.sqlite_path.with_name(self.sqlite_path.name + suffix), what=what) as lock:
            lock.acquire(wait=True, poll_s=0.2 if suffix == ".lock" else 0.1)
            yield

    def experiment_ids(self) -> list[str]:
        """Ids of every active experiment in the store (all pages)."""
        return [e.experiment_id for e in self.experiments()]

    def experiments(self) -> list[Any]:
        """Every active experiment in the store (all pages)."""
        found: list[Any] = []
        token: str | None = None
        while True:
            page = self.client.search_experiments(max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def search_runs(self, tags: Mapping[str, str], experiment_ids: Sequence[str] | None = None) -> list[Any]:
        """All active runs carrying the tags, oldest first within each page of experiments (all pages), in
        `experiment_ids` (default: every experiment)."""
        ids = list(self.experiment_ids() if experiment_ids is None else experiment_ids)
        runs: list[Any] = []
        for chunk in chunks(ids, _EXPERIMENTS_PER_SEARCH):
            token = None
            while True:
                page = self.client.search_runs(
                    list(chunk),
                    filter_string=_filter_string(tags),
                    max_results=1000,
                    order_by=["attributes.start_time ASC"],
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    break
        return runs

    def log_params(self, run_id: str, params: Mapping[str, Any], existing: Mapping[str, str]) -> None:
        """Log the params not in `existing` (the run's), in batches within MLflow's limit."""
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in new_params(params, existing, run_id).items()]
        for chunk in chunks(new, MAX_PARAMS_PER_BATCH):
            retry_race(self.client.log_batch, run_id, params=list(chunk))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as str), in batches within MLflow's limit."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in chunks(items, MAX_PARAMS_PER_BATCH):
            retry_race(self.client.log_batch, run_id, tags=list(chunk))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set an experiment tag, safe against other jobs setting it at the same moment."""
        set_experiment_tag(self.client, experiment_id, key, value)
