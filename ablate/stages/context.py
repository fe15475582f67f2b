"""What a stage function receives: its config, output directory, inputs and tracker."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.config.schema import RunConfig

if TYPE_CHECKING:
    from ablate.tracking import Tracker


@dataclass
class StageContext:
    """A stage's view of the world; stages write only under out_dir."""

    stage: str
    cfg: RunConfig
    out_dir: Path
    inputs: dict[str, Path]
    tracker: Tracker
    labels: list[str] = field(default_factory=list)
    should_stop: Callable[[], bool] = lambda: False
    """True once the job was asked to stop (SIGINT/SIGTERM): checkpoint and return."""
    unit: str | None = None
    """The unit of work this job does, for a stage split into units (ablate.stages.stage.Stage.units)."""

    def log(self, msg: str) -> None:
        """A timestamped line on the job's stdout (the job log)."""
        print(f"[{time.strftime('%H:%M:%S')}] {self.stage}: {msg}", file=sys.stdout, flush=True)
