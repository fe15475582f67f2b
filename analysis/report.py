"""`ablate report`: one self-contained HTML page of a sweep's figures, tables and the paper's findings.

The page embeds every figure `ablate plot` drew (PNG as base64: it works offline and mailed), the
per-arm summary, and for each of the paper's findings (FINDINGS) the numbers measured at this scale and
a verdict: reproduced, not reproduced, or not run (the sweep lacks the arms). Findings read the CSVs
plot wrote (summary.csv, comparisons.csv, the figures' points), so the report says exactly what the
figures show. Each arm links to its train run in the MLflow UI (`ablate ui`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablate import tracking
from ablate.atomic import atomic_write_text
from ablate.stages import names as stages
from analysis.plot import FIGURES, plot_report

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
SAME = 0.05  # two final losses within 5% of each other count as "no difference" with a single seed
UI_URL = "http://127.0.0.1:5000"  # ablate ui's default address


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


def _no_gain(rows: pd.DataFrame, what: str) -> Verdict:
    """Reproduced when a is not meaningfully below b: the interval includes 0 (seeds) or within SAME."""
    if rows.empty:
        return Verdict(NOT_RUN, f"no {what} pair in this sweep")
    parts, ok = [], True
    for r in rows.itertuples():
        rel = r.difference / r.b_mean if r.b_mean else math.nan
        if r.seeds > 1 and pd.notna(r.ci_low):
            gain = r.ci_high < 0  # a lower loss that the interval says is real
            parts.append(
                f"{r.a_mean:.4f} vs {r.b_mean:.4f}: difference {r.difference:+.4f}, 95% CI "
                f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] over {r.seeds} seeds"
            )
        else:
            gain = rel < -SAME
            parts.append(f"{r.a_mean:.4f} vs {r.b_mean:.4f} ({rel:+.1%}, one seed)")
        ok = ok and not gain
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(parts))


def image_loss_no_gain(out_dir: Path) -> Verdict:
    return _no_gain(_comparison(out_dir, "pretrained - random", "final_image_loss"), "pretrained/random")


def contrastive_no_gain(out_dir: Path) -> Verdict:
    verdict = _no_gain(_comparison(out_dir, "contrastive - random", "final_image_loss"), "contrastive/random")
    loss = _csv(out_dir, "figure7_contrastive")
    if verdict.status == NOT_RUN or loss.empty:
        return verdict
    raw = loss[(loss["metric"] == "loss") & (loss["kind"] == "raw")].sort_values("step")["value"].to_numpy()
    tenth = max(1, len(raw) // 10)
    last, before = raw[-tenth:].mean(), raw[-2 * tenth : -tenth].mean()
    plateau = abs(last - before) / before < SAME if before else False
    status = verdict.status if plateau else NOT_REPRODUCED
    note = f"contrastive loss over the last tenth {last:.3f} vs the tenth before {before:.3f}"
    return Verdict(status, f"{verdict.numbers}; {note} ({'plateau' if plateau else 'still falling'})")


def text_loss_gap_closes(out_dir: Path) -> Verdict:
    points = _csv(out_dir, "figure4_loss_split")
    if points.empty:
        return Verdict(NOT_RUN, "no text-to-image runs")
    raw = points[(points["metric"] == "text_loss") & (points["kind"] == "raw")]
    inits = {i: g.sort_values("tokens") for i, g in raw.groupby("init")}
    if not {"pretrained", "random"} <= set(inits):
        return Verdict(NOT_RUN, "needs both a pretrained and a random text-to-image run")
    end = float(raw["tokens"].max())

    def mean(init: str, lo: float, hi: float) -> float:
        g = inits[init]
        return float(g[(g["tokens"] >= lo) & (g["tokens"] <= hi)]["value"].mean())

    early = {i: mean(i, 0, 0.1 * end) for i in ("pretrained", "random")}
    late = {i: mean(i, 0.95 * end, end) for i in ("pretrained", "random")}
    gap_early, gap_late = early["random"] - early["pretrained"], late["random"] - late["pretrained"]
    ok = gap_early > 0 and abs(gap_late) < abs(gap_early)
    return Verdict(
        REPRODUCED if ok else NOT_REPRODUCED,
        f"first 10% of tokens: pretrained {early['pretrained']:.3f}, random {early['random']:.3f}; "
        f"last 5%: {late['pretrained']:.3f} vs {late['random']:.3f} (gap {gap_early:+.3f} -> {gap_late:+.3f})",
    )


def forgetting(out_dir: Path) -> Verdict:
    points = _csv(out_dir, "text_ability")
    if points.empty or "pretrained" not in set(points["init"]):
        return Verdict(NOT_RUN, "no pretrained text-to-image run with the text-ability probe")
    run = points[points["init"] == "pretrained"].sort_values("tokens")
    first, last = float(run["value"].iloc[0]), float(run["value"].iloc[-1])
    ok = last > 1.2 * first
    return Verdict(
        REPRODUCED if ok else NOT_REPRODUCED,
        f"held-out text perplexity {first:,.0f} before training, {last:,.0f} after "
        f"{run['tokens'].iloc[-1]:,.0f} tokens (x{last / first:.1f})",
    )


def freezing_ends_above(out_dir: Path) -> Verdict:
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
    parts = [
        f"{r.comparison.split(' - ')[0]}: {r.a_mean:.3f} vs all {r.b_mean:.3f}" for r in rows.itertuples()
    ]
    ok = bool((rows["difference"] > 0).all())
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(parts))


FINDINGS = (
    Finding("Image-token loss: pretraining the language model does not help (pretrained vs random init).",
            image_loss_no_gain),
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


def _run_links(uri: str, sweep: str | None, summary: pd.DataFrame) -> dict[str, str]:
    """train run id -> its arm's run in the MLflow UI (the arm's row there), else the train run itself."""
    if summary.empty:
        return {}
    runs = tracking.fetch_runs(uri, sweep=sweep)
    if runs.empty:
        return {}
    links = {
        r: f"{UI_URL}/#/experiments/{e}/runs/{r}"
        for r, e in zip(runs["run_id"], runs["experiment_id"], strict=True)
    }
    arms = tracking.fetch_runs(uri, sweep=sweep, arms=True)
    by_train_key = f"tags.{tracking.TAG_STAGE_KEY_PREFIX}{stages.TRAIN}"
    if not arms.empty and by_train_key in arms:
        arm_of_key = {
            k: f"{UI_URL}/#/experiments/{e}/runs/{r}"
            for k, r, e in zip(arms[by_train_key], arms["run_id"], arms["experiment_id"], strict=True)
        }
        run_key = f"tags.{tracking.TAG_RUN_KEY}"
        for rid, key in zip(
            runs["run_id"], runs.get(run_key, pd.Series(index=runs.index, dtype=object)), strict=True
        ):
            if key in arm_of_key:
                links[rid] = arm_of_key[key]
    return {rid: links[rid] for rid in summary["train_run_id"] if rid in links}


def _arms_pages(uri: str, sweep: str | None) -> dict[str, str]:
    """Sweep -> its arms' table in the MLflow UI (the saved view with their params and results)."""
    arms = tracking.fetch_runs(uri, sweep=sweep, arms=True)
    if arms.empty:
        return {}
    pairs = arms[[f"tags.{tracking.TAG_SWEEP}", "experiment_id"]].drop_duplicates()
    return {str(s): tracking.arms_link(UI_URL, str(e)) for s, e in pairs.itertuples(index=False)}


def render(
    out_dir: Path,
    title: str,
    links: dict[str, str],
    skipped: dict[str, str],
    arms_pages: dict[str, str] | None = None,
) -> str:
    """The page's HTML from plot's outputs in out_dir; `arms_pages`: sweep -> its arms in the MLflow UI."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px}.reproduced{color:#1a7f37}.not-reproduced{color:#cf222e}.not-run{color:#777}"
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        *(
            [
                "<p>In MLflow (start it with <code>ablate ui</code>): "
                + ", ".join(
                    f"<a href={esc(u)!r}>the arms of {esc(s)}</a>" for s, u in sorted(arms_pages.items())
                )
                + ", one row each, with their params and results.</p>"
            ]
            if arms_pages
            else []
        ),
        "<h2 id='findings'>The paper's findings at this scale</h2><table><tr><th>finding</th><th>verdict</th>"
        "<th>measured</th></tr>",
    ]
    for f in FINDINGS:
        v = f.check(out_dir)
        parts.append(
            f"<tr><td>{esc(f.claim)}</td><td class='{v.status.replace(' ', '-')}'><b>{esc(v.status)}</b></td>"
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
            cells = "".join(f"<td>{esc('' if pd.isna(row[c]) else str(row[c]))}</td>" for c in cols)
            link = links.get(row["train_run_id"])
            parts.append(f"<tr>{cells}<td>{f'<a href={esc(link)!r}>run</a>' if link else ''}</td></tr>")
        parts.append("</table>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for fig in FIGURES:
        png = out_dir / f"{fig.name}.png"
        md = out_dir / f"{fig.name}.md"
        if png.is_file():
            parts.append(f"<figure><img src='{_png(png)}' alt='{esc(fig.name)}'><figcaption>{esc(fig.caption)}"
                         "</figcaption></figure>")  # fmt: skip
        elif md.is_file():
            parts.append(f"<h3>{esc(fig.caption)}</h3><pre>{esc(md.read_text(encoding='utf-8'))}</pre>")
        elif fig.name in skipped:
            parts.append(f"<p class='not-run'>{esc(fig.caption)} Not drawn: {esc(skipped[fig.name])}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(uri: str, results: Path, sweep: str | None = None) -> Path:
    """Draw the figures (as `ablate plot`) into results/figures[/<sweep>] and write results/report[-sweep].html."""
    out_dir = Path(results) / "figures"
    report = plot_report(uri, out_dir, sweep)
    summary = _csv(out_dir, "summary")
    title = f"ablate report: sweep {sweep}" if sweep else "ablate report: every tracked sweep"
    page = render(out_dir, title, _run_links(uri, sweep, summary), report.skipped, _arms_pages(uri, sweep))
    path = Path(results) / (f"report-{sweep}.html" if sweep else "report.html")
    atomic_write_text(path, page)
    return path
