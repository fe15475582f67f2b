"""Figures 6 (partial freezing, unconditional) and 7 (contrastive alignment), and text ability through
training: curves over the tidy frame of analysis.frames (curves_from_histories), written as figures.py's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

from ablate import tracking
from ablate.errors import AblateError
from ablate.metrics import HELDOUT_TEXT_PPL, LOSS, TEMPERATURE
from analysis.figures import PLOT_COLUMNS, _colors, _draw, joined, plotted_points, save, smoothing_label
from analysis.runs import label_rank

# Figure 6's settings (train.trainable presets, ablate/model/freeze.py) in the paper's order, named by what
# they train here: the paper's second adds "layer norms + positional embedding", but open_lm's rotary
# embedding has no parameters, so it adds the norms alone (POSITIONAL_SUFFIX where a model has some).
FREEZE_SETTINGS = {
    "emb_out": "embedding + output",
    "emb_out_norm": "+ norms",
    "emb_out_norm_half": "+ norms + first half of the layers",
    "emb_out_norm_ffn": "+ norms + feed-forward layers",
    "all": "all parameters",
}
POSITIONAL_SUFFIX = " + positional embedding"  # after emb_out_norm's name, for a model with learned positions
FREEZE_SWEEP = "sweeps/freeze.yaml"  # the sweep file that runs every setting of FREEZE_SETTINGS
NO_POSITIONAL = "none"  # tracking.TAG_POSITIONAL starts so when the model has no positional parameters
ROTARY_NOTE = (
    f"open_lm's rotary position embedding has no parameters (tag {tracking.TAG_POSITIONAL} = {{value!r}}), "
    "so '+ norms' (emb_out_norm) adds only the norms to embedding + output."
)
FREEZE_COLUMNS = ["series", "setting", "trainable", *PLOT_COLUMNS[1:], "positional_params"]
TEXT_COLUMNS = ["series", "metric", "run_id", "arm", "init", "step", "tokens", "value"]


def _setting(init: str, trainable: object, positional: bool = False) -> str:
    """A legend entry: '<init>: <what trains> (<preset>)'; `positional`: the model has learned positions."""
    preset = trainable if isinstance(trainable, str) and trainable else "all"
    if preset not in FREEZE_SETTINGS:
        return f"{init}: {preset}"
    name = FREEZE_SETTINGS[preset] + (POSITIONAL_SUFFIX if positional and preset == "emb_out_norm" else "")
    return f"{init}: {name} ({preset})"


def has_positional(values: pd.Series) -> bool:
    """Whether the runs' ablate.positional_params tags name learned positional parameters."""
    return any(not str(v).startswith(NO_POSITIONAL) for v in values.dropna())


def _setting_rank(init: str, trainable: str) -> tuple:
    order = list(FREEZE_SETTINGS)
    return (label_rank(init), order.index(trainable) if trainable in order else len(order), trainable)


def positional_note(values: pd.Series) -> str:
    """The figure's note on what emb_out_norm trains besides the norms, from the runs' positional tags."""
    given = sorted({str(v) for v in values.dropna()})
    if not given:
        return f"Positional parameters not recorded (runs lack the tag {tracking.TAG_POSITIONAL})."
    if all(v.startswith(NO_POSITIONAL) for v in given):
        return ROTARY_NOTE.format(value=given[0])
    return (
        f"Positional parameters trained from emb_out_norm ('+ norms{POSITIONAL_SUFFIX}') on: "
        + "; ".join(given)
        + "."
    )


def figure6_freeze(frame: pd.DataFrame, runs: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Figure 6: unconditional generation, loss against tokens, one line per freeze setting (init and
    train.trainable); raw thin and faint, EMA thick. `runs`: the run table (analysis.runs.run_table) rows
    of those runs, for their ablate.positional_params tag (the note under the legend)."""
    points = plotted_points(frame, [LOSS], tasks=("uncond",), extra=("trainable",))
    span = points.attrs.get("span")
    if points.empty:
        raise AblateError("figure 6: no unconditional training run has logged loss together with tokens")
    if not runs.empty:  # the run table falls back to the ablate.trainable tag where the param is missing
        mapped = points["run_id"].map(runs.set_index("run_id")["trainable"]).astype(object)
        points["trainable"] = mapped.where(mapped.notna(), points["trainable"])
    points["trainable"] = points["trainable"].fillna("all").astype(str)
    positional = runs.set_index("run_id")["positional_params"] if not runs.empty else pd.Series(dtype=object)
    points["positional_params"] = points["run_id"].map(positional)
    learned = has_positional(points["positional_params"])
    points["setting"] = [
        _setting(i, t, learned) for i, t in zip(points["init"], points["trainable"], strict=True)
    ]
    points["series"] = points["setting"] + "/" + points["arm"] + "/" + points["kind"]
    pairs = sorted(
        set(zip(points["init"], points["trainable"], strict=True)), key=lambda p: _setting_rank(*p)
    )
    shades = colormaps["viridis"](np.linspace(0.0, 0.85, max(1, len(pairs))))
    colors = {_setting(i, t, learned): shades[k] for k, (i, t) in enumerate(pairs)}
    for init, trainable in pairs:  # other inits (random) in their figure-3 colour when fully trained
        if init != "pretrained" and trainable == "all":
            colors[_setting(init, trainable, learned)] = _colors([init])[init]
    note = positional_note(points.drop_duplicates("run_id")["positional_params"])
    ran = {t for i, t in pairs if i == "pretrained"}
    if len(ran) < len(FREEZE_SETTINGS):
        missing = ", ".join(t for t in FREEZE_SETTINGS if t not in ran)
        note += f" Not run here: {missing}; `ablate launch {FREEZE_SWEEP}` runs every setting."
    fig = Figure(figsize=(7.6, 5.0))
    ax = fig.subplots()
    _draw(ax, points, colors, by="setting", title="trainable parameters")
    ax.set_ylabel("loss (image tokens)")
    points.attrs["span"] = span
    ax.set_title(
        f"Unconditional generation, partly frozen language model\n{smoothing_label(points)}", fontsize=9
    )
    fig.text(0.01, -0.02, note, fontsize=7.5, ha="left", va="top", wrap=True)
    return save(fig, points[FREEZE_COLUMNS], out_dir, name)


def figure7_contrastive(frame: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Figure 7: the align stage's CLIP loss (raw thin, EMA thick) and temperature against step, one
    line per align run, two panels. `frame`: curves of align runs (metrics loss, temperature)."""
    loss = plotted_points(frame, [LOSS], tasks=None, x="step")
    temp = plotted_points(frame, [TEMPERATURE], tasks=None, x="step")
    temp = temp[temp["kind"] == "raw"]  # a learned scalar: no noise to smooth
    if loss.empty and temp.empty:
        raise AblateError("figure 7: no align run has logged loss or temperature")
    points = pd.concat([p for p in (loss, temp) if not p.empty], ignore_index=True)
    points["series"] = points["arm"] + "/" + points["metric"] + "/" + points["kind"]
    arms = list(dict.fromkeys(points["arm"]))
    palette = [*_colors(["pretrained", "random"]).values(), "tab:green", "tab:red", "tab:purple"]
    colors = {a: palette[k % len(palette)] for k, a in enumerate(arms)}
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")  # room for the suptitle over two titles
    axes = np.atleast_1d(fig.subplots(1, 2))
    if loss.empty:
        axes[0].text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=axes[0].transAxes)
    else:
        _draw(axes[0], loss, colors, x="step", by="arm", title="align run")
    for arm, color in colors.items():
        if (temp["arm"] == arm).any():
            axes[1].plot(*joined(temp[temp["arm"] == arm], "step"), lw=1.8, color=color, label=arm)
    if temp.empty:
        axes[1].text(0.5, 0.5, "no temperature logged", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].grid(True, alpha=0.3)
    axes[0].set_ylabel("contrastive (CLIP) loss")
    axes[1].set_ylabel("logit scale")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].set_title(f"Contrastive loss\n({smoothing_label(loss, x='step')})", fontsize=9)
    axes[1].set_title("Logit scale (CLIP's learned temperature parameter, exp(t))", fontsize=9)
    fig.suptitle("Aligning image codes with text embeddings (align stage)", fontsize=11)
    return save(fig, points, out_dir, name)


def plain_log_axis(ax: Axes, values: pd.Series) -> None:
    """Label a log y axis with plain numbers (2, 5, 10, 20, ... rather than 10^1): labelled ticks at 1, 2
    and 5 per decade over a few decades, every integer within one, powers of ten over many; the other
    minor ticks unlabelled, so no two labels meet (a minor 90 under a major 100)."""
    decades = math.log10(float(values.max()) / float(values.min())) if values.min() > 0 else 0.0
    subs = (
        (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 1 else tuple(float(k) for k in range(1, 10))
    )
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:.2g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def text_ability(frame: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Held-out text perplexity (the text-ability probe) against training tokens, text-to-image runs,
    one line per run coloured by initialisation, log y; the probe points as markers (no smoothing)."""
    points = plotted_points(frame, [HELDOUT_TEXT_PPL], tasks=("t2i",))
    points = points[points["kind"] == "raw"].copy()
    if points.empty:
        raise AblateError(
            "text ability: no text-to-image training run has logged heldout_text_ppl with tokens"
        )
    points["series"] = points["init"] + "/" + points["arm"]
    colors = _colors(points["init"].unique())
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for init, color in colors.items():  # one line per init: its runs joined with NaN breaks
        xs, ys = joined(points[points["init"] == init], "tokens")
        ax.plot(xs, ys, marker="o", ms=3.5, lw=1.6, color=color, label=init)
    if (points["value"] > 0).all():
        ax.set_yscale("log")
        plain_log_axis(ax, points["value"])
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(i) for i in colors if i in labels]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], title="initialisation")
    ax.set_xlabel("training tokens")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("held-out text perplexity")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title("Text ability through text-to-image training", fontsize=10)
    return save(fig, points[TEXT_COLUMNS], out_dir, name)
