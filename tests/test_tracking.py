"""ablate.tracking against a real MLflow SQLite store (one per module: creating one takes seconds)."""

from __future__ import annotations

import math
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from ablate import tracking
from ablate.errors import AblateError
from ablate.tracking.read import client_histories

KEYS = ["loss", "text_loss", "image_loss"]


@pytest.fixture(scope="module")
def store(new_store: Callable[[str], Path]) -> SimpleNamespace:
    root = new_store("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "test-sweep")
    return SimpleNamespace(root=root, uri=uri, experiment_id=experiment_id)


def stage_run(store: SimpleNamespace, params: dict | None = None, **tags: str) -> str:
    """A fresh train-stage run (unique run key) under the sweep run."""
    key = uuid.uuid4().hex[:12]
    all_tags = {tracking.TAG_SWEEP: "test-sweep", tracking.TAG_ARM: f"arm-{key}", **tags}
    return tracking.get_or_create_stage_run(
        store.uri, store.experiment_id, key, "train", f"arm-{key}", all_tags, params or {}
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def steps_of(uri: str, run_id: str, keys: list[str]) -> dict[str, list[int]]:
    hist = tracking.fetch_histories(uri, [run_id], keys)
    return {k: hist.loc[hist.key == k, "step"].tolist() for k in keys}


def test_default_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        tracking.default_tracking_uri(tmp_path / "results")
        == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5005")
    assert tracking.default_tracking_uri(tmp_path) == "http://127.0.0.1:5005"


def test_ui_command_and_redaction() -> None:
    argv = tracking.ui_command("sqlite:////x/mlflow.db", port=5123, workers=1)
    assert argv[1:] == [
        "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:////x/mlflow.db", "--host", "127.0.0.1", "--port", "5123",
        "--workers", "1",
    ]  # fmt: skip
    # The UI's environment turns MLflow's job runner off (a process per job kind; ablate has no jobs for
    # it), unless one asks for it.
    assert tracking.ui_env({"A": "1"}) == {"A": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert (
        tracking.ui_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
        == "true"
    )
    assert tracking.redact_uri("postgresql://me:secret@db:5432/ml") == "postgresql://me:***@db:5432/ml"


def test_null_tracker_keeps_what_it_was_given() -> None:
    t = tracking.NullTracker()
    t.log_params({"model.init": "random"})
    t.set_tags({"ablate.arm": "a"})
    t.log_metrics({"loss": 1}, step=3)
    t.log_artifact("x.png")
    assert t.flush() is True
    t.close("FAILED")
    assert (t.params, t.tags, t.metrics, t.artifacts, t.status) == (
        [{"model.init": "random"}], [{"ablate.arm": "a"}], [(3, {"loss": 1.0})], [("x.png", None)], "FAILED"
    )  # fmt: skip


def test_experiment_is_reused(store: SimpleNamespace) -> None:
    assert tracking.ensure_experiment(store.uri, "test-sweep") == store.experiment_id


def test_stage_run_is_found_again_not_duplicated(store: SimpleNamespace) -> None:
    params = {f"p{i:03d}": i for i in range(250)}  # more than MLflow's 100 params per batch
    params["long"] = "x" * 7000  # over MLflow's 6000-char limit
    args = (store.uri, store.experiment_id, "key-dup", "train", "arm-dup")
    first = tracking.get_or_create_stage_run(*args, {"ablate.arm": "arm-dup"}, params)
    # A relaunch: same params (one changed value is kept as it was, with a warning), a refreshed tag.
    again = tracking.get_or_create_stage_run(*args, {"ablate.arm": "arm-dup2"}, {**params, "p000": "changed"})
    assert again == first
    runs = tracking.fetch_runs(store.uri, sweep=None, stage="train")
    mine = runs[runs["tags.ablate.run_key"] == "key-dup"]
    assert len(mine) == 1
    row = mine.iloc[0]
    assert row["status"] == "RUNNING" and row["parent_run_id"] is None  # made by its job, as it starts
    assert row["tags.ablate.arm"] == "arm-dup2" and row["params.p000"] == "0" and row["params.p249"] == "249"
    assert len(row["params.long"]) == tracking.MAX_PARAM_VALUE_LEN
    assert row["params.long"].endswith(tracking.TRUNCATION_MARK)


def test_tracker_delivers_every_step_exactly_once(store: SimpleNamespace, tmp_path: Path) -> None:
    run_id = stage_run(store)
    tracker = tracking.MLflowTracker(store.uri, run_id, flush_interval_s=0.05)
    (tmp_path / "samples.txt").write_text("a sample")
    tracker.log_artifact(tmp_path / "samples.txt", "eval")
    assert tracking.run_info(store.uri, run_id)["status"] == "RUNNING"
    tracker.log_params({"model.init": "random", "train.lr": 3e-4})
    tracker.set_tags({"ablate.slurm_job_id": 42})
    t0 = time.perf_counter()
    for step in range(2500):  # 7500 values: several log_batch calls of <= 1000
        tracker.log_metrics({k: step + 0.5 for k in KEYS}, step=step)
    assert time.perf_counter() - t0 < 1.0  # queueing only
    tracker.log_metrics({"loss": float("nan")}, step=2500)
    tracker.close(timeout=30)
    assert steps_of(store.uri, run_id, KEYS) == {
        "loss": list(range(2501)), "text_loss": list(range(2500)), "image_loss": list(range(2500))
    }  # fmt: skip
    info = tracking.run_info(store.uri, run_id)
    assert info["status"] == "FINISHED" and info["step"] == 2500 and info["metrics"]["text_loss"] == 2499.5
    assert info["tags"]["ablate.slurm_job_id"] == "42"
    # Artifacts go next to the SQLite file (not ./mlruns of the working directory).
    assert (store.root / "artifacts" / "test-sweep" / run_id / "artifacts" / "eval" / "samples.txt").exists()
    row = tracking.fetch_runs(store.uri).set_index("run_id").loc[run_id]
    assert row["params.model.init"] == "random" and row["params.train.lr"] == "0.0003"


def test_resumed_tracker_skips_steps_already_logged(store: SimpleNamespace) -> None:
    run_id = stage_run(store, params={"model.init": "pretrained"})
    first = tracking.MLflowTracker(store.uri, run_id, flush_interval_s=0.05)
    first.log_params({"model.init": "pretrained"})
    for step in range(100):
        first.log_metrics({k: float(step) for k in KEYS}, step=step)
    first.close("KILLED", timeout=30)
    assert tracking.run_info(store.uri, run_id)["status"] == "KILLED"
    # The resumed job restarts from its step-89 checkpoint: steps 90..99 come again, with other values.
    second = tracking.MLflowTracker(store.uri, run_id, flush_interval_s=0.05)
    second.log_params({"model.init": "pretrained"})  # same value again: no error
    for step in range(90, 150):
        second.log_metrics({k: -1.0 for k in KEYS}, step=step)
    second.close(timeout=30)
    assert steps_of(store.uri, run_id, KEYS) == {k: list(range(150)) for k in KEYS}
    assert second.dropped_steps == 10 * len(KEYS)
    hist = tracking.fetch_histories(store.uri, [run_id], ["loss"]).set_index("step")["value"]
    assert hist[99] == 99.0 and hist[100] == -1.0  # the first logging of a step is the one kept


def test_a_gap_below_the_highest_step_is_filled_from_metrics_jsonl(
    store: SimpleNamespace, tmp_path: Path
) -> None:
    # A crash delivered steps 1-3 and 7-20 but not 4-6 (they were on disk only): a tracker given the
    # directory sends exactly the missing (key, step) values, whatever the highest step in the store.
    from ablate.rundir import RunDir

    run_id = stage_run(store)
    log = RunDir(tmp_path).metrics_log()
    for step in range(1, 21):
        log.append(step, {"loss": step + 0.25, "lr": 1e-3})
    crashed = tracking.MLflowTracker(store.uri, run_id, flush_interval_s=0.05)
    for step in [*range(1, 4), *range(7, 21)]:
        crashed.log_metrics({"loss": step + 0.25, "lr": 1e-3}, step)
    crashed.log_metrics({"lr": 1e-3}, 5)  # one key of a row delivered, the other not
    crashed.close("KILLED", timeout=30)
    resumed = tracking.MLflowTracker(store.uri, run_id, flush_interval_s=0.05, run_dir=tmp_path)
    resumed.log_metrics({"loss": -1.0, "lr": -1.0}, 20)  # a re-executed step: the first value stays
    resumed.close(timeout=30)
    assert resumed.backfilled_rows == 3  # steps 4-6 (of step 5, only the loss was missing)
    assert resumed.dropped_steps == 1 + 2  # step 5's lr, and step 20 logged again
    hist = tracking.fetch_histories(store.uri, [run_id], ["loss", "lr"])
    got = sorted(zip(hist.key, hist.step, hist.value, strict=True))
    assert got == sorted(
        [("loss", s, s + 0.25) for s in range(1, 21)] + [("lr", s, 1e-3) for s in range(1, 21)]
    )


def test_unreachable_server_never_blocks_or_raises() -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    t0 = time.perf_counter()
    tracker = tracking.MLflowTracker(uri, uuid.uuid4().hex, flush_interval_s=0.05, init_wait_s=0.2)
    for step in range(1000):
        tracker.log_metrics({"loss": 1.0}, step=step)
    tracker.log_params({"a": 1})
    assert tracker.flush(timeout=0.2) is False
    tracker.close("FAILED", timeout=0.3)  # gives up on the queue, with a warning, no exception
    assert time.perf_counter() - t0 < 3.0


def test_metrics_queued_during_an_outage_are_delivered_later(store: SimpleNamespace, tmp_path: Path) -> None:
    run_id = stage_run(store)
    moved = tmp_path / "outage" / "mlflow.db"
    uri = f"sqlite:///{moved}"
    tracker = tracking.MLflowTracker(uri, run_id, flush_interval_s=0.05, init_wait_s=0.1, max_backoff_s=0.1)
    for step in range(50):
        tracker.log_metrics({"loss": float(step)}, step=step)
    assert tracker.flush(timeout=0.3) is False  # the store file is not there: queued, retried
    moved.parent.mkdir()
    with sqlite3.connect(store.root / "mlflow.db") as src, sqlite3.connect(moved) as dst:
        src.backup(dst)  # the store comes back (same runs, at the path the tracker uses)
    assert tracker.flush(timeout=30) is True
    tracker.close(timeout=30)
    assert steps_of(uri, run_id, ["loss"]) == {"loss": list(range(50))}
    assert tracking.run_info(uri, run_id)["status"] == "FINISHED"


def test_tracker_on_a_missing_run_fails_loudly(store: SimpleNamespace) -> None:
    with pytest.raises(AblateError, match="cannot log to MLflow run"):
        tracking.MLflowTracker(store.uri, uuid.uuid4().hex, init_wait_s=30)


def test_fetch_histories_returns_what_was_logged(store: SimpleNamespace) -> None:
    runs = [stage_run(store), stage_run(store)]
    for i, run_id in enumerate(runs):
        tracker = tracking.MLflowTracker(store.uri, run_id, flush_interval_s=0.05)
        for step in range(0, 30, 3):
            tracker.log_metrics({"perplexity": math.exp(i + step / 10), "tokens": step * 1024}, step=step)
        tracker.log_metrics({"perplexity": float("nan")}, step=30)
        tracker.close(timeout=30)
    hist = tracking.fetch_histories(store.uri, runs, ["perplexity", "tokens", "absent"])
    assert list(hist.columns) == ["run_id", "key", "step", "value", "timestamp"]
    assert len(hist) == 2 * (10 + 11)
    ppl = hist[(hist.run_id == runs[1]) & (hist.key == "perplexity")]
    assert ppl.step.tolist() == [*range(0, 30, 3), 30]
    assert ppl.value.iloc[:-1].tolist() == [math.exp(1 + s / 10) for s in range(0, 30, 3)]
    assert math.isnan(ppl.value.iloc[-1])
    # The fast SQL path and MLflow's own client agree.
    via_client = pd.DataFrame(client_histories(store.uri, runs, ["perplexity", "tokens"]))
    via_client = via_client.astype(hist.dtypes.to_dict())
    sub = hist[hist.key != "absent"].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub, via_client)


def test_reading_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert tracking.fetch_runs(uri).empty
    assert tracking.fetch_histories(uri, ["r"], ["loss"]).empty
    assert not (tmp_path / "none").exists()


def test_a_stage_recomputed_from_nothing_gets_a_new_run(store: SimpleNamespace) -> None:
    def get(key: str, fresh: bool, experiment_id: str | None = None) -> str:
        return tracking.get_or_create_stage_run(
            store.uri,
            experiment_id or store.experiment_id,
            key,
            "train",
            key,
            {},
            {},
            fresh=fresh,
        )

    key = uuid.uuid4().hex[:12]
    first = get(key, fresh=True)
    assert get(key, fresh=True) == first  # scheduled, never finished: still the same run
    tracker = tracking.MLflowTracker(store.uri, first)
    tracker.log_metrics({"loss": 2.0}, step=1)
    tracker.close("FINISHED")
    assert get(key, fresh=False) == first  # a relaunch of a finished or resumable stage: same run
    # Found from another sweep's experiment too (a shared arm), and reused there.
    other = tracking.ensure_experiment(store.uri, "another-sweep")
    assert get(key, fresh=False, experiment_id=other) == first
    # Its output deleted and recomputed: the old run, whose metrics would block the new ones, goes.
    second = get(key, fresh=True)
    assert second != first
    runs = tracking.fetch_runs(store.uri, stage="train")
    assert second in set(runs["run_id"]) and first not in set(runs["run_id"])
    # A failed run is resumed, never replaced.
    tracking.set_run_status(store.uri, second, "FAILED")
    assert get(key, fresh=True) == second


def test_a_step_whose_local_write_failed_never_reaches_the_tracker(tmp_path: Path, monkeypatch) -> None:
    """The stage's one sink writes metrics.jsonl, then the tracker: the store never has a step the file
    lacks (a full disk fails the step before the tracker sees it)."""
    from ablate.stages.context import StageContext

    inner = tracking.NullTracker()
    ctx = StageContext("train", None, tmp_path, {}, inner)  # type: ignore[arg-type]
    ctx.log_metrics({"loss": 1.0}, 1)

    def full_disk(step: int, values: dict[str, float]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ctx.metrics_log, "append", full_disk)
    with pytest.raises(OSError):
        ctx.log_metrics({"loss": 2.0}, 2)
    assert inner.metrics == [(1, {"loss": 1.0})]


def test_a_sweep_experiment_is_a_model_training_experiment(store: SimpleNamespace) -> None:
    """MLflow 3's UI opens it on its runs table, not on a GenAI traces overview; older ones get the tag."""
    from mlflow import MlflowClient

    from ablate.tracking.tags import EXPERIMENT_KIND_TRAINING, TAG_EXPERIMENT_KIND

    client = MlflowClient(store.uri)
    assert client.get_experiment(store.experiment_id).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    old = client.create_experiment("made-before-the-tag")
    assert TAG_EXPERIMENT_KIND not in client.get_experiment(old).tags
    assert tracking.ensure_experiment(store.uri, "made-before-the-tag") == old
    assert client.get_experiment(old).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING


def test_an_arm_run_shows_results_rounded_and_single_values_at_step_zero(
    store: SimpleNamespace, tmp_path: Path
) -> None:
    """Live and back-filled alike; curves, tokens included, keep every digit; a stage run keeps everything."""
    from ablate.rundir import RunDir

    rows = {
        0: {"heldout_text_ppl": 31.4159265, "tokens": 0.0},
        5: {"loss": 2.718281828, "tokens": 1001087.0, "heldout_text_ppl": 12.3456789},
        6: {"loss": 2.5, "tokens": 1001088.0},
        7: {"final_loss": 2.609140914, "final_image_loss": math.nan},
    }
    spec = tracking.ArmRunSpec(
        experiment="test-sweep-arms",
        name="a",
        tags=tracking.arm_run_tags(
            sweep="test-sweep", label="init=a", arm_key=uuid.uuid4().hex, stage_keys={}
        ),
    )
    live, stage = tracking.arm_run(store.uri, spec, "train", None), stage_run(store)
    log = RunDir(tmp_path).metrics_log()
    for run_id in (live, stage):
        tracker = tracking.MLflowTracker(store.uri, run_id, flush_interval_s=0.05)
        for step, values in rows.items():
            tracker.log_metrics(values, step)
        tracker.close("FINISHED")
    for step, values in rows.items():
        log.append(step, values)
    spec.tags[tracking.TAG_ARM_KEY] = uuid.uuid4().hex  # another arm: filled from metrics.jsonl only
    filled = tracking.arm_run(store.uri, spec, "train", None)
    assert tracking.backfill(store.uri, filled, tmp_path) == len(rows)
    assert tracking.backfill(store.uri, filled, tmp_path) == 0  # (key, step) compared as the arm run holds it
    keys = ["loss", "tokens", "heldout_text_ppl", "final_loss", "final_image_loss"]
    for run_id in (live, filled):
        hist = tracking.fetch_histories(store.uri, [run_id], keys)
        got = {k: list(zip(g["step"], g["value"], strict=True)) for k, g in hist.groupby("key")}
        assert got["loss"] == [(5, 2.718281828), (6, 2.5)]
        assert got["tokens"] == [(0, 0.0), (5, 1001087.0), (6, 1001088.0)]
        assert got["heldout_text_ppl"] == [(0, 31.42), (5, 12.35)]
        assert got["final_loss"] == [(0, 2.609)]
        assert [(s, math.isnan(v)) for s, v in got["final_image_loss"]] == [(0, True)]
    stage_hist = tracking.fetch_histories(store.uri, [stage], ["final_loss", "heldout_text_ppl"])
    assert sorted(zip(stage_hist["key"], stage_hist["step"], stage_hist["value"], strict=True)) == [
        ("final_loss", 7, 2.609140914), ("heldout_text_ppl", 0, 31.4159265), ("heldout_text_ppl", 5, 12.3456789),
    ]  # fmt: skip
