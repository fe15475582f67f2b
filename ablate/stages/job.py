"""What a stage job is: the stage, its key and directories, its config and where it logs (no torch: the
launcher builds these; ablate.stages.runner runs them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """Everything a stage job needs; picklable, so submitit can ship it to another process or node."""

    stage: str
    key: str
    out_dir: str
    inputs: dict[str, str]
    config: dict[str, Any]
    labels: list[str] = field(default_factory=list)
    tracking: dict[str, Any] | None = None
    """Where the job logs (ablate.tracking.JobTracking.to_dict()): its runs are found or created when it
    starts. None: nothing is tracked (a unit of work, or a test)."""
    sweep: str | None = None
    threads: int = 1
    unit: str | None = None
    """One unit of work of a stage split into units: out_dir is then the unit's directory."""

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.key}" + (f"/{self.unit}" if self.unit else "")
