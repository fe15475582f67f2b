"""The paper's pipeline on real-format data, end to end through `ablate launch` on `cluster=local`.

img2dataset-layout tar shards (with a corrupt JPEG, a sample without caption, a too-small image, a
grayscale and a CMYK image), a tiny random diffusers VQModel and a tokenizer.json are built by
tests/realdata.py; the sweep runs every stage to `ablate plot`. One pretokenization unit is killed with
SIGKILL while it runs: the other units stay done and the relaunch runs only the missing one.
"""

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
import realdata
from scales import tiny

from ablate.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny(
    "pretrain.corpus_max_chars=60000",
    "pretrain.total_tokens=4608",
    "pretrain.batch_tokens=2304",
    "pretrain.warmup_tokens=0",
    "train.total_tokens=6912",
    "train.checkpoint_every_tokens=2304",
    "optim.warmup_tokens=0",
    "evaluate.n_samples=4",
    "evaluate.probe_every_tokens=2304",
    "evaluate.probe_sequences=4",
    data=False,
)
SWEEP = "name: t2i_init\ngrid:\n  model.init: [pretrained, random]\n"
SLOW_UNIT = "00003"  # a shard big enough to be caught running


def ablate(results: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        **kw,
    )


def _kill_unit_when_running(results: Path, unit: str, timeout_s: float = 300) -> int:
    """SIGKILL the job process of a prepare unit as soon as it records itself running; its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for unit_dir in (results / "cache" / "prepare").glob(f"*/units/{unit}"):
            status = RunDir(unit_dir).read_status()
            if status.get("state") == "running":
                os.kill(int(status["pid"]), signal.SIGKILL)
                return int(status["pid"])
        time.sleep(0.02)
    raise AssertionError(f"unit {unit} never ran")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    overrides = realdata.overrides(root / "assets")
    # One more shard, ten times the others: its unit runs long enough to be killed mid-way.
    big = realdata.write_webdataset(root / "big", shards=1, per_shard=600, seed=7, planted=False)[0]
    big.rename(root / "assets" / "shards" / f"{SLOW_UNIT}.tar")
    sweep = root / "t2i_init.yaml"
    sweep.write_text(SWEEP)
    results = root / "results"
    cmd = [sys.executable, "-m", "ablate.cli", "--results", str(results), "launch", str(sweep)]
    first = subprocess.Popen(
        [*cmd, *TINY, *overrides], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = _kill_unit_when_running(results, SLOW_UNIT)
    out, _ = first.communicate(timeout=900)
    again = ablate(results, "launch", str(sweep), *TINY, *overrides)
    return root, results, sweep, overrides, (first.returncode, out, killed), again


@pytest.mark.slow
def test_a_killed_unit_alone_is_rerun_and_the_sweep_finishes(real):
    _, results, _, _, (code, out, killed), again = real
    assert code == 1 and "failed" in out, out[-3000:]
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # The relaunch skipped the units that were done and ran the killed one, then everything after it.
    ran = [
        line
        for line in again.stdout.splitlines()
        if "submitted prepare" in line or "skipped   prepare" in line
    ]
    assert sum("submitted" in line for line in ran) == 2, ran  # the killed unit, then the stage's own job
    assert sum("skipped" in line for line in ran) == 3, ran
    units = next((results / "cache" / "prepare").glob("*/units"))
    assert sorted(p.name for p in units.iterdir()) == ["00000", "00001", "00002", SLOW_UNIT]
    assert all(RunDir(u).is_complete() for u in units.iterdir())
    prov = json.loads((units / SLOW_UNIT / "provenance.json").read_text())
    assert prov["unit"] == SLOW_UNIT and killed != os.getpid()


@pytest.mark.slow
def test_bad_samples_are_counted_by_reason_in_the_prepare_run(real):
    _, results, _, _, _, _ = real
    db = sqlite3.connect(results / "mlflow.db")
    rows = db.execute(
        "SELECT m.key, m.value FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
        "AND t.key = 'ablate.stage' AND t.value = 'prepare'"
    ).fetchall()
    metrics = dict(rows)
    for reason, n in realdata.PLANTED_BAD.items():
        assert metrics[f"skipped_{reason}"] == n
    assert metrics["skipped_unreadable_member"] == 0 and metrics["skipped_no_image"] == 0
    kept = 3 * 40 + 2 + 600  # the grayscale and CMYK images are kept, converted to RGB
    assert metrics["samples_kept"] == kept and metrics["samples_seen"] == kept + sum(
        realdata.PLANTED_BAD.values()
    )
    assert sum(metrics[f"sequences_{s}"] for s in ("train", "val", "heldout")) == kept
    manifest = json.loads(next((results / "cache" / "prepare").glob("*/units.json")).read_text())
    assert sum(sum(m["sequences"].values()) for m in manifest.values()) == kept


@pytest.mark.slow
def test_every_stage_ran_and_a_relaunch_runs_nothing(real):
    _, results, sweep, overrides, _, _ = real
    db = sqlite3.connect(results / "mlflow.db")
    stages = sorted(r[0] for r in db.execute("SELECT value FROM tags WHERE key = 'ablate.stage'"))
    assert stages == sorted(
        ["text_tokenizer", "image_tokenizer", "prepare", "pretrain"] + ["train", "evaluate"] * 2
    )
    proc = ablate(results, "launch", str(sweep), *TINY, *overrides)
    assert proc.returncode == 0 and "submitted" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_plot_draws_from_the_real_data_runs(real, tmp_path):
    _, results, _, _, _, _ = real
    proc = ablate(results, "plot", "--sweep", "t2i_init", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "figure3_perplexity.png").is_file() and (tmp_path / "figure5_samples.png").is_file()
