"""Content-addressed stage outputs: results/cache/<stage>/<key>/, complete only once its marker exists
(ablate.rundir.RunDir.is_complete).

Files inside are written atomically (ablate.atomic), and the completion marker is written last, so a
stage killed half-way leaves a directory that no later run mistakes for complete. The directory's file
names, the marker's included, are defined in ablate.rundir.
"""

from __future__ import annotations

from pathlib import Path


def stage_dir(results: Path, stage: str, key: str) -> Path:
    """Where a stage's output with this key lives."""
    return Path(results) / "cache" / stage / key
