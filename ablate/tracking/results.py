"""How an arm's MLflow run shows its results: which metrics are its columns, and how they are logged there.

An arm run gets every metric its train and evaluate jobs log (job_runs.FanOut); MLflowTracker passes each
through `arm_rows` when its run is an arm run (tag ablate.kind = arm), live and when back-filled from
metrics.jsonl alike, so `ablate resend` and a relaunch make the same run. The stage runs keep every value
as logged (full precision, at its step): analysis and `ablate status` read those and metrics.jsonl. No
mlflow import.
"""

from __future__ import annotations

import math

from ablate import metrics as M
from ablate.train.final import FINAL_METRICS

# One value per run (the train stage logs them at its last step): logged to the arm run at step 0, since
# MLflow's charts draw a metric whose latest step is 0 in every run as one bar per run, and one at a later
# step as a point on a line chart (a lone point on the tokens axis, a hair apart from the others').
SINGLE_VALUES = tuple(M.final(m) for m in FINAL_METRICS)
# The result columns of a sweep's arms table (the saved view, tracking.ui.arms_view): the train stage's
# final values and last held-out text probe, the evaluate stage's image metrics (FID on real data).
ARM_RESULT_METRICS = (
    *SINGLE_VALUES,
    M.HELDOUT_TEXT_PPL,
    M.CAPTION_MATCH_SEEN,
    M.COLOUR_MATCH_SEEN,
    M.SCENE_VALID,
    M.FID,
)
# MLflow's UI shows a metric with every digit it has and offers no display precision (its runs table
# prints the stored double as is), so the arm run holds its results rounded; the evaluate stage's other
# fractions, columns a reader may add, too.
RESULT_DIGITS = 4
ROUNDED = frozenset(
    (*ARM_RESULT_METRICS, M.CAPTION_MATCH_HELDOUT, M.COLOUR_MATCH_HELDOUT, M.COLOUR_MATCH_CHANCE)
)


def rounded(value: float, digits: int = RESULT_DIGITS) -> float:
    """`value` to `digits` significant digits (NaN and infinities as they are)."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def arm_rows(step: int, values: dict[str, float]) -> list[tuple[int, dict[str, float]]]:
    """One logged row (step, {key: value}) as an arm run holds it: the results rounded to RESULT_DIGITS
    significant digits, the SINGLE_VALUES at step 0; [(step, rest), (0, single values)], empty parts left out."""
    shown = {k: rounded(v) if k in ROUNDED else v for k, v in values.items()}
    single = {k: v for k, v in shown.items() if k in SINGLE_VALUES}
    rest = {k: v for k, v in shown.items() if k not in SINGLE_VALUES}
    return [(s, row) for s, row in ((step, rest), (0, single)) if row]
