"""Curve smoothing: the paper's EMA 0.95 over steps, and a bias-corrected EMA whose memory is a span of
the x axis (tokens), for runs too short for 0.95 per step to follow the data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

PAPER_EMA_STEPS = 20  # EMA 0.95 per step remembers about 1 / (1 - 0.95) = 20 steps


def ema(values: Sequence[float] | np.ndarray | pd.Series, alpha: float = 0.95) -> np.ndarray:
    """Exponential moving average y_0 = x_0, y_t = alpha*y_{t-1} + (1-alpha)*x_t; a NaN x_t keeps y_{t-1}."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    x = pd.Series(np.asarray(values, dtype=np.float64))
    # pandas' ewm(adjust=False) is exactly this recursion with weight (1 - alpha) on the new value, in C.
    return x.ewm(alpha=1.0 - alpha, adjust=False, ignore_na=True).mean().to_numpy()


def ema_span(
    values: Sequence[float] | np.ndarray, x: Sequence[float] | np.ndarray, span: float
) -> np.ndarray:
    """Bias-corrected exponential moving average over an axis: y_t is the mean of the values so far, each
    weighted exp(-(x_t - x_i) / span), so a point `span` back weighs 1/e and uneven spacing is honoured.

    Normalising by the weights (Adam's bias correction, pandas' adjust=True) keeps the first points from
    being pulled towards the first value; NaN values are skipped. `x` must not decrease.
    """
    if not span > 0:
        raise ValueError(f"span must be > 0, got {span}")
    v = np.asarray(values, dtype=np.float64)
    xs = np.asarray(x, dtype=np.float64)
    if v.shape != xs.shape or v.ndim != 1:
        raise ValueError(f"values and x must be 1-D of one length, got {v.shape} and {xs.shape}")
    if len(xs) and np.any(np.diff(xs) < 0):
        raise ValueError("x must not decrease")
    out = np.empty_like(v)
    total = weight = 0.0
    prev = xs[0] if len(xs) else 0.0
    for i in range(len(v)):
        decay = float(np.exp(-(xs[i] - prev) / span))
        total, weight, prev = total * decay, weight * decay, xs[i]
        if np.isfinite(v[i]):
            total, weight = total + v[i], weight + 1.0
        out[i] = total / weight if weight > 0 else np.nan
    return out


def smoothing_span(x: pd.Series, run: pd.Series, fraction: float = 0.01) -> float:
    """The span a figure smooths with: the paper's 20 steps (in x units, at the runs' median spacing), but
    at most `fraction` of the longest run, so a short run's smoothed line does not lag behind it (in the
    demo's steep first 100K tokens, at 2% the thick line was still several times the raw one at 30K)."""
    order = pd.DataFrame({"x": x.to_numpy(dtype=np.float64), "run": run.to_numpy()}).dropna()
    if order.empty:
        return 1.0
    steps = order.groupby("run", sort=False)["x"].diff().dropna()
    steps = steps[steps > 0]
    paper = PAPER_EMA_STEPS * float(steps.median()) if len(steps) else np.inf
    longest = float((order.groupby("run")["x"].max() - order.groupby("run")["x"].min()).max())
    span = min(paper, fraction * longest) if longest > 0 else paper
    return span if np.isfinite(span) and span > 0 else 1.0
