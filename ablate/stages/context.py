"""What a stage function receives: its config, output directory, inputs, tracker and metric sink."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.rundir import MetricsLog, RunDir
from ablate.schema import RunConfig

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

    _metrics_log: MetricsLog | None = field(default=None, init=False, repr=False)

    @property
    def metrics_log(self) -> MetricsLog:
        """out_dir's metrics.jsonl, one object per context (it remembers the (step, key) pairs it holds)."""
        if self._metrics_log is None:
            self._metrics_log = RunDir(self.out_dir).metrics_log()
        return self._metrics_log

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log a row of metrics at `step`: to metrics.jsonl first, then the tracker.

        The one sink of every stage. The order matters: a step the store has is then always in the file,
        so a resumed stage never offers the store a step again with other values (exactly-once delivery,
        ablate.rundir.MetricsLog); the file keeps the first value of a (step, key), as the store does.
        """
        self.metrics_log.append(step, metrics)
        self.tracker.log_metrics(metrics, step)

    def log(self, msg: str) -> None:
        """A timestamped line on the job's stdout (the job log)."""
        print(f"[{time.strftime('%H:%M:%S')}] {self.stage}: {msg}", file=sys.stdout, flush=True)
