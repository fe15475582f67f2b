"""`ablate report`: one self-contained HTML page of a sweep's figures, tables and the paper's findings.

The page embeds every figure `ablate plot` drew (PNG as base64: it works offline and mailed), the
per-arm summary, and for each of the paper's findings (analysis.findings.FINDINGS) the numbers measured
at this scale and its verdict. Each arm links to its train run in the MLflow UI (`ablate ui`).
"""

from __future__ import annotations

import base64
import html
import inspect
import math
import re
from pathlib import Path

import pandas as pd

from ablate import tracking
from ablate.atomic import atomic_write_text
from ablate.metrics import (
    CAPTION_MATCH_SEEN,
    FID,
    FINAL_IMAGE_LOSS,
    FINAL_LOSS,
    FINAL_TEXT_LOSS,
    HELDOUT_TEXT_PPL,
    SCENE_VALID,
)
from ablate.stages import names as stages
from analysis.findings import (
    FINDINGS,
    NOT_REPRODUCED,
    NOT_RUN,
    ONE_SEED,
    REPRODUCED,
    SEED_OF_ARM,
    num,
    read_csv,
)
from analysis.plot import FIGURES, TABLE1, plot_report
from analysis.tables import PAPER_AFTER, PAPER_BEFORE, SUMMARY, human

STATUS_CLASS = {
    REPRODUCED: "reproduced",
    NOT_REPRODUCED: "not-reproduced",
    ONE_SEED: "one-seed",
    NOT_RUN: "not-run",
}
UI_KEY = "ablate.ui_url"  # where the page remembers (localStorage) a reader's own UI address


def default_ui_url() -> str:
    """`ablate ui`'s default address: the defaults of tracking.ui_command, which starts it."""
    defaults = inspect.signature(tracking.ui_command).parameters
    return f"http://{defaults['host'].default}:{defaults['port'].default}"


def _with_code(text: str) -> str:
    """Plain text as HTML, its `backticked` spans (commands, as the verdicts write them) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


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
    table = read_csv(out_dir, TABLE1.name)
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
        # Which run: with several seeds of an init, the table shows one of them, and says which.
        seed = SEED_OF_ARM.search(str(r.get("arm", "")))
        init = esc(str(r["init"])) + (f" (seed {seed.group(1)})" if seed else "")
        cells = [init, esc(str(r["prompt"])), before, text(r["after"], r["after_step"]), when]
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
            f"<td>{_with_code(v.numbers)}</td></tr>"
        )
    parts.append("</table>")
    summary = read_csv(out_dir, SUMMARY)
    if not summary.empty:
        parts.append("<h2 id='summary'>Runs</h2><table><tr>")
        cols = [c for c in ("arm", FINAL_LOSS, FINAL_TEXT_LOSS, FINAL_IMAGE_LOSS, HELDOUT_TEXT_PPL,
                            CAPTION_MATCH_SEEN, SCENE_VALID, FID) if c in summary]  # fmt: skip
        parts.append("".join(f"<th>{esc(c)}</th>" for c in cols) + "<th>MLflow</th></tr>")
        for _, row in summary.iterrows():
            cells = "".join(f"<td>{_cell(row[c])}</td>" for c in cols)
            link = links.get(row["train_run_id"])
            parts.append(f"<tr>{cells}<td>{ui_link(link, 'run') if link else ''}</td></tr>")
        parts.append("</table>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for fig in FIGURES:
        png, md = fig.path(out_dir, ".png"), fig.path(out_dir, ".md")
        table = table1_html(out_dir) if fig is TABLE1 else ""
        if png.is_file():
            parts.append(f"<figure><img src='{_png(png)}' alt='{esc(fig.name)}'><figcaption>{esc(fig.caption)}"
                         "</figcaption></figure>")  # fmt: skip
        elif table:
            parts.append(f"<h3>{esc(fig.caption)}</h3>{table}")
        elif md.is_file():
            parts.append(f"<h3>{esc(fig.caption)}</h3><pre>{esc(md.read_text(encoding='utf-8'))}</pre>")
        elif fig.name in skipped:
            parts.append(
                f"<p class='not-run'>{esc(fig.caption)} Not drawn: {_with_code(skipped[fig.name])}</p>"
            )
    if arms_pages or links:
        parts.append(UI_SCRIPT)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(uri: str, results: Path, sweep: str | None = None, ui_url: str | None = None) -> Path:
    """Draw the figures (as `ablate plot`) into results/figures and write results/report-<sweep>.html
    (results/report.html without a sweep), its MLflow links under `ui_url` (default: `ablate ui`'s)."""
    out_dir = Path(results) / "figures"
    report = plot_report(uri, out_dir, sweep)
    summary = read_csv(out_dir, SUMMARY)
    ui_url = (ui_url or default_ui_url()).rstrip("/")
    title = f"ablate report: sweep {sweep}" if sweep else "ablate report: every tracked sweep"
    links, arms = _run_links(uri, sweep, summary, ui_url), _arms_pages(uri, sweep, ui_url)
    page = render(out_dir, title, links, report.skipped, arms, ui_url)
    path = Path(results) / (f"report-{sweep}.html" if sweep else "report.html")
    atomic_write_text(path, page)
    return path
