"""Table 1 (greedy completions before and after text-to-image training) and summary.csv (one row per
training run with its final numbers). Pure functions over tidy frames; plot.py fetches what they need.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ablate import paper
from ablate.atomic import atomic_write_text
from ablate.errors import AblateError
from ablate.metrics import EVAL_METRICS, FINAL_TEXT_LOSS, HELDOUT_TEXT_PPL, LOSS, TOKENS, final
from ablate.train.final import FINAL_METRICS
from analysis.runs import label_rank

SUMMARY = "summary"  # summary.csv, which the report and the findings read
COMPLETIONS_ARTIFACT = "completions.jsonl"  # ablate.evaluate.text_ability.COMPLETIONS_FILE
COMPLETION_COLUMNS = ["init", "arm", "run_id", "step", "tokens", "prompt", "completion"]
# The paper's own completions of its Table 1 prompts, beside ours (empty for any other prompt).
PAPER_BEFORE, PAPER_AFTER = "paper, before", f"paper, after {paper.TABLE1_AFTER_TOKENS / 1e9:g}B tokens"
TABLE1_COLUMNS = [
    "init", "arm", "run_id", "prompt", "before_step", "before_tokens", "before", "after_step", "after_tokens",
    "after", PAPER_BEFORE, PAPER_AFTER,
]  # fmt: skip
SUMMARY_COLUMNS = [
    "sweeps", "arm", "init", "image_init", "task", "trainable", "lr", "batch_tokens", "scale", "seed", "status",
    "steps", TOKENS, *(final(m) for m in FINAL_METRICS), HELDOUT_TEXT_PPL, *EVAL_METRICS,
    "train_run_id", "evaluate_run_id",
]  # fmt: skip


def read_completions(path: Path, init: str, arm: str, run_id: str) -> pd.DataFrame:
    """A completions.jsonl artifact ({"step", "tokens", "completions": [{"prompt", "completion"}]} per
    line) as COMPLETION_COLUMNS rows, one per (probe, prompt)."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            for item in record["completions"]:
                rows.append(
                    (init, arm, run_id, int(record["step"]), float(record.get("tokens", np.nan)),
                     str(item["prompt"]), str(item["completion"]))
                )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise AblateError(f"{path}:{number}: not a completions record ({exc}): {line[:120]!r}") from exc
    return pd.DataFrame(rows, columns=COMPLETION_COLUMNS)


def human(tokens: float) -> str:
    """A token count as people read it: 0, 950, 12.3k, 4.1M, 5.0B."""
    if tokens is None or not np.isfinite(tokens):
        return "?"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(tokens) >= size:
            return f"{tokens / size:.3g}{unit}"
    return f"{tokens:.0f}"


def as_written(value: object) -> object:
    """A config number as a sweep file writes it: 1152 not 1152.0, 3e-4 not 0.00030000000000000003;
    strings pass through, a missing value is empty."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value
    if not math.isfinite(number):
        return "" if math.isnan(number) else str(number)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    short = float(f"{number:.6g}")  # sheds binary noise (0.1 * 3e-3); no config value needs 7 digits
    if abs(short) < 1e-3:  # a learning rate: 3e-4, 1.67e-4, as sweeps write them
        mantissa, exponent = f"{short:.5e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return repr(short)


AS_WRITTEN = ("lr", "batch_tokens", "seed", "seeds", "steps", "tokens")  # CSV columns of config and counts


def to_csv(frame: pd.DataFrame) -> str:
    """A frame as CSV text: AS_WRITTEN columns as_written, other numbers to 4 significant digits."""
    exact = {c: frame[c].map(as_written) for c in AS_WRITTEN if c in frame.columns}
    return frame.assign(**exact).to_csv(index=False, float_format="%.4g")


def table1_rows(completions: pd.DataFrame) -> pd.DataFrame:
    """Per run and prompt: the completion at the first probe (step 0: before any update) and at the last,
    and the paper's completions where the prompt is one of the paper's (ablate.paper.TABLE1_COMPLETIONS)."""
    out = []
    for run_id, run in completions.groupby("run_id", sort=False):
        first, last = run["step"].min(), run["step"].max()
        before = run[run["step"] == first].drop_duplicates("prompt", keep="last").set_index("prompt")
        after = run[run["step"] == last].drop_duplicates("prompt", keep="last").set_index("prompt")
        for prompt in dict.fromkeys([*before.index, *after.index]):
            b = before.loc[prompt] if prompt in before.index else None
            a = after.loc[prompt] if prompt in after.index and last != first else None
            out.append(
                {
                    "init": run["init"].iloc[0],
                    "arm": run["arm"].iloc[0],
                    "run_id": run_id,
                    "prompt": prompt,
                    "before_step": first if b is not None else np.nan,
                    "before_tokens": b["tokens"] if b is not None else np.nan,
                    "before": b["completion"] if b is not None else None,
                    "after_step": last if a is not None else np.nan,
                    "after_tokens": a["tokens"] if a is not None else np.nan,
                    "after": a["completion"] if a is not None else None,
                    PAPER_BEFORE: paper.TABLE1_COMPLETIONS.get(prompt, {}).get("before"),
                    PAPER_AFTER: paper.TABLE1_COMPLETIONS.get(prompt, {}).get("after"),
                }
            )
    table = pd.DataFrame(out, columns=TABLE1_COLUMNS)
    return table.sort_values("init", key=lambda s: s.map(label_rank), kind="stable").reset_index(drop=True)


def _cell(text: object) -> str:
    if not isinstance(text, str):
        return "—"
    return (
        text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", " ⏎ ").strip() or "∅"
    )


def table1_completions(completions: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Table 1: for each initialisation (one run each), the greedy completion of each probe prompt before
    training (step 0) and after the last probe, with the tokens trained by then, beside the paper's own
    completions of its prompts (columns left out of the markdown when no prompt is the paper's). Writes
    <name>.md (markdown) and .csv (TABLE1_COLUMNS); the paths."""
    if completions.empty:
        raise AblateError(f"table 1: no {COMPLETIONS_ARTIFACT} record of a text-to-image training run")
    table = table1_rows(completions)
    # The paper's columns only where a prompt is the paper's (scale=paper's): else they would be empty.
    ours = not table[PAPER_BEFORE].notna().any() and not table[PAPER_AFTER].notna().any()
    lines = [
        "# Table 1: greedy completions before and after text-to-image training",
        "",
        "*Before*: the probe at the first step logged (step 0: before the first update). *After*: the "
        "run's last probe, after the tokens shown. Completions are greedy, text vocabulary only; "
        "⏎ marks a line break."
        + (
            ""
            if ours
            else " *Paper*: the completions the paper printed for its own prompts (its pretrained model, "
            f"before and after {human(paper.TABLE1_AFTER_TOKENS)} tokens of text-to-image training); "
            "empty for other prompts."
        ),
        "",
        "| initialisation | prompt | before training | after training | after (tokens, step) |"
        + ("" if ours else f" {PAPER_BEFORE} | {PAPER_AFTER} |"),
        "|---|---|---|---|---|" + ("" if ours else "---|---|"),
    ]
    for _, row in table.iterrows():
        when = "no later probe yet"
        if np.isfinite(row["after_step"]):
            when = f"{human(row['after_tokens'])} tokens, step {int(row['after_step'])}"
        before = _cell(row["before"])
        if np.isfinite(row["before_step"]) and row["before_step"] != 0:
            before += f" (step {int(row['before_step'])}: no step-0 probe)"
        # Not the paper's prompt: an empty cell (nothing to compare), not "—" (a missing completion).
        theirs = [_cell(row[c]) if isinstance(row[c], str) else "" for c in (PAPER_BEFORE, PAPER_AFTER)]
        lines.append(
            f"| {row['init']} | {_cell(row['prompt'])} | {before} | {_cell(row['after'])} | {when} |"
            + ("" if ours else f" {theirs[0]} | {theirs[1]} |")
        )
    runs = table.drop_duplicates("run_id")
    lines += ["", "Runs: " + "; ".join(f"{r.init}: {r.arm} (`{r.run_id}`)" for r in runs.itertuples())]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / f"{name}.md", out_dir / f"{name}.csv"
    atomic_write_text(md, "\n".join(lines) + "\n")
    atomic_write_text(csv, table.to_csv(index=False))
    return [md, csv]


def summary_frame(train: pd.DataFrame, finals: pd.DataFrame, evaluations: pd.Series) -> pd.DataFrame:
    """One row per training run (rows of the run table `train`): its config, and from `finals`
    (analysis.frames.final_values of its metrics and its evaluate run's): steps and tokens at the last
    step, final_<metric> = the mean over the last TAIL_FRACTION (5%) of logged steps, heldout_text_ppl = the last probe,
    the evaluate run's metrics. `evaluations`: train run id -> evaluate run id (analysis.runs.evaluations)."""
    if finals.empty:
        finals = pd.DataFrame(columns=["run_id", "key", "last_step", "last", "tail_mean"])
    by = finals.set_index(["run_id", "key"])
    summary = pd.DataFrame(
        {c: train[c].to_numpy() for c in SUMMARY_COLUMNS[: SUMMARY_COLUMNS.index("status") + 1]},
        index=train["run_id"].to_numpy(),
    )
    summary["train_run_id"] = train["run_id"].to_numpy()
    summary["evaluate_run_id"] = summary["train_run_id"].map(evaluations)

    def column(ids: pd.Series, key: str, field: str) -> np.ndarray:
        names = ids.astype(object).where(ids.notna(), "").to_numpy()
        index = pd.MultiIndex.from_arrays([names, np.full(len(ids), key)])
        if by.empty:
            return np.full(len(ids), np.nan)
        return by[field].reindex(index).to_numpy(dtype=np.float64)

    summary["steps"] = pd.array(column(summary["train_run_id"], LOSS, "last_step"), dtype="Int64")
    summary[TOKENS] = column(summary["train_run_id"], TOKENS, "last")
    for metric in FINAL_METRICS:
        summary[final(metric)] = column(summary["train_run_id"], metric, "tail_mean")
    # An unconditional run's only non-image targets are the structural specials (</image>, </doc>): its
    # "text" loss is no text ability, so it is left out rather than read as one.
    summary.loc[(summary["task"] == "uncond").to_numpy(), FINAL_TEXT_LOSS] = np.nan
    summary[HELDOUT_TEXT_PPL] = column(summary["train_run_id"], HELDOUT_TEXT_PPL, "last")
    for metric in EVAL_METRICS:
        summary[metric] = column(summary["evaluate_run_id"], metric, "last")
    return summary[SUMMARY_COLUMNS].reset_index(drop=True)


def write_summary(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """summary.csv into out_dir (SUMMARY_COLUMNS; config values as written, measured numbers to 4
    significant digits (to_csv); final_* are means over the last TAIL_FRACTION of steps)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{SUMMARY}.csv"
    atomic_write_text(path, to_csv(summary))
    return [path]
