"""Reading for analysis: fetch_runs and fetch_histories into pandas frames (pandas imported lazily), and
download_artifact (one artifact file of a run, to a local directory)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.tracking.store import HISTORY_COLUMNS, Store, chunks, redact_uri
from ablate.tracking.tags import KIND_ARM, TAG_KIND, TAG_PARENT, TAG_STAGE, TAG_SWEEP, sweep_tag

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def fetch_runs(
    store: Store | str, sweep: str | None = None, stage: str | None = None, arms: bool = False
) -> pd.DataFrame:
    """One row per active stage run: run_id, run_name, experiment, status, times, `tags.ablate.*`, `params.*`.

    `sweep` selects the runs that sweep uses (tag ablate.sweeps.<sweep>), in whichever experiment they live:
    a stage shared by two sweeps is one run, created by the first. With `arms`, the arms' runs instead
    (of `sweep`, or of every sweep): copies of their stages' metrics, which analysis never reads twice.
    """
    import pandas as pd

    base = ["run_id", "run_name", "experiment_id", "experiment", "status", "start_time", "end_time"]
    base.append("parent_run_id")
    store = Store.open(store)
    if store.missing:  # reading must not create an empty store
        return pd.DataFrame(columns=base)
    names = {e.experiment_id: e.name for e in store.experiments()}
    tags = {k: v for k, v in ((TAG_STAGE, stage),) if v is not None}
    if arms:
        tags = {TAG_KIND: KIND_ARM, **({TAG_SWEEP: sweep} if sweep is not None else {})}
    elif sweep is not None:
        tags[sweep_tag(sweep)] = "true"
    rows = []
    for run in store.search_runs(tags, list(names)):
        if not arms and run.data.tags.get(TAG_KIND) == KIND_ARM:
            continue
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "experiment": names.get(run.info.experiment_id),
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "parent_run_id": run.data.tags.get(TAG_PARENT),
        }
        row.update({f"tags.{k}": v for k, v in run.data.tags.items() if k.startswith("ablate.")})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else base)


def fetch_histories(store: Store | str, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
    """Every logged value of the metric keys of the runs, long format: run_id, key, step, value, timestamp;
    ordered by run and key (in the order given), then step and timestamp. A NaN logged reads back as NaN.

    Speed, measured on 2 CPU cores for 200 runs x 4 keys x 2000 steps (1.6M points) in an SQLite store:
    `MlflowClient.get_metric_history` per run and key ~85 s (a Metric entity per point); one SQL query on
    MLflow's `metrics` table returning (run_uuid, key, ...) rows ~7 s, mostly spent creating two Python
    strings per row; the same query joined to temp tables that map run ids and keys to small ints ~4 s.
    So SQLite is read the last way, other SQL stores with the plain query, and anything else (an mlflow
    server over HTTP) or a schema this code does not know through the client, in parallel.
    """
    import pandas as pd

    store = Store.open(store)
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    columns: dict[str, Any] = {c: [] for c in HISTORY_COLUMNS}
    if run_ids and keys and not store.missing:
        try:
            read = _sql_histories if store.is_sql else client_histories
            columns = read(store, run_ids, keys)
        except Exception as exc:  # MLflow's schema is internal: fall back rather than fail
            if not store.is_sql:
                raise
            log.warning(
                "direct SQL read of %s failed (%s); using the MLflow client", redact_uri(store.uri), exc
            )
            columns = client_histories(store, run_ids, keys)
    return pd.DataFrame(columns).astype({"step": "int64", "value": "float64", "timestamp": "int64"})


def _columns(rows: list[tuple], run_ids: Sequence[str], keys: Sequence[str]) -> dict:
    """(run, key, step, value, timestamp, is_nan) rows -> column arrays, ordered by run and key (in the
    order given), step, timestamp. Run and key are indices into run_ids / keys, or the strings themselves."""
    import numpy as np
    import pandas as pd

    if not rows:
        return {c: [] for c in HISTORY_COLUMNS}
    if isinstance(rows[0][0], str):
        run, key, step, value, timestamp, is_nan = (np.asarray(c) for c in zip(*rows, strict=True))
        run, key = pd.Index(run_ids).get_indexer(run), pd.Index(keys).get_indexer(key)
    else:  # all numeric: one float64 array (ms timestamps and steps are exact below 2**53)
        run, key, step, value, timestamp, is_nan = np.array(rows, dtype=np.float64).T
        run, key = run.astype(np.int64), key.astype(np.int64)
    order = np.lexsort((timestamp, step, key, run))  # on ints: sorting the frame by strings costs more
    return {
        "run_id": np.asarray(run_ids, dtype=object)[run[order]],
        "key": np.asarray(keys, dtype=object)[key[order]],
        "step": step[order].astype(np.int64),
        "value": np.where(is_nan[order].astype(bool), np.nan, value[order].astype(float)),  # NaN: 0 + is_nan
        "timestamp": timestamp[order].astype(np.int64),
    }


def _sql_histories(store: Store, run_ids: list[str], keys: list[str]) -> dict:
    """Column arrays straight from MLflow's `metrics` table (SQL stores only)."""
    path = store.sqlite_path
    if path is not None:
        import sqlite3

        # Read-only; temp tables live in a separate temp database, so they are allowed.
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            conn.execute("CREATE TEMP TABLE want_runs (uuid TEXT PRIMARY KEY, i INTEGER)")
            conn.execute("CREATE TEMP TABLE want_keys (name TEXT PRIMARY KEY, j INTEGER)")
            conn.executemany("INSERT INTO want_runs VALUES (?, ?)", [(r, i) for i, r in enumerate(run_ids)])
            conn.executemany("INSERT INTO want_keys VALUES (?, ?)", [(k, j) for j, k in enumerate(keys)])
            rows = conn.execute(
                "SELECT r.i, k.j, m.step, m.value, m.timestamp, m.is_nan FROM metrics m"
                " JOIN want_keys k ON k.name = m.key JOIN want_runs r ON r.uuid = m.run_uuid"
            ).fetchall()
        return _columns(rows, run_ids, keys)
    import sqlalchemy

    engine = sqlalchemy.create_engine(store.uri)
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[engine.dialect.paramstyle]
    key_col = engine.dialect.identifier_preparer.quote("key")
    raw = engine.raw_connection()  # DB-API rows: SQLAlchemy Row objects cost ~3x more per row
    try:
        cur, rows = raw.cursor(), []
        for chunk in chunks(run_ids, 500):  # stay under the database's limit on bound variables
            cur.execute(
                f"SELECT run_uuid, {key_col}, step, value, timestamp, is_nan FROM metrics WHERE run_uuid IN"
                f" ({','.join([mark] * len(chunk))}) AND {key_col} IN ({','.join([mark] * len(keys))})",
                [*chunk, *keys],
            )
            rows.extend(cur.fetchall())
    finally:
        raw.close()
        engine.dispose()
    return _columns(rows, run_ids, keys)


def client_histories(store: Store | str, run_ids: list[str], keys: list[str]) -> dict:
    """fetch_histories' columns read through the MLflow client (a server over HTTP), one history per
    run and key, several at once."""
    from concurrent.futures import ThreadPoolExecutor

    client = Store.open(store).client

    def one(pair: tuple[str, str]) -> list[tuple]:
        run_id, key = pair
        return [(run_id, key, m.step, m.value, m.timestamp, False) for m in client.get_metric_history(*pair)]

    with ThreadPoolExecutor(max_workers=8) as pool:  # HTTP round trips dominate: overlap them
        parts = pool.map(one, [(r, k) for r in run_ids for k in keys])
        return _columns([row for part in parts for row in part], run_ids, keys)


def download_artifact(store: Store | str, run_id: str, path: str, dst_dir: str | Path) -> Path:
    """Copy the artifact file `path` (relative to the run's artifact root) of a run into `dst_dir`; its
    local path (`dst_dir/path`). Raises AblateError naming the run and what it has if the file is missing."""
    import posixpath

    from ablate.errors import AblateError

    store = Store.open(store)
    where = f"run {run_id} in {redact_uri(store.uri)}"
    if store.missing:
        raise AblateError(f"cannot download '{path}' of {where}: the store does not exist")
    client = store.client
    parent = posixpath.dirname(path.strip("/")) or None
    try:
        listed = client.list_artifacts(run_id, parent)
    except Exception as exc:  # unknown run, unreachable artifact store
        raise AblateError(f"cannot list the artifacts of {where}: {exc}") from exc
    if not any(f.path == path.strip("/") and not f.is_dir for f in listed):
        have = ", ".join(sorted(f.path + ("/" if f.is_dir else "") for f in listed)) or "none"
        raise AblateError(
            f"{where} has no artifact '{path}' (artifacts{f' under {parent}/' if parent else ''}: {have}); "
            "the stage that logs it may not have finished, or failed before logging it"
        )
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    quiet = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"  # MLflow draws a progress bar per download otherwise
    try:
        return Path(client.download_artifacts(run_id, path.strip("/"), str(dst)))
    except Exception as exc:
        raise AblateError(f"cannot download '{path}' of {where}: {exc}") from exc
    finally:
        if quiet is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = quiet


def latest_metrics(store: Store | str, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each run's status, latest value of every metric and planned tokens (run id -> {"status", "metrics",
    "total_tokens"}), in one search per 100 runs.

    For `ablate status`: a run missing from the store is absent from the result; an unreachable store
    raises (the caller falls back to the run directories' progress.json).
    """
    store = Store.open(store)
    run_ids = list(dict.fromkeys(r for r in run_ids if r))
    if not run_ids or store.missing:
        return {}
    client = store.client
    experiments = store.experiment_ids()
    out: dict[str, dict[str, Any]] = {}
    for chunk in chunks(run_ids, 100):
        quoted = ", ".join(f"'{r}'" for r in chunk)
        for run in client.search_runs(experiments, filter_string=f"attributes.run_id IN ({quoted})"):
            total = run.data.params.get("loop.total_tokens")
            out[run.info.run_id] = {
                "status": run.info.status,
                "metrics": dict(run.data.metrics),
                "total_tokens": int(total) if total else None,
            }
    return out


def logged_steps(store: Store | str, run_id: str) -> dict[str, set[int]]:
    """The steps the store holds for each metric key of a run (key -> steps), for exactly-once delivery.

    One SQL query on SQL stores (a run's rows, not a Metric entity per point); the client's per-key
    history elsewhere (an mlflow server over HTTP) or when MLflow's schema is not the one read here.
    """
    store = Store.open(store)
    out: dict[str, set[int]] = {}
    if store.missing:
        return out
    if store.is_sql:
        try:
            for key, step in _sql_steps(store, run_id):
                out.setdefault(key, set()).add(int(step))
            return out
        except Exception as exc:  # MLflow's schema is internal: fall back rather than fail
            log.warning(
                "direct SQL read of %s failed (%s); using the MLflow client", redact_uri(store.uri), exc
            )
            out.clear()
    client = store.client
    for key in client.get_run(run_id).data.metrics:
        out[key] = {int(m.step) for m in client.get_metric_history(run_id, key)}
    return out


def _sql_steps(store: Store, run_id: str) -> list[tuple[str, int]]:
    path = store.sqlite_path
    if path is not None:
        import sqlite3

        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute("SELECT key, step FROM metrics WHERE run_uuid = ?", (run_id,)).fetchall()
    import sqlalchemy

    engine = sqlalchemy.create_engine(store.uri)
    try:
        key_col = engine.dialect.identifier_preparer.quote("key")  # a reserved word in MySQL
        with engine.connect() as conn:
            query = sqlalchemy.text(f"SELECT {key_col}, step FROM metrics WHERE run_uuid = :r")
            return [(k, int(s)) for k, s in conn.execute(query, {"r": run_id})]
    finally:
        engine.dispose()
