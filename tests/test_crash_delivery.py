"""Exactly-once metrics after a crash: a real launch on `cluster=local` is killed with SIGKILL while its
train job holds steps written to metrics.jsonl but not yet delivered to MLflow; the relaunch resumes from
the checkpoint, and the store ends equal to metrics.jsonl row for row. `ablate resend` then rebuilds the
runs, artifacts included, in a new store (the case of a lost mlflow.db)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scales import STEP_TOKENS, tiny

from ablate.tracking import TAG_STAGE

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny()
SWEEP = "name: crash\narms:\n  - {data.task: uncond, model.init: random}\n"


def ablate_cmd(results: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ablate.cli", "--results", str(results), *args]


def store_rows(db: Path, run_id: str) -> list[tuple[str, int, float]]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("SELECT key, step, value FROM metrics WHERE run_uuid = ?", (run_id,)).fetchall()


def file_rows(path: Path) -> list[tuple[str, int, float]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the row being written when the process was killed
            continue
        step = row.pop("step")
        out.extend((k, step, float(v)) for k, v in row.items())
    return out


def checkpoint_step(train_dir: Path) -> int | None:
    import torch

    try:
        return int(torch.load(train_dir / "checkpoints" / "last.pt", weights_only=False)["step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


@pytest.mark.slow
def test_sigkill_between_local_write_and_delivery_then_relaunch_leaves_store_equal_to_metrics_jsonl(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    sweep = tmp_path / "crash.yaml"
    sweep.write_text(SWEEP)
    # 300 steps, a checkpoint every 20; the tracker sends once a second, so at any moment the last second
    # of steps is on disk only.
    train = [
        f"train.batch_tokens={STEP_TOKENS}",
        f"train.total_tokens={300 * STEP_TOKENS}",
        f"train.checkpoint_every_tokens={20 * STEP_TOKENS}",
    ]
    first = subprocess.Popen(
        ablate_cmd(results, "launch", str(sweep), *TINY, *train, "tracking.flush_interval_s=1"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes the launcher and its jobs
    )
    db = results / "mlflow.db"
    deadline = time.monotonic() + 300
    killed_at = None
    try:
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
            dirs = list((results / "cache" / "train").glob("*/provenance.json"))
            if not dirs:
                continue
            train_dir = dirs[0].parent
            run_id = json.loads(dirs[0].read_text())["mlflow_run_id"]
            ckpt = checkpoint_step(train_dir)
            if ckpt is None or not (train_dir / "metrics.jsonl").exists():
                continue
            local = {(k, s) for k, s, _ in file_rows(train_dir / "metrics.jsonl")}
            stored = {(k, s) for k, s, _ in store_rows(db, run_id)}
            # Steps after the checkpoint both delivered (the resume re-executes them) and not yet delivered.
            if any(s > ckpt for _, s in stored) and local - stored:
                os.killpg(first.pid, signal.SIGKILL)
                killed_at = ckpt
                break
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert killed_at is not None, "training ended before the kill condition was met"
    jsonl = train_dir / "metrics.jsonl"
    local, stored = file_rows(jsonl), store_rows(db, run_id)
    lost = {(k, s) for k, s, _ in local} - {(k, s) for k, s, _ in stored}
    assert lost, "the kill came after everything was delivered: nothing tested"
    assert max(s for _, s, _ in stored) > killed_at  # the resume re-executes steps MLflow already has

    relaunch = subprocess.run(
        ablate_cmd(results, "launch", str(sweep), *TINY, *train),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    local, stored = file_rows(jsonl), store_rows(db, run_id)
    assert len(stored) == len({(k, s) for k, s, _ in stored})  # each (key, step) once
    assert sorted(stored) == sorted(local)  # row for row, values included
    assert sorted({s for k, s, _ in local if k == "loss"}) == list(range(1, 301))

    # mlflow.db lost: `ablate resend` rebuilds both runs in a new store, the evaluate run's artifacts too.
    other = tmp_path / "other.db"
    evaluate_dir = next((results / "cache" / "evaluate").iterdir())
    for _ in range(2):  # the second send adds nothing
        proc = subprocess.run(
            ablate_cmd(
                results, "resend", str(train_dir), str(evaluate_dir), "--tracking-uri", f"sqlite:///{other}"
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{other}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    runs = {r.data.tags[TAG_STAGE]: r for r in found if TAG_STAGE in r.data.tags}  # not the sweep's run
    assert sorted(store_rows(other, runs["train"].info.run_id)) == sorted(local)
    recorded = json.loads((evaluate_dir / "artifacts.json").read_text())
    logged = {f.path for f in client.list_artifacts(runs["evaluate"].info.run_id)}
    assert recorded and {Path(p).name for p in recorded} <= logged
    assert "samples.csv" in logged
