"""A training curve's final value, as summary.csv and the arms' MLflow runs report it (no torch import).

The final value is the mean over the last TAIL_FRACTION of the curve's logged steps: steadier than the
last, noisy point. The train stage logs it for FINAL_METRICS as `final_<metric>` when it finishes;
analysis computes the same from the tracked histories (analysis.frames.final_values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ablate.metrics import LOSSES, final

TAIL_FRACTION = 0.05
FINAL_METRICS = LOSSES


def tail_count(n: int, fraction: float = TAIL_FRACTION) -> int:
    """How many of a curve's last n logged steps its final value averages (at least one)."""
    return max(1, math.ceil(fraction * n))


def final_values(
    rows: Iterable[Mapping[str, Any]], metrics: Iterable[str] = FINAL_METRICS
) -> dict[str, float]:
    """{final_<metric>: mean over the last TAIL_FRACTION of the steps logging it} of metrics.jsonl rows
    ({"step": s, key: value, ...}); NaNs skipped, a step logged twice counted once (its first value, as
    the tracker keeps it); metrics never logged are left out."""
    series: dict[str, dict[int, float]] = {m: {} for m in metrics}
    for row in rows:
        step = int(row["step"])
        for m, values in series.items():
            if m in row and step not in values:
                values[step] = float(row[m])
    out = {}
    for m, values in series.items():
        if not values:
            continue
        tail = [values[s] for s in sorted(values)[-tail_count(len(values)) :]]
        kept = [v for v in tail if not math.isnan(v)]
        out[final(m)] = sum(kept) / len(kept) if kept else math.nan
    return out
