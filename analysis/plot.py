"""`ablate plot`: every figure and table of the paper from the tracked runs, into one directory.

One fetch of the runs, one fetch of the metric histories of every run a figure needs, and downloads of
only the artifacts drawn (one samples.png and one completions.jsonl per initialisation). Each figure
draws the runs of the sweeps that produce it (docs/CONTRACTS.md "Figure -> sweeps"), restricted to the
runs of `sweep` when given. A sweep that produces figures (lr) draws only those; one that produces none
itself (paper, which includes the others) draws every figure its runs feed. A figure whose runs are
missing is skipped with a message naming the sweep file that produces them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate import tracking
from ablate.errors import AblateError
from analysis import curves, figures, runs, samples, sensitivity, tables
from analysis.frames import curves_from_histories, final_values

log = logging.getLogger(__name__)

# Figure -> (the sweeps whose runs it draws, the runs it needs, in words). The first sweep names the file
# to launch when they are missing (demo is the small version of several).
FIGURES: dict[str, tuple[tuple[str, ...], str]] = {
    "figure3_perplexity": (("t2i_init", "demo"), "text-to-image train runs"),
    "figure4_loss_split": (("t2i_init", "demo"), "text-to-image train runs"),
    "figure5_samples": (("t2i_init", "demo"), "evaluate runs of text-to-image train runs"),
    "figure6_freeze": (("freeze", "demo"), "unconditional train runs"),
    "figure7_contrastive": (("contrastive", "demo"), "align runs"),
    "table1_completions": (("t2i_init", "demo"), "text-to-image train runs"),
    "text_ability": (("t2i_init", "demo"), "text-to-image train runs"),
    "sensitivity_lr": (("lr",), "text-to-image train runs"),
    "sensitivity_batch": (("batch",), "text-to-image train runs"),
}
PRODUCERS = {sweep for sweeps, _ in FIGURES.values() for sweep in sweeps}
CURVE_KEYS = ("loss", "text_loss", "image_loss", "perplexity", "heldout_text_ppl", "temperature")
HISTORY_KEYS = (*CURVE_KEYS, "tokens", *tables.EVAL_METRICS)
ARTIFACTS_DIR = "artifacts"  # under out_dir: the downloaded samples.png / completions.jsonl, per run id
MAX_TRIES = 3  # per initialisation: runs tried for an artifact before giving up on it
HOW_TO_PRODUCE = (
    "Produce runs with `ablate launch sweeps/demo.yaml` (follow them with `ablate status demo`), "
    "or point MLFLOW_TRACKING_URI at the store that holds them."
)


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
    train = table[table["stage"] == runs.TRAIN_STAGE]
    if train.empty and not (table["stage"] == runs.ALIGN_STAGE).any():
        raise AblateError(f"No training runs {which} in the {store}. {HOW_TO_PRODUCE}")
    evals = runs.evaluations(table)
    t2i = train[runs.is_t2i(train)]
    selected = {
        name: frame[runs.in_sweeps(frame, FIGURES[name][0])]
        for name, frame in (
            ("figure3_perplexity", t2i),
            ("figure6_freeze", train[train["task"] == "uncond"]),
            ("figure7_contrastive", table[table["stage"] == runs.ALIGN_STAGE]),
            ("sensitivity_lr", t2i),
            ("sensitivity_batch", t2i),
        )
    }
    for name in ("figure4_loss_split", "table1_completions", "text_ability"):
        selected[name] = selected["figure3_perplexity"]
    selected["figure5_samples"] = selected["figure3_perplexity"].pipe(
        lambda f: f[f["run_id"].isin(evals.index)]
    )

    ids = [*train["run_id"], *selected["figure7_contrastive"]["run_id"], *evals.to_numpy()]
    hist = tracking.fetch_histories(uri, ids, HISTORY_KEYS)
    finals = final_values(hist)
    curve_runs = fetched[
        fetched["run_id"].isin([*train["run_id"], *selected["figure7_contrastive"]["run_id"]])
    ]
    frame = curves_from_histories(curve_runs, hist, CURVE_KEYS)
    tokens = finals[finals["key"] == "tokens"].set_index("run_id")["last"]

    def curves_of(name: str) -> pd.DataFrame:
        return frame[frame["run_id"].isin(selected[name]["run_id"])]

    fetch = ArtifactFetcher(uri, out_dir / ARTIFACTS_DIR)
    draws: dict[str, Callable[[], list[Path]]] = {
        "figure3_perplexity": lambda: figures.figure3_perplexity(curves_of("figure3_perplexity"), out_dir),
        "figure4_loss_split": lambda: figures.figure4_loss_split(curves_of("figure4_loss_split"), out_dir),
        "figure5_samples": lambda: samples.figure5_samples(
            sample_panels(selected["figure5_samples"], evals, finals, tokens, fetch), out_dir
        ),
        "figure6_freeze": lambda: curves.figure6_freeze(
            curves_of("figure6_freeze"), selected["figure6_freeze"], out_dir
        ),
        "figure7_contrastive": lambda: curves.figure7_contrastive(curves_of("figure7_contrastive"), out_dir),
        "table1_completions": lambda: tables.table1_completions(
            completion_records(selected["table1_completions"], tokens, fetch), out_dir
        ),
        "text_ability": lambda: curves.text_ability(curves_of("text_ability"), out_dir),
        "sensitivity_lr": lambda: sensitivity.sensitivity(
            sensitivity.final_points(selected["sensitivity_lr"], finals), "lr", out_dir, "sensitivity_lr"
        ),
        "sensitivity_batch": lambda: sensitivity.sensitivity(
            sensitivity.final_points(selected["sensitivity_batch"], finals),
            "batch_tokens",
            out_dir,
            "sensitivity_batch",
        ),
    }
    report = Report()
    for name, draw in draws.items():
        producers, what = FIGURES[name]
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
            if selected[name].empty:
                raise AblateError(f"no {what} {among}")
            report.paths += draw()
        except AblateError as exc:  # a figure whose runs are not in this store/sweep: draw the others
            message = f"{name}: {exc}; {how}"
            report.skipped[name] = message
            log.log(logging.INFO if other else logging.WARNING, "skipping %s", message)
    if not report.paths and not train.empty and not hist["run_id"].isin(train["run_id"]).any():
        statuses = ", ".join(f"{n} {s}" for s, n in train["status"].value_counts().items())
        raise AblateError(
            f"{len(train)} training run(s) {which} in the {store} ({statuses}), but none has logged metrics "
            "yet. Wait for them (`ablate status`), or relaunch the sweep if they failed."
        )
    if not train.empty:
        report.paths += tables.write_summary(tables.summary_frame(train, finals, evals), out_dir)
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
