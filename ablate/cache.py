"""Content-addressed stage outputs: results/cache/<stage>/<key>/, complete only once its marker exists.

Files inside are written atomically (ablate.atomic), and the completion marker is written last, so a
stage killed half-way leaves a directory that no later run mistakes for complete. The directory's file
names, the marker's included, are defined in ablate.rundir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Re-exported: stage modules import the atomic writers and read_json from here.
from ablate.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from ablate.rundir import MARKER, RunDir

__all__ = [
    "MARKER",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_complete",
    "mark_complete",
    "read_json",
    "stage_dir",
]


def stage_dir(results: Path, stage: str, key: str) -> Path:
    """Where a stage's output with this key lives."""
    return Path(results) / "cache" / stage / key


def is_complete(path: Path) -> bool:
    """True once the stage that writes `path` finished and wrote its marker."""
    return RunDir(path).is_complete()


def mark_complete(path: Path, info: dict[str, Any] | None = None) -> None:
    """Write the completion marker (last step of a stage)."""
    RunDir(path).mark_complete(info)
