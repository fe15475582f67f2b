"""`ablate report`: the self-contained page of a sweep's figures, runs and findings (analysis.report)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from ablate import paper
from analysis import findings, report, tables
from analysis.plot import TABLE1


def write(out: Path, name: str, frame: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{name}.csv", index=False)


def test_the_page_embeds_its_figures_and_lists_every_finding(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "figure3_perplexity.png")
    summary = pd.DataFrame({"arm": ["init=pretrained"], "final_loss": [0.5], "train_run_id": ["abc"]})
    write(tmp_path, "summary", summary)
    arms = {"demo": "http://127.0.0.1:5000/#/experiments/2/runs?viewStateShareKey=arms"}
    page = report.render(tmp_path, "t", {"abc": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}, {}, arms)
    assert (
        "href='http://127.0.0.1:5000/#/experiments/2/runs?viewStateShareKey=arms' "
        "data-ui-path='/#/experiments/2/runs?viewStateShareKey=arms'>the arms of demo<" in page
    )
    assert page.count("data:image/png;base64,") == 1 and "<img src='http" not in page  # works offline
    assert all(f.claim in page for f in findings.FINDINGS)
    assert "http://127.0.0.1:5000/#/experiments/1/runs/abc" in page
    assert "Figure 3: perplexity" in page


def test_a_command_in_a_verdict_is_code_on_the_page(tmp_path):
    cells = {"comparison": "pretrained - random (text-to-image)", "metric": "final_image_loss", "context": "",
             "seeds": 1, "a_mean": 0.5, "b_mean": 0.5, "difference": 0.0}  # fmt: skip
    write(tmp_path, "comparisons", pd.DataFrame([cells]))
    assert (
        "`ablate launch sweeps/t2i_init.yaml`" in findings.image_loss_no_gain(tmp_path).numbers
    )  # plain text
    page = report.render(tmp_path, "t", {}, {})
    assert "<code>ablate launch sweeps/t2i_init.yaml</code> runs each arm with 3 seeds" in page
    assert "`" not in page[page.index("id='findings'") : page.index("</table>")]


def completions_of(prompts: list[str]) -> pd.DataFrame:
    rows = [("pretrained", "a", "r1", step, step * 1e5, p, f"{p[:4]} at {step} " + "word " * 40)
            for step in (0, 9) for p in prompts]  # fmt: skip
    return pd.DataFrame(rows, columns=tables.COMPLETION_COLUMNS)


def test_table1_is_an_html_table_with_the_papers_columns_only_for_its_prompts(tmp_path):
    tables.table1_completions(
        completions_of(["Once upon a time", "The cat <b>"]), tmp_path / "demo", TABLE1.name
    )
    page = report.render(tmp_path / "demo", "t", {}, {})
    assert "<table class='completions'>" in page and "<pre>" not in page
    assert "<td>The cat &lt;b&gt;</td>" in page and "Once at 9 word" in page
    assert (
        "paper, before" not in page
        and "paper, before" not in (tmp_path / "demo" / "table1_completions.md").read_text()
    )
    assert "900k tokens, step 9" in page
    prompt = paper.TABLE1_PROMPTS[1]
    tables.table1_completions(completions_of(["Once upon a time", prompt]), tmp_path / "paper", TABLE1.name)
    page = report.render(tmp_path / "paper", "t", {}, {})
    assert (
        "<th>paper, before</th>" in page and f"<td>{paper.TABLE1_COMPLETIONS[prompt]['after']}</td>" in page
    )
    assert "| paper, before |" in (tmp_path / "paper" / "table1_completions.md").read_text()


def test_table1_names_the_seed_of_the_run_it_shows_and_skips_show_commands_as_code(tmp_path):
    tables.table1_completions(completions_of(["Once upon a time"]), tmp_path / "one", TABLE1.name)
    assert "<td>pretrained</td>" in report.render(tmp_path / "one", "t", {}, {})
    seeded = completions_of(["Once upon a time"]).assign(arm="task=t2i init=pretrained seed=1")
    tables.table1_completions(seeded, tmp_path / "two", TABLE1.name)
    skipped = {
        "sensitivity_lr": "its runs come from sweep lr; produce them with `ablate launch sweeps/lr.yaml`"
    }
    page = report.render(tmp_path / "two", "t", {}, skipped)
    assert "<td>pretrained (seed 1)</td>" in page  # two pretrained seeds ran: the table shows seed 1's
    assert "produce them with <code>ablate launch sweeps/lr.yaml</code>" in page and "`" not in page


def test_mlflow_links_follow_the_ui_address_and_the_page_can_change_it(tmp_path):
    from ablate.tracking import ui_command

    argv = ui_command("sqlite:///x.db")
    host, port = argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]
    assert report.default_ui_url() == f"http://{host}:{port}"  # ablate ui's own default, not a copy
    summary = pd.DataFrame({"arm": ["init=pretrained"], "heldout_text_ppl": [1.9], "train_run_id": ["abc"]})
    write(tmp_path, "summary", summary)
    base = "http://127.0.0.1:5123"
    page = report.render(tmp_path, "t", {"abc": f"{base}/#/experiments/1/runs/abc"}, {}, ui_url=base)
    assert f"href='{base}/#/experiments/1/runs/abc' data-ui-path='/#/experiments/1/runs/abc'>run<" in page
    assert f"id='ui-url' size='30' value='{base}'" in page and "<td>1.9</td>" in page
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the page's script is not run")
    # The page's script against a stand-in DOM: a new address rewrites every MLflow link and is remembered.
    script = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    harness = """
    const links = [{path: '/#/experiments/1/runs/abc', href: ''}, {path: '/#/experiments/2/runs', href: ''}];
    const field = {value: ''}; let submit = null; const store = {};
    globalThis.document = {
      getElementById: (id) => id === 'ui-url' ? field : {addEventListener: (e, f) => { submit = f; }},
      querySelectorAll: () => links.map((l) => ({getAttribute: () => l.path, set href(v) { l.href = v; }})),
    };
    globalThis.location = {search: ''};
    globalThis.localStorage = {getItem: (k) => store[k] ?? null, setItem: (k, v) => { store[k] = v; }};
    SCRIPT
    field.value = ' http://localhost:5001/ ';
    submit({preventDefault() {}});
    field.value = 'javascript:alert(1)';
    submit({preventDefault() {}});
    console.log(JSON.stringify([links.map((l) => l.href), store]));
    """.replace("SCRIPT", script)
    out = subprocess.run(
        ["node", "-e", harness], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    hrefs, store = json.loads(out)
    assert hrefs == [
        "http://localhost:5001/#/experiments/1/runs/abc",
        "http://localhost:5001/#/experiments/2/runs",
    ]
    assert store == {report.UI_KEY: "http://localhost:5001"}  # the javascript: address was refused


def test_report_help_names_the_page_it_writes():
    import argparse

    from ablate.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = next(a.help for a in sub._choices_actions if a.dest == "report")
    assert "results/report-<sweep>.html with --sweep" in text and "report-demo.html" in text
    assert parser.parse_args(["report", "--sweep", "demo", "--ui-url", "http://h:1"]).ui_url == "http://h:1"
