"""What a person sees, in a real browser (Debian's headless Chromium, installed by .ci/run): the MLflow UI
that `ablate ui` serves opens a sweep on its runs table, and the report page shows its findings."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from test_ui import free_port, start_ui

from ablate import tracking

ROOT = Path(__file__).resolve().parent.parent
# As the machine's notes give them: no network beyond loopback, no first-run or background work.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package)")
    return path


def dom(chromium: str, url: str, profile: Path, budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran (virtual time, so a busy machine does not cut them short)."""
    proc = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_the_ui_opens_a_sweep_on_its_runs_table(chromium, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "ablate/demo")
    parent = tracking.get_or_create_sweep_run(uri, experiment, "demo")
    tags = {
        tracking.TAG_SWEEP: "demo",
        tracking.sweep_tag("demo"): "true",
        tracking.TAG_ARM: "init=pretrained",
    }
    tracking.get_or_create_stage_run(uri, experiment, parent, "k1", "train", "init=pretrained", tags, {})
    port = free_port()
    proc = start_ui(tmp_path, port)
    try:
        assert proc.stdout is not None
        link = None
        for line in proc.stdout:  # the link is printed once the server answers
            if line.strip().startswith("sweep demo:"):
                link = line.split(": ", 1)[1].strip()
                break
        assert link == f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
        page = dom(chromium, link, tmp_path / "profile")
        # The model-training runs table (MLflow 3 opens an untagged experiment on a GenAI traces overview).
        assert f"Runs - Experiment {experiment}" in page and "Run Name" in page
        assert ">demo<" in page  # the sweep's parent run is a row
        assert "Detect Issues" not in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_report_shows_its_findings_in_a_browser(chromium, tmp_path):
    from matplotlib.figure import Figure

    from analysis.report import FINDINGS, render

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "figure3_perplexity.png")
    (tmp_path / "report.html").write_text(render(tmp_path, "a report", {}, {}))
    page = dom(chromium, (tmp_path / "report.html").as_uri(), tmp_path / "profile", budget_ms=2000)
    assert "The paper's findings at this scale" in page
    assert sum(f.claim in page for f in FINDINGS) == len(FINDINGS)
    assert page.count("<b>not run</b>") == len(FINDINGS)  # no CSVs: nothing to check, said so
    assert "data:image/png;base64," in page
