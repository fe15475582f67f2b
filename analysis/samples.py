"""Figure 5: generated samples of the text-to-image models, one panel per initialisation.

The evaluate stage logs `samples.png` (a grid of generated images with their captions, green = the image
matches its caption) and the caption-match fractions on seen and held-out captions. This module assembles
the downloaded grids into one figure; which runs and where their files lie is plot.py's business.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.image import imread

from ablate.errors import AblateError
from ablate.metrics import (
    CAPTION_MATCH_HELDOUT,
    CAPTION_MATCH_SEEN,
    COLOUR_MATCH_CHANCE,
    COLOUR_MATCH_HELDOUT,
    COLOUR_MATCH_SEEN,
)
from analysis.figures import save
from analysis.runs import label_rank

SAMPLES_ARTIFACT = "samples.png"
GRID_DPI = 150  # ablate.evaluate.image_metrics.sample_grid saves at this resolution
PANEL_METRICS = (
    CAPTION_MATCH_SEEN, CAPTION_MATCH_HELDOUT, COLOUR_MATCH_SEEN, COLOUR_MATCH_HELDOUT, COLOUR_MATCH_CHANCE,
)  # fmt: skip
PANEL_COLUMNS = [
    "panel", "init", "arm", "train_run_id", "evaluate_run_id", *PANEL_METRICS, "artifact", "local_path",
    "candidates",
]  # fmt: skip


def _fraction(value: object) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(number) else f"{number:.0%}"


def panel_title(row: pd.Series) -> str:
    """'<init> (<arm>)' over 'caption match: seen x%, held-out y%' (and the colour match, when logged)."""
    seen, held = _fraction(row.get(CAPTION_MATCH_SEEN)), _fraction(row.get(CAPTION_MATCH_HELDOUT))
    title = f"{row['init']}  ({row['arm']})\ncaption match: seen {seen}, held-out {held}"
    colours = [_fraction(row.get(k)) for k in (COLOUR_MATCH_SEEN, COLOUR_MATCH_HELDOUT, COLOUR_MATCH_CHANCE)]
    if colours[0] != "n/a":
        title += f"\ncaption's colours drawn: seen {colours[0]}, held-out {colours[1]} (chance {colours[2]})"
    return title


def figure5_samples(panels: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Figure 5 from `panels`, one row per panel: init (the label), arm, train_run_id, evaluate_run_id,
    caption_match_seen, caption_match_heldout, artifact (its path in the evaluate run), local_path (the
    downloaded image). Rows without a readable image are left out; none left raises AblateError.
    Writes <name>.png/.pdf and .csv (one row per panel drawn)."""
    rows = panels.copy()
    for column in PANEL_COLUMNS:
        if column not in rows.columns:
            rows[column] = None
    rows = rows[rows["local_path"].map(lambda p: isinstance(p, (str, Path)) and Path(p).is_file())]
    if rows.empty:
        raise AblateError(f"figure 5: no evaluate run's {SAMPLES_ARTIFACT} could be read")
    rows = rows.sort_values("init", key=lambda s: s.map(label_rank), kind="stable").reset_index(drop=True)
    images = [imread(str(p)) for p in rows["local_path"]]
    # Side by side only for an even count: three panels in two columns would leave a quarter empty.
    ncols = 2 if len(images) % 2 == 0 else 1
    nrows = math.ceil(len(images) / ncols)
    aspect = max(img.shape[0] / max(img.shape[1], 1) for img in images)  # height / width, tallest panel
    # Each grid at its own size (it was saved at GRID_DPI): scaled down, its 8 pt captions would shrink.
    width = max(6.5, max(img.shape[1] for img in images) / GRID_DPI)
    fig = Figure(figsize=(width * ncols, (width * aspect + 0.9) * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, img, (_, row) in zip(axes, images, rows.iterrows(), strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(panel_title(row), fontsize=10)
        ax.set_axis_off()
    for ax in axes[len(images) :]:
        ax.set_axis_off()
    fig.suptitle(
        "Generated samples: in each pair, the scene the caption describes (left) and the model's sample "
        "(right);\ncaption green where the sample matches it exactly, red where it does not",
        fontsize=12,
    )
    rows["panel"] = np.arange(1, len(rows) + 1)
    rows["local_path"] = rows["local_path"].map(str)
    return save(fig, rows[PANEL_COLUMNS], out_dir, name)
