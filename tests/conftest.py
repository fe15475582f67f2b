"""Shared fixtures."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ablate import tracking
from ablate.ops import tracking_server as srv


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module of tiny-matrix tests (`pytestmark =
    pytest.mark.usefixtures("one_torch_thread")`): ~10x faster than two threads contending on a busy
    2-core machine; the setting is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def new_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Make directories holding a fresh, empty MLflow SQLite store, `mlflow.db`.

    MLflow builds a new store by running all its migrations (3-10 s here), so one empty store is built per
    session and copied.
    """
    template = tmp_path_factory.getbasetemp() / "mlflow-template.db"

    def make(name: str) -> Path:
        if not template.exists():
            tracking.ensure_experiment(f"sqlite:///{template}", "Default")  # exists in every new store
        root = tmp_path_factory.mktemp(name)
        with sqlite3.connect(template) as src, sqlite3.connect(root / "mlflow.db") as dst:
            src.backup(dst)
        return root

    return make


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Any]:
    """A real single-node SLURM cluster on 127.0.0.1 (ablate.ops.local_slurm), its ClusterInfo.

    Skips, printing why, where one cannot be started (not root, packages missing and no apt-get, a daemon
    fails). Deliberately left running after the session: the next run reuses it in well under a second
    instead of starting it again (~5 s, ~30 s more the first time for apt-get); stop it with
    `python -m ablate.ops.local_slurm down`.
    """
    from ablate.errors import LaunchError
    from ablate.ops import local_slurm

    reason = local_slurm.unavailable_reason()
    if reason is None:
        try:
            info = local_slurm.up()
        except LaunchError as e:
            reason = f"local slurm cluster failed to start: {e}"
    if reason is not None:
        print(f"\nslurm_cluster: skipping: {reason}")
        pytest.skip(reason)
    yield info  # not taken down: see the docstring


@dataclass
class TrackingServer:
    """The running PostgreSQL cluster and mlflow server the tests share."""

    pg_dir: Path
    pg_port: int
    backend_uri: str
    server: srv.ServerProcess

    @property
    def url(self) -> str:
        return self.server.url

    def restore(self) -> None:
        """Bring back whatever a test stopped."""
        srv.start_postgres(self.pg_dir, self.pg_port)
        if not srv.health(self.url):
            self.server.start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_reason() -> str | None:
    if srv.pg_bindir() is None:
        return "PostgreSQL binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


@pytest.fixture(scope="session")
def tracking_server() -> Iterator[TrackingServer]:
    """A real PostgreSQL cluster and `mlflow server` on free loopback ports (ablate.ops.tracking_server), for the
    whole session; skipped, printing why, where PostgreSQL cannot run here."""
    reason = _skip_reason()
    if reason:
        print(f"skipping tracking-server tests: {reason}")
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="ablate-tracking-server-"))
    base.chmod(0o755)  # the postgres user must reach the data directory inside (mkdtemp makes it 0700)
    pg_dir, pg_port = base / "postgres", _free_port()
    server = None
    try:
        backend = srv.start_postgres(pg_dir, pg_port)
        server = srv.start_server(backend, base / "artifacts", _free_port(), log_file=base / "mlflow.log")
        yield TrackingServer(pg_dir, pg_port, backend, server)
    finally:
        if server is not None:
            server.stop()
        srv.stop_postgres(pg_dir)
        shutil.rmtree(base, ignore_errors=True)
