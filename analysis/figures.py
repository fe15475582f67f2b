"""The paper's figures, one function per figure, over the tidy frame of analysis.frames.training_curves.

Each writes `<name>.png`, `<name>.pdf` and `<name>.csv` (the exact points plotted, one row per point, with
a `series` column) into `out_dir` and returns the three paths. Figures are drawn on matplotlib `Figure`
objects, not pyplot: no global backend or state, so nothing needs a display (PNG renders with Agg).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from ablate.atomic import atomic_path
from ablate.errors import AblateError
from ablate.metrics import IMAGE_LOSS, LOSS, PERPLEXITY, TEXT_LOSS
from analysis.runs import arm_of, init_label, label_rank
from analysis.smoothing import ema_span, smoothing_span
from analysis.tables import human

MAX_POINTS = 500  # per plotted line
LINESTYLES: list[Any] = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 3))]
INIT_COLORS = {"pretrained": "tab:blue", "random": "tab:orange"}
_OTHER_COLORS = ["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
PLOT_COLUMNS = ["series", "metric", "run_id", "arm", "init", "kind", "step", "tokens", "value"]
LABELS = {
    PERPLEXITY: "perplexity",
    TEXT_LOSS: "text-token loss",
    IMAGE_LOSS: "image-token loss",
    LOSS: "loss",
}


def _init_order(inits: Sequence[str]) -> list[str]:
    """Pretrained first, random second, anything else (contrastive variants) after, in name order."""
    return sorted(set(inits), key=label_rank)


def _colors(inits: Sequence[str]) -> dict[str, str]:
    """A colour per initialisation label, in legend order; '<init> + contrastive' gets its own colour."""
    others = iter(_OTHER_COLORS * 4)
    return {i: INIT_COLORS.get(i) or next(others) for i in _init_order(inits)}


def plotted_points(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    max_points: int = MAX_POINTS,
    log_space: bool = False,
    tasks: Sequence[str] | None = ("t2i",),
    x: str = "tokens",
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """The points a curve figure draws: per run (of one of `tasks`; None: any) and metric, raw values and
    their smoothed line (kind "ema"). The `init` column holds the initialisation label (analysis.runs.init_label).

    A run with no task param counts as text-to-image; points with no `x` value are left out. The smoothing
    is a bias-corrected EMA over `x` (analysis.smoothing.ema_span) with one span for the whole figure: the
    paper's EMA 0.95 (20 steps) where runs are long, at most 1% of the longest run where they are short;
    it is in ``points.attrs["span"]`` for the caption. It is taken over every step, then each line is
    thinned to about `max_points` evenly spaced steps (first and last kept). With `log_space` the
    smoothing is over log(value) (for perplexity: an EMA of the loss), so the first, huge values do not
    dominate the smoothed curve. `extra`: frame columns to keep in the result besides PLOT_COLUMNS.
    """
    columns = [*PLOT_COLUMNS, *extra]
    keep = frame["metric"].isin(metrics) & frame[x].notna() & frame["value"].notna()
    if tasks is not None:
        keep &= frame["task"].isin(tasks) | (frame["task"].isna() if "t2i" in tasks else False)
    data = frame[keep]
    if data.empty:
        empty = pd.DataFrame(columns=columns)
        empty.attrs["span"] = float("nan")
        return empty
    # Grouped by run and metric, by step within: sorting integer codes, not millions of strings.
    run_code, metric_code = pd.factorize(data["run_id"])[0], pd.factorize(data["metric"])[0]
    data = data.iloc[np.lexsort((data["step"].to_numpy(), metric_code, run_code))]
    image_init = data["image_init"] if "image_init" in data.columns else pd.Series(None, index=data.index)
    pairs = pd.MultiIndex.from_arrays(
        [data["init"].to_numpy(dtype=object), image_init.to_numpy(dtype=object)]
    )
    codes, uniques = pd.factorize(pairs)
    labels = np.array([init_label(i, m) for i, m in uniques], dtype=object)
    data = data.assign(init=labels[codes])
    data = data.assign(arm=data["arm"].fillna(data["run_id"].str[:8]).astype(str))
    span = smoothing_span(data[x], data["run_id"])
    values = np.log(data["value"].to_numpy(dtype=np.float64)) if log_space else data["value"].to_numpy()
    smooth = np.empty(len(data))
    for idx in data.groupby(["run_id", "metric"], sort=False).indices.values():
        smooth[idx] = ema_span(values[idx], data[x].to_numpy(dtype=np.float64)[idx], span)
    if log_space:
        smooth = np.exp(smooth)
    groups = data.groupby(["run_id", "metric"], sort=False)["value"]
    pos, size = groups.cumcount().to_numpy(), groups.transform("size").to_numpy()
    stride = np.maximum(1, np.ceil(size / max_points)).astype(np.int64)
    thin = (pos % stride == 0) | (pos == size - 1)
    raw = data[thin].assign(kind="raw")
    points = pd.concat([raw, raw.assign(kind="ema", value=smooth[thin])], ignore_index=True)
    points["series"] = points["init"] + "/" + points["arm"] + "/" + points["metric"] + "/" + points["kind"]
    out = points[columns]
    out.attrs["span"] = span
    return out


def smoothing_label(points: pd.DataFrame, x: str = "tokens") -> str:
    """What the thick lines are, for a title: 'EMA over 10.0k tokens'."""
    span = points.attrs.get("span", float("nan"))
    unit = "tokens" if x == "tokens" else "steps"
    label = f"thick: EMA over {human(span)} {unit}, bias-corrected; thin: raw"
    seeds = points["arm"].map(arm_of).to_frame().assign(run=points["run_id"]).drop_duplicates()
    if len(seeds) and seeds.groupby("arm")["run"].nunique().max() > 1:
        label += "; shaded: min-max over seeds, thick their mean"
    return label


def joined(points: pd.DataFrame, x: str, y: str = "value") -> tuple[np.ndarray, np.ndarray]:
    """x and y of every run in `points` (rows grouped by run_id, in drawing order) end to end, a NaN
    between runs: one matplotlib line that draws as the separate lines."""
    run = points["run_id"].to_numpy(dtype=object)
    breaks = np.flatnonzero(run[1:] != run[:-1]) + 1
    xs = np.insert(points[x].to_numpy(dtype=np.float64), breaks, np.nan)
    ys = np.insert(points[y].to_numpy(dtype=np.float64), breaks, np.nan)
    return xs, ys


def seed_bands(
    lines: pd.DataFrame, x: str
) -> tuple[pd.DataFrame, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    """Split one group's smoothed lines into the runs alone in their arm and, per arm with several seeds
    (runs whose labels differ only in ' seed=k'), (x, mean, min, max) across the seeds at each x."""
    arms = lines["arm"].map(arm_of)
    runs_per_arm = lines.groupby(arms)["run_id"].transform("nunique")
    bands = []
    for _, arm in lines[runs_per_arm > 1].groupby(arms[runs_per_arm > 1], sort=False):
        table = arm.pivot_table(index=x, columns="run_id", values="value", aggfunc="mean").sort_index()
        values = table.to_numpy(dtype=np.float64)  # (points, seeds)
        bands.append((table.index.to_numpy(dtype=np.float64), *_nan_stats(values)))
    return lines[runs_per_arm <= 1], bands


def _nan_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over the seeds (columns) at each point, NaN where no seed has a value."""
    has = np.isfinite(values).any(axis=1)
    out = np.full((3, len(values)), np.nan)
    if has.any():
        v = values[has]
        out[:, has] = np.nanmean(v, axis=1), np.nanmin(v, axis=1), np.nanmax(v, axis=1)
    return out[0], out[1], out[2]


def _draw(
    ax: Axes,
    points: pd.DataFrame,
    colors: dict[str, str],
    legend: bool = True,
    x: str = "tokens",
    by: str = "init",
    title: str = "initialisation",
) -> None:
    """Raw values as thin faint lines (rasterized in the PDF: thousands of points), EMA as thick lines;
    colour and legend entry per value of column `by` (legend in the order of `colors`). Drawn as one line
    per colour and kind, runs separated by NaN breaks: hundreds of runs would otherwise be hundreds of
    artists, and drawing each costs more than its points (raw under every EMA)."""
    for kind in ("raw", "ema"):
        for rank, (group, color) in enumerate(colors.items()):
            lines = points[(points["kind"] == kind) & (points[by] == group)]
            if lines.empty:
                continue
            xs, ys = joined(lines, x)
            # Where lines coincide (late in training they often do) each must still show: the first group
            # is the widest solid line at the bottom, each later one narrower and dashed on top of it.
            ls, lw, z = LINESTYLES[rank % len(LINESTYLES)], max(1.4, 2.8 - 0.5 * rank), 3 + rank
            if kind == "raw":  # under every smoothed line
                ax.plot(xs, ys, lw=0.7, alpha=0.45, color=color, rasterized=True, zorder=2)
                continue
            single, bands = seed_bands(lines, x)
            for bx, mean, lo, hi in bands:  # an arm run with several seeds: their mean, min-max shaded
                ax.fill_between(bx, lo, hi, color=color, alpha=0.2, lw=0, zorder=2.5)
                ax.plot(bx, mean, lw=lw, color=color, ls=ls, zorder=z)
            if not single.empty:
                ax.plot(*joined(single, x), lw=lw, color=color, ls=ls, zorder=z)
            ax.plot([], [], lw=lw, color=color, ls=ls, label=group)  # one legend entry per group
    if x == "tokens":
        ax.set_xlabel("training tokens")
        ax.xaxis.set_major_formatter(EngFormatter())  # 250 k, 1 G: token counts span orders of magnitude
    else:
        ax.set_xlabel(x)
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        order = [labels.index(g) for g in colors if g in labels]
        ax.legend([handles[i] for i in order], [labels[i] for i in order], title=title, fontsize=8)


def save(fig: Figure, points: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """`<name>.png`, `.pdf` (the figure) and `.csv` (the points) into out_dir; the three paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf", out_dir / f"{name}.csv"]
    # Atomic: a figure redrawn while someone has the old one open is never seen half-written.
    for path in paths[:2]:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    with atomic_path(paths[2]) as tmp:
        points.to_csv(tmp, index=False)
    return paths


def _require(points: pd.DataFrame, figure: str, metrics: Sequence[str]) -> None:
    if points.empty:
        raise AblateError(
            f"{figure}: no text-to-image training run has logged {' / '.join(metrics)} together with tokens"
        )


# Figure 3's right panel: the tokens after the first ZOOM_FROM of the longest run, its y-range from the
# values after RANGE_FROM (the fall before that leaves through the top: it is the left panel's).
ZOOM_FROM, RANGE_FROM = 0.1, 0.5


def late_range(points: pd.DataFrame) -> tuple[float, float]:
    """A y-range for the late part of curves: the smoothed lines' extent and the raw values' 2nd to 98th
    percentile (a raw spike does not flatten the lines), padded by 10% below and 40% above."""
    ema, raw = points[points["kind"] == "ema"]["value"], points[points["kind"] == "raw"]["value"]
    lo = min(ema.min(), raw.quantile(0.02)) if len(raw) else ema.min()
    hi = max(ema.max(), raw.quantile(0.98)) if len(raw) else ema.max()
    span = hi - lo if hi > lo else 0.05 * abs(hi) or 0.05
    return float(lo - 0.1 * span), float(hi + 0.4 * span)


def figure3_perplexity(frame: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Figure 3: perplexity against training tokens, pretrained vs random init (raw thin, EMA thick); left
    the whole run on a log axis, right the last 90% of tokens on a linear axis with its own range, where
    the early fall would otherwise flatten the lines onto each other."""
    points = plotted_points(frame, [PERPLEXITY], log_space=True)
    _require(points, "figure 3", [PERPLEXITY])
    return save(draw_figure3(points), points, out_dir, name)


def draw_figure3(points: pd.DataFrame) -> Figure:
    """Figure 3 drawn from its points (plotted_points of perplexity): the whole run, and the late part."""
    colors = _colors(points["init"].unique())
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    whole, late = np.atleast_1d(fig.subplots(1, 2))
    _draw(whole, points, colors)
    if (points["value"] > 0).all():  # perplexity spans orders of magnitude early on
        whole.set_yscale("log")
    end = float(points["tokens"].max())
    start = ZOOM_FROM * end
    tail = points[points["tokens"] >= start]
    whole.axvspan(start, end, color="0.5", alpha=0.08, lw=0, zorder=0)
    whole.set_title("whole run (log scale; shaded: the right panel)", fontsize=9)
    _draw(late, tail, colors, legend=False)
    late.set_xlim(start, end)
    late.set_ylim(*late_range(points[points["tokens"] >= RANGE_FROM * end]))
    late.set_title(
        f"after the first {ZOOM_FROM:.0%} of tokens (linear scale, y from the last {1 - RANGE_FROM:.0%})",
        fontsize=9,
    )
    for ax in (whole, late):
        ax.set_ylabel("perplexity")
    fig.suptitle(
        f"Perplexity through training (text-to-image; smoothed as the loss, then exp)\n{smoothing_label(points)}",
        fontsize=10,
    )
    return fig


def figure4_loss_split(frame: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Figure 4: loss on text tokens and on image tokens (two panels) against tokens, one line per init."""
    metrics = [TEXT_LOSS, IMAGE_LOSS]
    points = plotted_points(frame, metrics)
    _require(points, "figure 4", metrics)
    colors = _colors(points["init"].unique())
    fig = Figure(figsize=(11.0, 4.2))
    axes = np.atleast_1d(fig.subplots(1, 2))
    for ax, metric in zip(axes, metrics, strict=True):
        panel = points[points["metric"] == metric]
        if panel.empty:
            ax.text(0.5, 0.5, f"no {metric} logged", ha="center", va="center", transform=ax.transAxes)
        else:
            _draw(ax, panel, colors, legend=metric == metrics[0])
        ax.set_ylabel(LABELS[metric])
        ax.set_title(LABELS[metric].capitalize(), fontsize=10)
    fig.suptitle(f"Loss split by target token type (text-to-image; {smoothing_label(points)})", fontsize=11)
    return save(fig, points, out_dir, name)
