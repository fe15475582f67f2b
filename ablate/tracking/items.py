"""What an MLflowTracker queues: one item per caller's call, and the operations it sends them as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    """A logged metrics row: {key: value} at a step, stamped (ms) when logged, so a re-sent batch adds
    nothing (MLflow keys a metric value by key, timestamp, step and value)."""

    step: int
    values: dict[str, float]
    timestamp_ms: int


@dataclass(frozen=True)
class Params:
    """Params to log; once built into an operation, only those not yet on the run."""

    values: dict[str, Any]


@dataclass(frozen=True)
class Tags:
    """Run tags to set (values as str)."""

    values: dict[str, str]


@dataclass(frozen=True)
class Artifact:
    """A file to log (absolute path), under `artifact_path` of the run's artifacts."""

    path: str
    artifact_path: str | None


@dataclass(frozen=True)
class Status:
    """The run's terminal status, set last."""

    status: str


@dataclass(frozen=True)
class MetricBatch:
    """An operation: MLflow Metric entities for one log_batch call (de-duplicated, within its limit)."""

    metrics: list[Any]


Item = Row | Params | Tags | Artifact | Status
Op = MetricBatch | Params | Tags | Artifact | Status
