"""A run directory describes itself: resolved config, git commit, metrics as logged, progress and state.

Layout of results/cache/<stage>/<key>/ (the names are defined here only; ``RunDir`` gives their paths):
    config.yaml          resolved config of the arm that produced it
    provenance.json      stage, key, inputs, git commit, host, ablate version
    status.json          state (running | failed | done), pid, host, error tail
    progress.json        step, tokens done/total, last loss, tokens/s (updated during training)
    metrics.jsonl        every metric row as it was logged (re-sendable to MLflow without the server)
    checkpoints/last.pt  the training state a resumed stage starts from
    units/<unit>/        a stage split into units of work (one job each): each unit's own run directory
    _COMPLETE.json       completion marker, written last (see ablate.cache)

Stage-specific outputs (model.pt, samples.png, ...) are named by their stage modules.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from ablate import __version__
from ablate.atomic import atomic_write_json, atomic_write_text, read_json

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
STATUS = "status.json"
PROGRESS = "progress.json"
METRICS = "metrics.jsonl"
MARKER = "_COMPLETE.json"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pt"
UNITS = "units"  # units/<unit>/: one unit of work of a stage split into units, itself a RunDir


def git_commit() -> str:
    """The commit of the ablate checkout (with '-dirty' if modified), or 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunDir:
    """One stage's run directory: the paths of its common files and the reads and writes of them."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, name: str) -> Path:
        """A stage-specific file in this directory (its stage module names it)."""
        return self.path / name

    # --- paths ----------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """config.yaml: the resolved config of the arm that produced this directory."""
        return self.path / CONFIG

    @property
    def provenance(self) -> Path:
        """provenance.json: stage, key, inputs, git commit, host, ablate version, MLflow run id."""
        return self.path / PROVENANCE

    @property
    def status(self) -> Path:
        """status.json: the stage's state for `ablate status`."""
        return self.path / STATUS

    @property
    def progress(self) -> Path:
        """progress.json: step, tokens, last loss, rate."""
        return self.path / PROGRESS

    @property
    def metrics(self) -> Path:
        """metrics.jsonl: every metric row as it was logged."""
        return self.path / METRICS

    @property
    def marker(self) -> Path:
        """_COMPLETE.json: present once the stage finished."""
        return self.path / MARKER

    @property
    def checkpoints(self) -> Path:
        """checkpoints/: training state for resuming."""
        return self.path / CHECKPOINTS

    def unit(self, name: str) -> RunDir:
        """The run directory of one unit of work (units/<name>/), with its own files and marker."""
        return RunDir(self.path / UNITS / name)

    @property
    def last_checkpoint(self) -> Path:
        """checkpoints/last.pt: the state a resumed stage starts from."""
        return self.checkpoints / LAST_CHECKPOINT

    # --- description ----------------------------------------------------------------------------------
    def write_description(self, config_yaml: str, info: dict[str, Any]) -> None:
        """Write config.yaml and provenance.json at the start of a stage."""
        atomic_write_text(self.config, config_yaml)
        atomic_write_json(
            self.provenance,
            {"git_commit": git_commit(), "host": socket.gethostname(), "ablate_version": __version__, **info},
        )

    def read_config(self) -> dict[str, Any]:
        """The resolved config as a dict, or {} if config.yaml is missing."""
        import yaml  # only the readers of old runs need it

        try:
            text = self.config.read_text()
        except FileNotFoundError:
            return {}
        return yaml.safe_load(text) or {}

    def read_provenance(self) -> dict[str, Any] | None:
        """The provenance record, or None if this is not (yet) a stage directory."""
        return read_json(self.provenance)

    # --- state ----------------------------------------------------------------------------------------
    def set_status(self, state: str, **extra: Any) -> None:
        """Record the stage's state for `ablate status` (no tracking server needed)."""
        atomic_write_json(
            self.status,
            {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), **extra},
        )

    def read_status(self) -> dict[str, Any]:
        """The last recorded state, or {} if the stage never started."""
        return read_json(self.status, {}) or {}

    def write_progress(self, progress: dict[str, Any]) -> None:
        """Record training progress (step, tokens, loss, rate) for status lines."""
        atomic_write_json(self.progress, {"time": time.time(), **progress})

    def read_progress(self) -> dict[str, Any]:
        """The last recorded progress, or {}."""
        return read_json(self.progress, {}) or {}

    def metrics_log(self) -> MetricsLog:
        """The directory's metrics.jsonl as a MetricsLog."""
        return MetricsLog(self.metrics)

    # --- completion -----------------------------------------------------------------------------------
    def is_complete(self) -> bool:
        """True once the stage finished and wrote its marker."""
        return self.marker.is_file()

    def mark_complete(self, info: dict[str, Any] | None = None) -> None:
        """Write the completion marker (the last step of a stage)."""
        atomic_write_text(self.marker, json.dumps({"completed_at": time.time(), **(info or {})}, indent=2))


class MetricsLog:
    """Append-only metrics.jsonl: one JSON row per logged step, truncated to the resume step on restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop rows with step > `step` (they will be recomputed identically after a resume)."""
        if not self.path.exists():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, step: int, metrics: dict[str, float]) -> None:
        """Add one row (a plain append, not an atomic rewrite: the file grows with every step)."""
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        """Every row, in the order logged."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
