"""`ablate report`: one self-contained HTML page of a sweep's figures, tables and the paper's findings.

The page embeds every figure `ablate plot` drew (PNG as base64: it works offline and mailed), the
per-arm summary, and for each of the paper's findings (FINDINGS) the numbers measured at this scale and
a verdict: reproduced, not reproduced, one seed: not established, or not run (the sweep lacks the arms).
Findings read the CSVs plot wrote (summary.csv, comparisons.csv, the figures' points), so the report
says exactly what the figures show. Each arm links to its train run in the MLflow UI (`ablate ui`).

What a verdict rests on. A finding that compares two arms (pretrained vs random, contrastive vs random,
frozen vs fully trainable; the text-token loss gap) rests on several seeds per arm and the 95% interval
of their seed-paired difference (analysis.seeds): with one seed a difference cannot be told from
seed-to-seed variation (the per-step loss alone swings by about 0.01 around its final value), so the
verdict is ONE_SEED, with the one-seed numbers and the sweep file that runs the seeds. A finding about a
run against its own start rests on that run: forgetting (the step-0 probe is the pretrained model
itself, the same for every seed) and the align loss's plateau (one align run serves every seed); with
several runs, each must show it.
"""

from __future__ import annotations

import base64
import html
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ablate import paper, tracking
from ablate.atomic import atomic_write_text
from ablate.stages import names as stages
from analysis.plot import FIGURES, plot_report
from analysis.runs import label_rank
from analysis.seeds import paired_interval
from analysis.tables import PAPER_AFTER, PAPER_BEFORE, human

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
ONE_SEED = "one seed: not established"
STATUS_CLASS = {
    REPRODUCED: "reproduced",
    NOT_REPRODUCED: "not-reproduced",
    ONE_SEED: "one-seed",
    NOT_RUN: "not-run",
}
PLATEAU = 0.05  # the align loss's last tenth within 5% of the tenth before: it has stopped falling
FORGOT = 1.2  # held-out text perplexity at least 1.2x its value before text-to-image training
# The sweep file that runs a comparison's arms with several seeds, and how many at demo scale
# (tests/test_report.py holds these to the files).
SEEDED_SWEEPS = {
    "pretrained - random": ("sweeps/t2i_init.yaml", 3),
    "contrastive - random": ("sweeps/contrastive.yaml", 3),
    "freeze": ("sweeps/freeze.yaml", 3),
}
SEED_OF_ARM = re.compile(r"\bseed=(\d+)$")  # ablate.sweep labels the runs of `seeds: N` ' seed=k'
UI_KEY = "ablate.ui_url"  # where the page remembers (localStorage) a reader's own UI address


def default_ui_url() -> str:
    """`ablate ui`'s default address: the defaults of tracking.ui_command, which starts it."""
    defaults = inspect.signature(tracking.ui_command).parameters
    return f"http://{defaults['host'].default}:{defaults['port'].default}"


@dataclass(frozen=True)
class Verdict:
    status: str
    numbers: str


@dataclass(frozen=True)
class Finding:
    """One claim of the paper and how this sweep's outputs test it."""

    claim: str
    check: Callable[[Path], Verdict]


def _csv(out_dir: Path, name: str) -> pd.DataFrame:
    path = out_dir / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _comparison(out_dir: Path, prefix: str, metric: str) -> pd.DataFrame:
    table = _csv(out_dir, "comparisons")
    if table.empty:
        return table
    return table[table["comparison"].str.startswith(prefix) & (table["metric"] == metric)]


def num(value: float, digits: int = 3) -> str:
    """A number at `digits` significant digits, thousands grouped: 1.9, 0.512, 523, 12,345."""
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _seeds_hint(key: str) -> str:
    path, seeds = SEEDED_SWEEPS[key]
    return (
        f"`ablate launch {path}` runs each arm with {seeds} seeds at demo scale; their 95% interval decides"
    )


def _seeded(row: Any) -> bool:
    """A comparisons.csv row (itertuples) with several seeds and an interval."""
    return bool(row.seeds > 1 and pd.notna(row.ci_low) and pd.notna(row.ci_high))


def _combine(parts: list[Verdict]) -> Verdict:
    """One verdict from a finding's parts: refuted by any, else unestablished by any, else reproduced;
    parts not run are left out."""
    ran = [v for v in parts if v.status != NOT_RUN] or parts
    numbers = "; ".join(v.numbers for v in ran)
    for status in (NOT_RUN, NOT_REPRODUCED, ONE_SEED):
        if any(v.status == status for v in ran):
            return Verdict(status, numbers)
    return Verdict(REPRODUCED, numbers)


def _no_gain(
    rows: pd.DataFrame, what: str, key: str, higher_is_better: bool = False, fmt: str = ".4f"
) -> Verdict:
    """'a is no better than b' over comparisons.csv rows (a - b): reproduced when the seeds' 95% interval
    does not exclude 0 in a's favour, not reproduced when it does; one seed establishes neither."""
    if rows.empty:
        return Verdict(NOT_RUN, f"no {what} pair in this sweep")
    parts, seeded, gain = [], False, False
    for r in rows.itertuples():
        where = f" ({r.context})" if isinstance(r.context, str) and r.context and len(rows) > 1 else ""
        head = f"{what}{where}: {r.a_mean:{fmt}} vs {r.b_mean:{fmt}}"
        if _seeded(r):
            better = r.ci_low > 0 if higher_is_better else r.ci_high < 0
            worse = r.ci_high < 0 if higher_is_better else r.ci_low > 0
            seeded, gain = True, gain or better
            word = "a gain" if better else "worse" if worse else "no difference established"
            parts.append(
                f"{head}, difference {r.difference:+{fmt}}, 95% CI [{r.ci_low:+{fmt}}, {r.ci_high:+{fmt}}] "
                f"over {r.seeds} seeds: {word}"
            )
        else:
            rel = f" ({r.difference / r.b_mean:+.1%})" if r.b_mean else ""
            parts.append(f"{head}{rel} with one seed")
    if not seeded:
        return Verdict(ONE_SEED, "; ".join(parts) + f"; {_seeds_hint(key)}")
    return Verdict(NOT_REPRODUCED if gain else REPRODUCED, "; ".join(parts))


def image_loss_no_gain(out_dir: Path) -> Verdict:
    rows = _comparison(out_dir, "pretrained - random", "final_image_loss")
    return _no_gain(rows, "image-token loss, pretrained vs random", "pretrained - random")


def caption_match_no_gain(out_dir: Path) -> Verdict:
    pairs = (("pretrained - random", "pretrained vs random"),
             ("contrastive - random", "contrastive vs random image-code embeddings"))  # fmt: skip
    parts = [
        _no_gain(
            _comparison(out_dir, key, "caption_match_seen"), f"caption match (seen), {what}", key, True, ".3f"
        )
        for key, what in pairs
    ]
    if all(p.status == NOT_RUN for p in parts):
        return Verdict(NOT_RUN, "no caption match of a pretrained and a random text-to-image arm")
    return _combine(parts)


def _plateau(out_dir: Path) -> Verdict:
    """The align loss has stopped falling: per align run, its last tenth of steps within PLATEAU of the
    tenth before."""
    points = _csv(out_dir, "figure7_contrastive")
    if points.empty:
        return Verdict(NOT_RUN, "no align run")
    raw = points[(points["metric"] == "loss") & (points["kind"] == "raw")]
    parts, ok = [], True
    for _, run in raw.groupby(
        raw["run_id"] if "run_id" in raw else pd.Series(0, index=raw.index), sort=False
    ):
        values = run.sort_values("step")["value"].to_numpy()
        tenth = max(1, len(values) // 10)
        last, before = values[-tenth:].mean(), values[-2 * tenth : -tenth].mean()
        flat = bool(before) and abs(last - before) / before < PLATEAU
        ok = ok and flat
        parts.append(
            f"contrastive loss over the last tenth {last:.3f} vs the tenth before {before:.3f} "
            f"({'plateau' if flat else 'still falling'})"
        )
    if not parts:
        return Verdict(NOT_RUN, "no align loss logged")
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(parts))


def contrastive_no_gain(out_dir: Path) -> Verdict:
    rows = _comparison(out_dir, "contrastive - random", "final_image_loss")
    gain = _no_gain(
        rows, "image-token loss, contrastive vs random image-code embeddings", "contrastive - random"
    )
    return gain if gain.status == NOT_RUN else _combine([gain, _plateau(out_dir)])


def _text_loss_per_run(points: pd.DataFrame) -> pd.DataFrame:
    """Per run of figure 4's raw text-token loss: init, seed, the loss at its first step, its mean over the
    first 10% of the run's tokens and over the last 5%."""
    rows = []
    runs = points["run_id"] if "run_id" in points else points["init"]
    for _, run in points.groupby(runs, sort=False):
        run = run.sort_values("tokens")
        end, tokens = float(run["tokens"].max()), run["tokens"]
        arm = run["arm"].iloc[0] if "arm" in run else None
        seed = SEED_OF_ARM.search(arm) if isinstance(arm, str) else None
        rows.append(
            {
                "init": run["init"].iloc[0],
                "seed": int(seed.group(1)) if seed else 0,
                "first": float(run["value"].iloc[0]),
                "early": float(run[tokens <= 0.1 * end]["value"].mean()),
                "late": float(run[tokens >= 0.95 * end]["value"].mean()),
            }
        )
    return pd.DataFrame(rows).groupby(["init", "seed"]).mean()


def text_loss_gap_closes(out_dir: Path) -> Verdict:
    """Pretrained below random early on text tokens (the first 10% of tokens), the gap smaller by the
    end (the last 5%): over seeds, both intervals must exclude 0 (seed-paired, per seed the early gap and
    the early gap less the late one's size)."""
    points = _csv(out_dir, "figure4_loss_split")
    if points.empty:
        return Verdict(NOT_RUN, "no text-to-image runs")
    runs = _text_loss_per_run(points[(points["metric"] == "text_loss") & (points["kind"] == "raw")])
    inits = sorted(set(runs.index.get_level_values("init")), key=label_rank)
    if not {"pretrained", "random"} <= set(inits):
        return Verdict(NOT_RUN, "needs both a pretrained and a random text-to-image run")
    by = {i: runs.xs(i, level="init") for i in inits}
    mean = {i: by[i].mean() for i in inits}
    gap_early = mean["random"]["early"] - mean["pretrained"]["early"]
    gap_late = mean["random"]["late"] - mean["pretrained"]["late"]
    numbers = (
        "text-token loss at the first step: " + ", ".join(f"{i} {mean[i]['first']:.3f}" for i in inits)
        + "; mean over the first 10% of tokens: " + ", ".join(f"{i} {mean[i]['early']:.3f}" for i in inits)
        + f"; last 5%: pretrained {mean['pretrained']['late']:.3f}, random {mean['random']['late']:.3f} "
        f"(gap {gap_early:+.3f} -> {gap_late:+.3f})"
    )  # fmt: skip
    pretrained, random = by["pretrained"], by["random"]
    seeds = pretrained.index.intersection(random.index)
    if len(seeds) < 2:
        return Verdict(ONE_SEED, f"{numbers}, one seed; {_seeds_hint('pretrained - random')}")
    early = random.loc[seeds, "early"] - pretrained.loc[seeds, "early"]
    late = random.loc[seeds, "late"] - pretrained.loc[seeds, "late"]
    n, _, early_lo, early_hi = paired_interval(early, pd.Series(0.0, index=seeds))
    _, _, close_lo, close_hi = paired_interval(early - late.abs(), pd.Series(0.0, index=seeds))
    ok = early_lo > 0 and close_lo > 0
    return Verdict(
        REPRODUCED if ok else NOT_REPRODUCED,
        f"{numbers}; over {n} seeds, 95% CI of the early gap [{early_lo:+.3f}, {early_hi:+.3f}], of its "
        f"closing (early gap less the late gap's size) [{close_lo:+.3f}, {close_hi:+.3f}]",
    )


def forgetting(out_dir: Path) -> Verdict:
    """Every pretrained run's held-out text perplexity ends at least FORGOT times its value before
    training (the step-0 probe: the pretrained model itself)."""
    points = _csv(out_dir, "text_ability")
    if points.empty or "pretrained" not in set(points["init"]):
        return Verdict(NOT_RUN, "no pretrained text-to-image run with the text-ability probe")
    pretrained = points[points["init"] == "pretrained"]
    runs = pretrained["run_id"] if "run_id" in pretrained else pretrained["init"]
    ends = []
    for _, run in pretrained.groupby(runs, sort=False):
        run = run.sort_values("tokens")
        ends.append(
            (float(run["value"].iloc[0]), float(run["value"].iloc[-1]), float(run["tokens"].iloc[-1]))
        )
    first, last, tokens = (pd.Series(column) for column in zip(*ends, strict=True))
    factor = last / first
    ok = bool((factor > FORGOT).all())

    def span(values: pd.Series, show: Callable[[float], str] = num) -> str:
        low, high = show(values.min()), show(values.max())
        return low if low == high else f"{low} to {high}"

    runs_note = f" over {len(ends)} runs" if len(ends) > 1 else ""
    return Verdict(
        REPRODUCED if ok else NOT_REPRODUCED,
        f"held-out text perplexity{runs_note} {span(first)} before training, {span(last)} after "
        f"{span(tokens, human)} tokens ({span(factor, lambda v: 'x' + num(v))})",
    )


def freezing_ends_above(out_dir: Path) -> Verdict:
    """Every partial-freeze setting ends above the fully trainable arm: over seeds, the 95% interval of
    each setting's final loss less the full arm's above 0."""
    table = _csv(out_dir, "comparisons")
    rows = (
        table[table["comparison"].str.contains("- all (unconditional", regex=False)]
        if not table.empty
        else table
    )
    rows = rows[rows["metric"] == "final_loss"] if not rows.empty else rows
    if rows.empty:
        return Verdict(
            NOT_RUN, "needs the fully trainable unconditional arm beside a frozen one (sweeps/freeze.yaml)"
        )
    parts, seeded, ok = [], False, True
    for r in rows.itertuples():
        head = f"{r.comparison.split(' - ')[0]}: {r.a_mean:.3f} vs all {r.b_mean:.3f}"
        if _seeded(r):
            seeded, above = True, r.ci_low > 0
            ok = ok and above
            parts.append(
                f"{head}, difference 95% CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}] over {r.seeds} seeds"
                + ("" if above else ": not above")
            )
        else:
            parts.append(f"{head} with one seed")
    if not seeded:
        return Verdict(ONE_SEED, "; ".join(parts) + f"; {_seeds_hint('freeze')}")
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(parts))


FINDINGS = (
    Finding("Image-token loss: pretraining the language model does not help (pretrained vs random init).",
            image_loss_no_gain),
    Finding(f"Generation quality: pretraining does not help (the paper: FID {paper.FID['pretrained']} pretrained "
            f"vs {paper.FID['random']} random); here the exact caption match of samples for seen "
            "combinations, pretrained and contrastive vs random.", caption_match_no_gain),
    Finding("Text-token loss: lower early for the pretrained model, the gap closing with training.",
            text_loss_gap_closes),
    Finding("The pretrained model forgets language: its held-out text perplexity rises.", forgetting),
    Finding("Every partial-freeze setting ends above full fine-tuning (unconditional generation).",
            freezing_ends_above),
    Finding("Contrastive alignment of the image embeddings plateaus and its initialisation gives no gain.",
            contrastive_no_gain),
)  # fmt: skip


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _run_links(uri: str, sweep: str | None, summary: pd.DataFrame, ui_url: str) -> dict[str, str]:
    """train run id -> its arm's run in the MLflow UI (the arm's row there), else the train run itself."""
    if summary.empty:
        return {}
    runs = tracking.fetch_runs(uri, sweep=sweep)
    if runs.empty:
        return {}
    links = {
        r: f"{ui_url}/#/experiments/{e}/runs/{r}"
        for r, e in zip(runs["run_id"], runs["experiment_id"], strict=True)
    }
    arms = tracking.fetch_runs(uri, sweep=sweep, arms=True)
    by_train_key = f"tags.{tracking.TAG_STAGE_KEY_PREFIX}{stages.TRAIN}"
    if not arms.empty and by_train_key in arms:
        arm_of_key = {
            k: f"{ui_url}/#/experiments/{e}/runs/{r}"
            for k, r, e in zip(arms[by_train_key], arms["run_id"], arms["experiment_id"], strict=True)
        }
        run_key = f"tags.{tracking.TAG_RUN_KEY}"
        for rid, key in zip(
            runs["run_id"], runs.get(run_key, pd.Series(index=runs.index, dtype=object)), strict=True
        ):
            if key in arm_of_key:
                links[rid] = arm_of_key[key]
    return {rid: links[rid] for rid in summary["train_run_id"] if rid in links}


def _arms_pages(uri: str, sweep: str | None, ui_url: str) -> dict[str, str]:
    """Sweep -> its arms' table in the MLflow UI (the saved view with their params and results)."""
    arms = tracking.fetch_runs(uri, sweep=sweep, arms=True)
    if arms.empty:
        return {}
    pairs = arms[[f"tags.{tracking.TAG_SWEEP}", "experiment_id"]].drop_duplicates()
    return {str(s): tracking.arms_link(ui_url, str(e)) for s, e in pairs.itertuples(index=False)}


def _cell(value: object) -> str:
    """A summary value as the page prints it: numbers at 4 significant digits (1.9 stays 1.9)."""
    if isinstance(value, float):
        return "" if math.isnan(value) else num(value, 4)
    return html.escape(str(value))


def table1_html(out_dir: Path) -> str:
    """Table 1 (table1_completions.csv) as an HTML table that wraps its text; the paper's columns only
    where a prompt is one of the paper's (scale=paper's prompts: ablate.paper)."""
    table = _csv(out_dir, "table1_completions")
    if table.empty:
        return ""
    esc = html.escape
    theirs = [c for c in (PAPER_BEFORE, PAPER_AFTER) if c in table and table[c].notna().any()]

    def text(value: object, ran: object) -> str:
        if pd.isna(ran):  # no probe at that point
            return "—"
        return esc(value) if isinstance(value, str) and value else "<i>(empty)</i>"

    head = ["initialisation", "prompt", "before training", "after training", "after (tokens, step)", *theirs]
    # Fixed layout needs the widths (%): completions get the room, the short columns little.
    widths = [10, 20, 25, 25, 10] if not theirs else [9, 16, 18, 18, 9, 15, 15]
    cols = "".join(f"<col style='width:{w}%'>" for w in widths)
    rows = [f"<table class='completions'><colgroup>{cols}</colgroup><tr>"]
    rows[0] += "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
    for r in table.to_dict("records"):
        when = "no later probe yet"
        if pd.notna(r["after_step"]):
            when = f"{human(r['after_tokens'])} tokens, step {int(r['after_step'])}"
        before = text(r["before"], r["before_step"])
        if pd.notna(r["before_step"]) and r["before_step"] != 0:
            before += f" (step {int(r['before_step'])}: no step-0 probe)"
        cells = [esc(str(r["init"])), esc(str(r["prompt"])), before, text(r["after"], r["after_step"]), when]
        cells += [esc(r[c]) if isinstance(r[c], str) else "" for c in theirs]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = (
        "<i>Before</i>: the probe at step 0, before the first update; <i>after</i>: the run's last probe. "
        "Greedy completions over the text vocabulary."
    )
    if theirs:
        note += " <i>Paper</i>: the paper's completions of its own prompts, after 5B tokens for 'after'."
    return "".join(rows) + f"</table><p class='note'>{note}</p>"


# Rewrites every MLflow link (a[data-ui-path]) against the address the reader gives, remembered in
# localStorage for the next report; ?ui=URL in the page's address does the same once.
UI_SCRIPT = r"""<script>
(function () {
  var field = document.getElementById('ui-url');
  function apply(base) {
    base = base.trim().replace(/\/+$/, '');
    if (!/^https?:\/\/[^\s"'<>]+$/.test(base)) return false;
    document.querySelectorAll('a[data-ui-path]').forEach(function (a) {
      a.href = base + a.getAttribute('data-ui-path');
    });
    field.value = base;
    return true;
  }
  document.getElementById('ui-form').addEventListener('submit', function (event) {
    event.preventDefault();
    if (apply(field.value)) { try { localStorage.setItem('KEY', field.value); } catch (e) {} }
  });
  var given = new URLSearchParams(location.search).get('ui'), saved = null;
  try { saved = localStorage.getItem('KEY'); } catch (e) {}
  if (given || saved) apply(given || saved);
})();
</script>""".replace("KEY", UI_KEY)


def render(
    out_dir: Path,
    title: str,
    links: dict[str, str],
    skipped: dict[str, str],
    arms_pages: dict[str, str] | None = None,
    ui_url: str | None = None,
) -> str:
    """The page's HTML from plot's outputs in out_dir; `links`: train run id -> its MLflow page and
    `arms_pages`: sweep -> its arms there, both under `ui_url` (default: `ablate ui`'s address), which
    a control on the page rewrites."""
    esc = html.escape
    ui_url = (ui_url or default_ui_url()).rstrip("/")

    def ui_link(url: str, text: str) -> str:
        path = f" data-ui-path={esc(url[len(ui_url) :])!r}" if url.startswith(ui_url) else ""
        return f"<a href={esc(url)!r}{path}>{esc(text)}</a>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;vertical-align:top}.reproduced{color:#1a7f37}.not-reproduced{color:#cf222e}"
        ".not-run{color:#777}.one-seed{color:#9a6700;background:#fff8c5;font-style:italic}"
        "table.completions{table-layout:fixed;width:100%}table.completions td{white-space:pre-wrap;"
        "overflow-wrap:anywhere}.note{font-size:13px;color:#555}"
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if arms_pages:
        parts.append(
            "<p>In MLflow (start it with <code>ablate ui</code>): "
            + ", ".join(ui_link(u, f"the arms of {s}") for s, u in sorted(arms_pages.items()))
            + ", one row each, with their params and results.</p>"
        )
    if arms_pages or links:
        parts.append(
            "<form id='ui-form' class='note'>MLflow links point at <input id='ui-url' size='30' "
            f"value={esc(ui_url)!r}> <button>use this address</button> (where <code>ablate ui --port N</code> "
            "serves the UI, if not there; the page remembers it)</form>"
        )
    parts.append(
        "<h2 id='findings'>The paper's findings at this scale</h2><table><tr><th>finding</th><th>verdict</th>"
        "<th>measured</th></tr>"
    )
    for f in FINDINGS:
        v = f.check(out_dir)
        parts.append(
            f"<tr><td>{esc(f.claim)}</td><td class='{STATUS_CLASS[v.status]}'><b>{esc(v.status)}</b></td>"
            f"<td>{esc(v.numbers)}</td></tr>"
        )
    parts.append("</table>")
    summary = _csv(out_dir, "summary")
    if not summary.empty:
        parts.append("<h2 id='summary'>Runs</h2><table><tr>")
        cols = [c for c in ("arm", "final_loss", "final_text_loss", "final_image_loss", "heldout_text_ppl",
                            "caption_match_seen", "scene_valid", "fid") if c in summary]  # fmt: skip
        parts.append("".join(f"<th>{esc(c)}</th>" for c in cols) + "<th>MLflow</th></tr>")
        for _, row in summary.iterrows():
            cells = "".join(f"<td>{_cell(row[c])}</td>" for c in cols)
            link = links.get(row["train_run_id"])
            parts.append(f"<tr>{cells}<td>{ui_link(link, 'run') if link else ''}</td></tr>")
        parts.append("</table>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for fig in FIGURES:
        png = out_dir / f"{fig.name}.png"
        md = out_dir / f"{fig.name}.md"
        table = table1_html(out_dir) if fig.name == "table1_completions" else ""
        if png.is_file():
            parts.append(f"<figure><img src='{_png(png)}' alt='{esc(fig.name)}'><figcaption>{esc(fig.caption)}"
                         "</figcaption></figure>")  # fmt: skip
        elif table:
            parts.append(f"<h3>{esc(fig.caption)}</h3>{table}")
        elif md.is_file():
            parts.append(f"<h3>{esc(fig.caption)}</h3><pre>{esc(md.read_text(encoding='utf-8'))}</pre>")
        elif fig.name in skipped:
            parts.append(f"<p class='not-run'>{esc(fig.caption)} Not drawn: {esc(skipped[fig.name])}</p>")
    if arms_pages or links:
        parts.append(UI_SCRIPT)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(uri: str, results: Path, sweep: str | None = None, ui_url: str | None = None) -> Path:
    """Draw the figures (as `ablate plot`) into results/figures and write results/report-<sweep>.html
    (results/report.html without a sweep), its MLflow links under `ui_url` (default: `ablate ui`'s)."""
    out_dir = Path(results) / "figures"
    report = plot_report(uri, out_dir, sweep)
    summary = _csv(out_dir, "summary")
    ui_url = (ui_url or default_ui_url()).rstrip("/")
    title = f"ablate report: sweep {sweep}" if sweep else "ablate report: every tracked sweep"
    links, arms = _run_links(uri, sweep, summary, ui_url), _arms_pages(uri, sweep, ui_url)
    page = render(out_dir, title, links, report.skipped, arms, ui_url)
    path = Path(results) / (f"report-{sweep}.html" if sweep else "report.html")
    atomic_write_text(path, page)
    return path
