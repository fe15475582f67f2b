"""`ablate plot`: every figure and table of the paper from the tracked runs, into one directory.

One fetch of the runs, one fetch of the metric histories of every run a figure needs, and downloads of
only the artifacts drawn (one samples.png and one completions.jsonl per initialisation). Each figure
draws the runs of the sweeps that produce it (docs/CONTRACTS.md "Figure -> sweeps"), restricted to the
runs of `sweep` when given. A sweep that produces figures (lr) draws only those; one that produces none
itself (paper, which includes the others) draws every figure its runs feed. A figure whose runs are
missing is skipped with a message naming the sweep file that produces them. Each figure is one `Figure`
record in FIGURES: its sweeps, the runs it needs, how to select them and how to draw it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate import tracking
from ablate.errors import AblateError
from ablate.metrics import EVAL_METRICS, HELDOUT_TEXT_PPL, LOSSES, TEMPERATURE, TOKENS
from ablate.stages import names as stages
from analysis import curves, figures, runs, samples, seeds, sensitivity, tables
from analysis.frames import curves_from_histories, final_values

log = logging.getLogger(__name__)

# The curves the figures draw: a train run's losses (not CURVE_METRICS' lr and throughput, which no figure
# draws), the text probe's perplexity, and an align run's loss and temperature.
CURVE_KEYS = (*LOSSES, HELDOUT_TEXT_PPL, TEMPERATURE)
HISTORY_KEYS = (*CURVE_KEYS, TOKENS, *EVAL_METRICS)
ARTIFACTS_DIR = "artifacts"  # under out_dir: the downloaded samples.png / completions.jsonl, per run id
MAX_TRIES = 3  # per initialisation: runs tried for an artifact before giving up on it
HOW_TO_PRODUCE = (
    "Produce runs with `ablate launch sweeps/demo.yaml` (follow them with `ablate status demo`), "
    "or point MLFLOW_TRACKING_URI at the store that holds them."
)


@dataclass(frozen=True)
class Frames:
    """The run-table rows that figures select their runs from, before any metric history is fetched."""

    table: pd.DataFrame  # every stage run (not the sweeps' parent runs)
    train: pd.DataFrame  # the train-stage runs
    t2i: pd.DataFrame  # the text-to-image train runs
    evals: pd.Series  # train run id -> evaluate run id (runs.evaluations)


@dataclass(frozen=True)
class Fetched:
    """What the figures draw from, read once for all of them."""

    curves: pd.DataFrame  # analysis.frames curves of every train run and of every run a figure selected
    finals: pd.DataFrame  # analysis.frames.final_values of those runs and of the evaluate runs
    tokens: pd.Series  # run id -> training tokens at its last step
    evals: pd.Series  # as Frames.evals
    fetch: ArtifactFetcher
    out_dir: Path

    @property
    def probed(self) -> set[str]:
        """Runs that logged the text-ability probe's heldout_text_ppl."""
        return set(self.finals.loc[self.finals["key"] == HELDOUT_TEXT_PPL, "run_id"])

    def curves_of(self, runs: pd.DataFrame) -> pd.DataFrame:
        """The curves of the given run-table rows."""
        return self.curves[self.curves["run_id"].isin(runs["run_id"])]


@dataclass(frozen=True)
class Figure:
    """One figure or table: the sweeps whose runs it draws (the first names the file to launch when they
    are missing; demo is the small version of several), the runs it needs (in words, for the skip
    message), which run-table rows those are, and how to draw it from them (its paths)."""

    name: str
    sweeps: tuple[str, ...]
    needs: str
    select: Callable[[Frames], pd.DataFrame]
    draw: Callable[[pd.DataFrame, Fetched, str], list[Path]]
    """Draws it from the rows `select` picked into Fetched.out_dir, under the file name it is given (the
    record's name); returns the paths written."""
    caption: str = ""
    """What it shows, as the report (analysis.report) prints under it."""

    def path(self, out_dir: Path, suffix: str) -> Path:
        """One of the files it writes into out_dir: `<name><suffix>` (.png, .pdf, .csv; .md for a table)."""
        return Path(out_dir) / f"{self.name}{suffix}"

    def runs_of(self, frames: Frames) -> pd.DataFrame:
        """The rows `select` picks that one of the figure's sweeps uses."""
        rows = self.select(frames)
        return rows[runs.in_sweeps(rows, self.sweeps)]


T2I = ("t2i_init", "demo")
FIGURE3 = Figure(
    "figure3_perplexity",
    T2I,
    "text-to-image train runs",
    lambda f: f.t2i,
    lambda runs, d, name: figures.figure3_perplexity(d.curves_of(runs), d.out_dir, name),
    caption="Figure 3: perplexity of the text-to-image runs against training tokens, per initialisation: "
    "the whole run (log scale) and, on a scale of their own, the tokens after the first 10%.",
)
FIGURE4 = Figure(
    "figure4_loss_split",
    T2I,
    "text-to-image train runs",
    lambda f: f.t2i,
    lambda runs, d, name: figures.figure4_loss_split(d.curves_of(runs), d.out_dir, name),
    caption="Figure 4: the loss on text tokens (left) and on image tokens (right), per initialisation.",
)
FIGURE5 = Figure(
    "figure5_samples",
    T2I,
    "evaluate runs of text-to-image train runs",
    lambda f: f.t2i[f.t2i["run_id"].isin(f.evals.index)],
    lambda runs, d, name: samples.figure5_samples(
        sample_panels(runs, d.evals, d.finals, d.tokens, d.fetch), d.out_dir, name
    ),
    caption="Figure 5: generated samples beside the scenes their captions describe, per initialisation.",
)
FIGURE6 = Figure(
    "figure6_freeze",
    ("freeze", "demo"),
    "unconditional train runs",
    lambda f: f.train[f.train["task"] == "uncond"],
    lambda runs, d, name: curves.figure6_freeze(d.curves_of(runs), runs, d.out_dir, name),
    caption="Figure 6: unconditional generation with parts of the pretrained model frozen.",
)
FIGURE7 = Figure(
    "figure7_contrastive",
    ("contrastive", "demo"),
    "align runs",
    lambda f: f.table[f.table["stage"] == stages.ALIGN],
    lambda runs, d, name: curves.figure7_contrastive(d.curves_of(runs), d.out_dir, name),
    caption="Figure 7: contrastive alignment of the image-code embeddings with the text embeddings.",
)
TABLE1 = Figure(
    "table1_completions",
    T2I,
    "text-to-image train runs",
    lambda f: f.t2i,
    # Only runs that probed (logged heldout_text_ppl) have completions: the probe runs for pretrained
    # initialisations only, and a random arm has no file to miss.
    lambda runs, d, name: tables.table1_completions(
        completion_records(runs[runs["run_id"].isin(d.probed)], d.tokens, d.fetch), d.out_dir, name
    ),
    caption="Table 1: greedy completions before and after text-to-image training.",
)
TEXT_ABILITY = Figure(
    "text_ability",
    T2I,
    "text-to-image train runs",
    lambda f: f.t2i,
    lambda runs, d, name: curves.text_ability(d.curves_of(runs), d.out_dir, name),
    caption="Held-out text perplexity of the pretrained runs through text-to-image training (forgetting).",
)
SENSITIVITY_LR = Figure(
    "sensitivity_lr",
    ("lr",),
    "text-to-image train runs",
    lambda f: f.t2i,
    lambda runs, d, name: sensitivity.sensitivity(
        sensitivity.final_points(runs, d.finals), "lr", d.out_dir, name
    ),
    caption="Final image-token loss against the peak learning rate, per initialisation.",
)
SENSITIVITY_BATCH = Figure(
    "sensitivity_batch",
    ("batch",),
    "text-to-image train runs",
    lambda f: f.t2i,
    lambda runs, d, name: sensitivity.sensitivity(
        sensitivity.final_points(runs, d.finals), "batch_tokens", d.out_dir, name
    ),
    caption="Final image-token loss against the batch size, per initialisation.",
)
FIGURES: tuple[Figure, ...] = (
    FIGURE3,
    FIGURE4,
    FIGURE5,
    FIGURE6,
    FIGURE7,
    TABLE1,
    TEXT_ABILITY,
    SENSITIVITY_LR,
    SENSITIVITY_BATCH,
)
PRODUCERS = {sweep for figure in FIGURES for sweep in figure.sweeps}


@dataclass
class Report:
    """What plot_report drew (paths) and skipped (figure name -> why)."""

    paths: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def plot_all(uri: str, out_dir: Path, sweep: str | None = None) -> list[Path]:
    """Draw every figure and table that the store's runs (of `sweep`, if given) have data for; the paths."""
    return plot_report(uri, out_dir, sweep).paths


def plot_report(uri: str, out_dir: Path, sweep: str | None = None) -> Report:
    """plot_all, also saying which figures were skipped and why (each is logged as well)."""
    out_dir = Path(out_dir)
    store = tracking.describe_store(uri)
    which = f"for sweep '{sweep}'" if sweep else "(any sweep)"
    fetched = tracking.fetch_runs(uri, sweep=sweep)
    table = runs.run_table(fetched)
    table = table[table["stage"].notna()]  # not the sweeps' parent runs
    train = table[table["stage"] == stages.TRAIN]
    if train.empty and not (table["stage"] == stages.ALIGN).any():
        raise AblateError(f"No training runs {which} in the {store}. {HOW_TO_PRODUCE}")
    evals = runs.evaluations(table)
    frames = Frames(table, train, train[runs.is_t2i(train)], evals)
    selected = {figure.name: figure.runs_of(frames) for figure in FIGURES}

    # Histories of every train run (the summary has a row each), of the runs the figures selected (the
    # align runs) and of the evaluate runs (their metrics); curves only of the first two.
    curve_ids = [*dict.fromkeys([*train["run_id"], *(i for s in selected.values() for i in s["run_id"])])]
    hist = tracking.fetch_histories(uri, [*curve_ids, *evals.to_numpy()], HISTORY_KEYS)
    finals = final_values(hist)
    curve_runs = fetched[fetched["run_id"].isin(curve_ids)]
    data = Fetched(
        curves=curves_from_histories(curve_runs, hist, CURVE_KEYS),
        finals=finals,
        tokens=finals[finals["key"] == TOKENS].set_index("run_id")["last"],
        evals=evals,
        fetch=ArtifactFetcher(uri, out_dir / ARTIFACTS_DIR),
        out_dir=out_dir,
    )
    report = Report()
    for figure in FIGURES:
        producers = figure.sweeps
        how = f"produce them with `ablate launch sweeps/{producers[0]}.yaml`"
        among = f"of sweep {' or '.join(producers)}" + (
            f" among the runs of sweep '{sweep}'" if sweep else ""
        )
        # A sweep that produces other figures (lr) draws only its own, even where it shares runs with the
        # producers of this one; a sweep that produces none itself (paper includes the others) draws all.
        other = sweep in PRODUCERS and sweep not in producers
        try:
            if other:
                raise AblateError(
                    f"not drawn for sweep '{sweep}' (its runs come from sweep {' or '.join(producers)})"
                )
            if selected[figure.name].empty:
                raise AblateError(f"no {figure.needs} {among}")
            report.paths += figure.draw(selected[figure.name], data, figure.name)
        except AblateError as exc:  # a figure whose runs are not in this store/sweep: draw the others
            message = f"{figure.name}: {exc}; {how}"
            report.skipped[figure.name] = message
            log.log(logging.INFO if other else logging.WARNING, "skipping %s", message)
    if not report.paths and not train.empty and not hist["run_id"].isin(train["run_id"]).any():
        statuses = ", ".join(f"{n} {s}" for s, n in train["status"].value_counts().items())
        raise AblateError(
            f"{len(train)} training run(s) {which} in the {store} ({statuses}), but none has logged metrics "
            "yet. Wait for them (`ablate status`), or relaunch the sweep if they failed."
        )
    if not train.empty:
        summary = tables.summary_frame(train, finals, evals)
        report.paths += tables.write_summary(summary, out_dir)
        report.paths += seeds.write_seed_tables(summary, out_dir)
    if not report.paths:
        raise AblateError(
            f"No figure could be drawn from the {store} {which}: {'; '.join(report.skipped.values())}"
        )
    return report


class ArtifactFetcher:
    """Downloads a run's artifact into `root/<run id>/`; AblateError if the run does not have it."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri, self.root = uri, Path(root)

    def __call__(self, run_id: str, path: str) -> Path:
        return tracking.download_artifact(self.uri, run_id, path, self.root / run_id)


def _first_artifact(candidates: pd.DataFrame, artifact_run: Callable[[pd.Series], str], path: str,
                    fetch: ArtifactFetcher) -> tuple[pd.Series, Path] | None:  # fmt: skip
    """The best candidate run (in order) whose artifact downloads, trying at most MAX_TRIES."""
    for _, row in candidates.head(MAX_TRIES).iterrows():
        try:
            return row, fetch(artifact_run(row), path)
        except AblateError as exc:
            log.warning("%s of %s (%s): %s", path, row["label"], row["arm"], exc)
    return None


def sample_panels(
    train: pd.DataFrame, evals: pd.Series, finals: pd.DataFrame, tokens: pd.Series, fetch: ArtifactFetcher
) -> pd.DataFrame:
    """Figure 5's panels: per initialisation label, the best of its train runs (finished, most tokens)
    whose evaluate run has samples.png, with that run's caption-match fractions."""
    last = finals.set_index(["run_id", "key"])["last"] if not finals.empty else pd.Series(dtype=float)
    rows = []
    for label, candidates in runs.pick_per_label(train, tokens).groupby("label", sort=False):
        found = _first_artifact(candidates, lambda r: evals[r["run_id"]], samples.SAMPLES_ARTIFACT, fetch)
        if found is None:
            continue
        row, local = found
        evaluate_id = evals[row["run_id"]]
        rows.append(
            {
                "init": label,
                "arm": row["arm"],
                "train_run_id": row["run_id"],
                "evaluate_run_id": evaluate_id,
                **{m: last.get((evaluate_id, m)) for m in samples.PANEL_METRICS},
                "artifact": samples.SAMPLES_ARTIFACT,
                "local_path": str(local),
                "candidates": len(candidates),
            }
        )
    return pd.DataFrame(rows, columns=samples.PANEL_COLUMNS[1:])


def completion_records(train: pd.DataFrame, tokens: pd.Series, fetch: ArtifactFetcher) -> pd.DataFrame:
    """Table 1's records: per initialisation label, the completions.jsonl of its best train run."""
    parts = []
    for _, candidates in runs.pick_per_label(train, tokens).groupby("label", sort=False):
        found = _first_artifact(candidates, lambda r: r["run_id"], tables.COMPLETIONS_ARTIFACT, fetch)
        if found is not None:
            row, local = found
            parts.append(tables.read_completions(local, row["label"], str(row["arm"]), row["run_id"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=tables.COMPLETION_COLUMNS)
