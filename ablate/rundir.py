"""A run directory describes itself: resolved config, git commit, metrics as logged, progress and state.

Layout of results/cache/<stage>/<key>/ (the names are defined here only; ``RunDir`` gives their paths):
    config.yaml          resolved config of the arm that produced it
    provenance.json      stage, key, inputs, git commit, host, ablate version
    status.json          state (running | failed | done), pid, host, error tail
    progress.json        step, tokens done/total, last loss, tokens/s (updated during training)
    metrics.jsonl        every metric row as it was logged (re-sendable to MLflow without the server)
    artifacts.json       the files logged to MLflow as artifacts (re-sendable by `ablate resend`)
    .lock                held (flock) by the job running the stage, so no two run it at once
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
ARTIFACTS = "artifacts.json"
LOCK = ".lock"
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

    @property
    def artifacts(self) -> Path:
        """artifacts.json: file (relative to this directory where inside it) -> MLflow artifact path."""
        return self.path / ARTIFACTS

    @property
    def lock(self) -> Path:
        """.lock: the file the job running this stage holds an exclusive flock on."""
        return self.path / LOCK

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

    def record_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Note that `path` was logged as an artifact (under `artifact_path`), for `ablate resend`."""
        file = Path(path).resolve()
        try:
            name = str(file.relative_to(self.path.resolve()))
        except ValueError:  # outside the directory: kept absolute
            name = str(file)
        known = read_json(self.artifacts, {}) or {}
        if name in known and known[name] == (artifact_path or ""):
            return  # logged again (a probe file rewritten at every evaluation): nothing new to record
        atomic_write_json(self.artifacts, {**known, name: artifact_path or ""})

    def recorded_artifacts(self) -> list[tuple[Path, str | None]]:
        """The files recorded as logged artifacts, with their artifact paths (None: the run's root)."""
        known = read_json(self.artifacts, {}) or {}
        return [(self.path / name, where or None) for name, where in known.items()]

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
    """Append-only metrics.jsonl: JSON rows {"step": s, key: value, ...}, the first value logged for each
    (key, step) (a step's row, and later rows adding other keys at that step, such as final values).

    A resumed stage re-executes the steps after its last checkpoint; their rows from before the crash
    stay and the re-executed ones are not appended, because the tracking store (MLflowTracker) keeps the
    first value delivered for a (key, step) too, and some of them may have been delivered before the
    crash: so the file and the store agree whenever the process died (timings such as tokens_per_s are
    never re-computed identically).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._logged: set[tuple[int, str]] | None = (
            None  # (step, key) the file holds, read at the first append
        )

    def _cut_torn_row(self) -> None:
        """Cut a last row a crash left unfinished (SIGKILL mid-write), so the next row starts on its own
        line; its step is logged again by the resumed stage."""
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, step: int, metrics: dict[str, float]) -> None:
        """Add a row of the metrics the file lacks at this step, if any (a plain append, not an atomic
        rewrite)."""
        if self._logged is None:  # the first append of this process: a resume, perhaps after a crash
            self._cut_torn_row()
            self._logged = {(int(r["step"]), k) for r in self.rows() for k in r if k != "step"}
        new = {k: v for k, v in metrics.items() if (step, k) not in self._logged}
        if not new:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **new}) + "\n")
        self._logged.update((step, k) for k in new)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row, in the order logged (a last row torn by a crash is not one)."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn row (SIGKILL mid-write); appended rows are whole lines
                continue
        return rows
