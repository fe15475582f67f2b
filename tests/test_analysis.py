"""analysis: frames and figures from runs in a real MLflow SQLite store (one store for the module)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ablate import tracking
from ablate.errors import AblateError
from analysis import figures
from analysis.frames import CURVE_COLUMNS, training_curves
from analysis.plot import FIGURE3, FIGURE4, plot_all
from analysis.smoothing import ema, ema_span, smoothing_span

STEPS = 60
TOKENS_PER_STEP = 4096


def log_curves(uri: str, run_id: str, offset: float) -> None:
    """A plausible training curve: the loss falls; perplexity is its exp; tokens grow per step."""
    tracker = tracking.MLflowTracker(uri, run_id, flush_interval_s=0.05)
    rng = np.random.default_rng(int(offset * 10))
    for step in range(STEPS):
        text, image = 2.0 + offset + 3.0 / (1 + step), 5.0 + 4.0 / (1 + step) + 0.05 * rng.standard_normal()
        loss = (text + 30 * image) / 31
        metrics = {"loss": loss, "text_loss": text, "image_loss": image, "perplexity": math.exp(loss)}
        tracker.log_metrics({**metrics, "tokens": (step + 1) * TOKENS_PER_STEP, "lr": 1e-3}, step=step)
    tracker.close(timeout=30)


@pytest.fixture(scope="module")
def store(new_store: Callable[[str], Path]) -> SimpleNamespace:
    root = new_store("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    for sweep in ("demo", "other"):
        exp = tracking.ensure_experiment(uri, sweep)
        arms = [("pretrained", "t2i", "train"), ("random", "t2i", "train"), ("pretrained", "uncond", "train")]
        arms.append(("random", "t2i", "evaluate"))
        for init, task, stage in arms if sweep == "demo" else arms[:1]:
            arm = f"{task}-{init}"
            tags = {tracking.TAG_SWEEP: sweep, tracking.sweep_tag(sweep): "true", tracking.TAG_ARM: arm}
            params = {"model.init": init, "data.task": task}
            key = f"{sweep}-{arm}"
            run_id = tracking.get_or_create_stage_run(uri, exp, key, stage, arm, tags, params)
            log_curves(uri, run_id, offset=0.0 if init == "pretrained" else 0.3)
            runs[(sweep, arm, stage)] = run_id
    # A sweep whose only run has not started: no metrics yet.
    exp = tracking.ensure_experiment(uri, "pending")
    tags = {
        tracking.TAG_SWEEP: "pending",
        tracking.sweep_tag("pending"): "true",
        tracking.TAG_ARM: "t2i-random",
    }
    tracking.get_or_create_stage_run(uri, exp, "pending-1", "train", "t2i-random", tags, {})
    return SimpleNamespace(uri=uri, runs=runs)


@pytest.fixture(scope="module")
def demo_frame(store: SimpleNamespace) -> pd.DataFrame:
    return training_curves(store.uri, sweep="demo")


def test_ema_matches_the_recursion() -> None:
    x = np.array([1.0, 3.0, np.nan, 5.0, 2.0])
    expected, y = [], x[0]
    for v in x:
        y = y if np.isnan(v) else 0.9 * y + 0.1 * v
        expected.append(y)
    np.testing.assert_allclose(ema(x, 0.9), expected)
    np.testing.assert_allclose(ema([4.0, 2.0], 0.0), [4.0, 2.0])
    assert ema([], 0.95).shape == (0,)
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_training_curves_is_tidy_and_filtered(store: SimpleNamespace, demo_frame: pd.DataFrame) -> None:
    assert list(demo_frame.columns) == CURVE_COLUMNS
    # demo: three train runs (the evaluate-stage run is not a training curve); other sweeps excluded.
    assert set(demo_frame["run_id"]) == {
        store.runs[("demo", a, "train")] for a in ("t2i-pretrained", "t2i-random", "uncond-pretrained")
    }
    assert set(demo_frame["sweep"]) == {"demo"}
    assert set(demo_frame["metric"]) == {"loss", "text_loss", "image_loss", "perplexity", "lr"}
    run = demo_frame[demo_frame["run_id"] == store.runs[("demo", "t2i-random", "train")]]
    assert (
        set(run["init"]) == {"random"} and set(run["task"]) == {"t2i"} and set(run["arm"]) == {"t2i-random"}
    )
    ppl = run[run["metric"] == "perplexity"]
    assert ppl["step"].tolist() == list(range(STEPS))
    assert (ppl["tokens"] == (ppl["step"] + 1) * TOKENS_PER_STEP).all()
    everything = training_curves(store.uri)
    assert set(everything["sweep"]) == {"demo", "other"}


def test_figure3_writes_png_pdf_csv_with_both_inits(demo_frame: pd.DataFrame, tmp_path: Path) -> None:
    paths = figures.figure3_perplexity(demo_frame, tmp_path, FIGURE3.name)
    assert [p.name for p in paths] == [
        "figure3_perplexity.png",
        "figure3_perplexity.pdf",
        "figure3_perplexity.csv",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    data = pd.read_csv(paths[2])
    assert set(data["init"]) == {"pretrained", "random"}  # the uncond run is not in figure 3
    assert set(data["series"]) == {
        f"{init}/t2i-{init}/perplexity/{kind}" for init in ("pretrained", "random") for kind in ("raw", "ema")
    }
    assert len(data) == 2 * 2 * STEPS  # one row per plotted point
    line = data[data["series"] == "random/t2i-random/perplexity/raw"]
    raw, tokens = line["value"].to_numpy(), line["tokens"].to_numpy()
    smooth = data[data["series"] == "random/t2i-random/perplexity/ema"]["value"].to_numpy()
    # Perplexity is smoothed as an EMA of the loss (log space), so early huge values do not dominate;
    # over tokens, with the figure's one span (20 steps, at most 2% of the longest run).
    every = data[data["kind"] == "raw"]
    span = smoothing_span(every["tokens"], every["run_id"])
    np.testing.assert_allclose(smooth, np.exp(ema_span(np.log(raw), tokens, span)))


def test_figure4_has_a_panel_per_token_type(demo_frame: pd.DataFrame, tmp_path: Path) -> None:
    paths = figures.figure4_loss_split(demo_frame, tmp_path, FIGURE4.name)
    assert [p.suffix for p in paths] == [".png", ".pdf", ".csv"] and all(p.exists() for p in paths)
    data = pd.read_csv(paths[2])
    assert set(data["metric"]) == {"text_loss", "image_loss"}
    assert set(data["init"]) == {"pretrained", "random"}
    assert data.groupby(["metric", "init", "kind"]).size().eq(STEPS).all()


def test_figure_without_data_says_what_is_missing(demo_frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(AblateError, match="perplexity"):
        figures.figure3_perplexity(demo_frame[demo_frame["metric"] != "perplexity"], tmp_path, FIGURE3.name)


def test_plot_all_draws_every_figure(store: SimpleNamespace, tmp_path: Path) -> None:
    paths = plot_all(store.uri, tmp_path / "figures", sweep="demo")
    # demo has t2i and uncond train runs, no evaluate/align runs, no probes: figures 3, 4, 6 and the summary.
    names = ("3_perplexity", "4_loss_split", "6_freeze")
    assert sorted(p.name for p in paths) == sorted(
        [
            *(f"figure{n}.{ext}" for n in names for ext in ("png", "pdf", "csv")),
            "summary.csv",
            "summary_arms.csv",
            "comparisons.csv",
        ]
    )
    assert all(p.exists() for p in paths)
    summary = pd.read_csv(tmp_path / "figures" / "summary.csv")
    assert set(summary["train_run_id"]) == {
        store.runs[("demo", a, "train")] for a in ("t2i-pretrained", "t2i-random", "uncond-pretrained")
    }


def test_plot_all_with_no_runs_explains_how_to_get_some(store: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(AblateError) as err:
        plot_all(store.uri, tmp_path, sweep="nosuchsweep")
    msg = str(err.value)
    assert "nosuchsweep" in msg and store.uri in msg and "ablate launch sweeps/demo.yaml" in msg
    missing = f"sqlite:///{tmp_path / 'nothing' / 'mlflow.db'}"
    with pytest.raises(AblateError, match="does not exist") as err:
        plot_all(missing, tmp_path)
    assert "ablate launch sweeps/demo.yaml" in str(err.value)
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(AblateError, match="none has logged metrics yet"):
        plot_all(store.uri, tmp_path, sweep="pending")


def test_report_writes_one_page_with_findings_and_run_links(store: SimpleNamespace, tmp_path: Path) -> None:
    from analysis.findings import FINDINGS
    from analysis.report import write_report

    path = write_report(store.uri, tmp_path, sweep="demo")
    assert path == tmp_path / "report-demo.html"
    page = path.read_text()
    assert all(f.claim in page for f in FINDINGS) and page.count("data:image/png;base64,") >= 3
    train = store.runs[("demo", "t2i-pretrained", "train")]
    assert f"/runs/{train}" in page  # the arm's train run in the MLflow UI
    # Links under the address `ablate ui --port 5123` serves, given once.
    page = write_report(store.uri, tmp_path, sweep="demo", ui_url="http://127.0.0.1:5123/").read_text()
    assert "href='http://127.0.0.1:5123/#/experiments/" in page and f"/runs/{train}'" in page
    assert "127.0.0.1:5000" not in page
    assert (tmp_path / "figures" / "summary.csv").is_file()  # drawn as `ablate plot` draws them
