"""Shared fixtures."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ablate import tracking


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
    """A real single-node SLURM cluster on 127.0.0.1 (ablate.launch.local_slurm), its ClusterInfo.

    Skips, printing why, where one cannot be started (not root, packages missing and no apt-get, a daemon
    fails). Deliberately left running after the session: the next run reuses it in well under a second
    instead of starting it again (~5 s, ~30 s more the first time for apt-get); stop it with
    `python -m ablate.launch.local_slurm down`.
    """
    from ablate.errors import LaunchError
    from ablate.launch import local_slurm

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
