"""Sensitivity figures: the final image-token loss of text-to-image runs against the peak learning rate
(sweeps/lr.yaml) and against the batch size in tokens (the batch sweep), one line per initialisation.

"Final" is the mean over the last TAIL_FRACTION (5%) of the run's logged steps (analysis.frames.
final_values), steadier than the last, noisy step; the figure and CSV say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ablate.errors import AblateError
from ablate.metrics import IMAGE_LOSS
from analysis.figures import _colors, save
from analysis.frames import TAIL_FRACTION

METRIC = IMAGE_LOSS
PARAMS = {"lr": "optim.lr", "batch_tokens": "train.batch_tokens"}  # x column -> the config key it comes from
XLABELS = {"lr": "peak learning rate (optim.lr)", "batch_tokens": "batch size in tokens (train.batch_tokens)"}
SENSITIVITY_COLUMNS = [
    "series",
    "init",
    "x_param",
    "x",
    "y",
    "y_metric",
    "n_runs",
    "tail_steps",
    "run_ids",
    "arms",
]


def final_points(train: pd.DataFrame, finals: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """The run-table rows `train` with `y` = the mean of `metric` over the run's last 5% of steps and
    `tail_steps` = how many steps that mean covers (from analysis.frames.final_values); runs that never
    logged the metric are left out."""
    mine = finals[finals["key"] == metric].set_index("run_id")
    points = train.assign(
        y=train["run_id"].map(mine["tail_mean"]), tail_steps=train["run_id"].map(mine["tail_n"])
    )
    return points[points["y"].notna()]


def sensitivity(points: pd.DataFrame, x: str, out_dir: Path, name: str) -> list[Path]:
    """`name`.png/.pdf/.csv: y (final image-token loss) against column `x` of `points` (rows of
    final_points), log x, one line per initialisation label (column `label`) through the mean y of its
    runs at each x. Needs at least 2 distinct x values among the runs, else AblateError."""
    data = points[points[x].notna() & np.isfinite(points[x].astype(float))]
    distinct = sorted(set(data[x].astype(float)))
    if len(distinct) < 2:
        have = f"only {PARAMS.get(x, x)} = {distinct[0]:g}" if distinct else f"no {PARAMS.get(x, x)}"
        raise AblateError(
            f"{name}: the selected text-to-image runs with a final {METRIC} have {have}; "
            "a sensitivity curve needs at least 2 values"
        )
    rows = []
    for (label, value), group in data.groupby(["label", x], sort=False):
        rows.append(
            {
                "series": label,
                "init": label,
                "x_param": PARAMS.get(x, x),
                "x": float(value),
                "y": float(group["y"].mean()),
                "y_metric": f"{METRIC} (mean of the last {TAIL_FRACTION:.0%} of steps)",
                "n_runs": len(group),
                "tail_steps": ";".join(str(int(n)) for n in group["tail_steps"]),
                "run_ids": ";".join(group["run_id"]),
                "arms": ";".join(group["arm"].fillna("").astype(str)),
            }
        )
    table = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    colors = _colors(table["init"].unique())
    table = table.sort_values(
        ["init", "x"], key=lambda s: s.map(list(colors).index) if s.name == "init" else s
    )
    table = table.reset_index(drop=True)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for label in colors:
        line = table[table["init"] == label]
        ax.plot(line["x"], line["y"], marker="o", lw=1.8, color=colors[label], label=label)
    ax.set_xscale("log")
    ax.set_xlabel(XLABELS.get(x, x))
    ax.set_ylabel(f"final image-token loss\n(mean of the last {TAIL_FRACTION:.0%} of steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="initialisation")
    ax.set_title(f"Sensitivity to {XLABELS.get(x, x).split(' (')[0]} (text-to-image)", fontsize=10)
    return save(fig, table, out_dir, name)
