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


def tracked_sweep(uri: str, arms: dict[str, float]) -> str:
    """A sweep as its jobs leave it in the store: a train stage run and an arm run per arm (label ->
    final image-token loss, logged as the train stage logs it); returns the arms' experiment id."""
    for i, (label, final) in enumerate(arms.items()):
        key = f"{i:012d}"
        stage = tracking.RunSpec(
            experiment=tracking.stages_experiment("ablate/", "demo"),
            name=tracking.stage_run_name("train", [label]),
            tags=tracking.stage_run_tags(
                sweep="demo", stage="train", key=key, labels=[label], sweeps=["demo"]
            ),
        )
        arm = tracking.ArmRunSpec(
            experiment=tracking.sweep_experiment("ablate/", "demo"),
            name=label,
            tags=tracking.arm_run_tags(
                sweep="demo", label=label, arm_key=f"arm{i}", stage_keys={"train": key}
            ),
            params={"model.init": label.split("=", 1)[1]},
            view=tracking.arms_view(["model.init"], ["final_image_loss"]),
        )
        stage_id = tracking.stage_run(uri, stage)
        assert stage_id is not None
        arm_id = tracking.arm_run(uri, arm, "train", stage_id)
        tracker = tracking.MLflowTracker(uri, arm_id)
        tracker.log_metrics({"final_image_loss": final}, step=10)
        tracker.close("FINISHED")
    experiment = tracking.fetch_runs(uri, sweep="demo", arms=True)["experiment_id"].unique()
    assert len(experiment) == 1
    return str(experiment[0])


@pytest.mark.slow
def test_the_ui_opens_a_sweep_on_its_arms_with_their_results(chromium, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracked_sweep(uri, {"init=pretrained": 0.485, "init=random": 0.527})
    port = free_port()
    proc = start_ui(tmp_path, port)
    try:
        assert proc.stdout is not None
        links = {}
        for line in proc.stdout:  # the links are printed once the server answers
            if line.strip().startswith("sweep "):
                name, link = line.strip()[len("sweep ") :].split(": ", 1)
                links[name] = link
            if line.strip().startswith("one row per arm"):
                break
        # One link per sweep, to its arms (the stage runs' experiment is not a sweep).
        assert links == {"demo": tracking.arms_link(f"http://127.0.0.1:{port}", experiment)}
        page = dom(chromium, links["demo"], tmp_path / "profile")
        # The model-training runs table (MLflow 3 opens an untagged experiment on a GenAI traces overview).
        assert f"Runs - Experiment {experiment}" in page and "Run Name" in page
        assert "Detect Issues" not in page
        assert ">init=pretrained<" in page and ">init=random<" in page  # the arms are the rows
        assert "train init=" not in page  # and no stage run is
        assert "final_image_loss" in page and ">0.485<" in page  # a result column, with the arm's value
        assert "model.init" in page  # the swept param
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_report_shows_its_findings_in_a_browser(chromium, tmp_path):
    from matplotlib.figure import Figure

    from analysis.findings import FINDINGS
    from analysis.report import render

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "figure3_perplexity.png")
    (tmp_path / "report.html").write_text(render(tmp_path, "a report", {}, {}))
    page = dom(chromium, (tmp_path / "report.html").as_uri(), tmp_path / "profile", budget_ms=2000)
    assert "The paper's findings at this scale" in page
    assert sum(f.claim in page for f in FINDINGS) == len(FINDINGS)
    assert page.count("<b>not run</b>") == len(FINDINGS)  # no CSVs: nothing to check, said so
    assert "data:image/png;base64," in page
