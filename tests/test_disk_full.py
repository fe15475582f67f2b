"""A full or read-only disk under the results folder mid-run: the launcher says so in one line (which
path, how much it needed, what was free) and exits non-zero; the manifest and the MLflow store stay valid;
once there is space again, the relaunch resumes and the store ends equal to metrics.jsonl.

Runs on a real tmpfs mounted for the test (root only; skipped, saying why, where mounting fails)."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scales import STEP_TOKENS, tiny

from ablate.atomic import as_storage_error, atomic_write_json
from ablate.errors import StorageError

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny(
    f"train.batch_tokens={STEP_TOKENS}",
    f"train.total_tokens={300 * STEP_TOKENS}",
    f"train.checkpoint_every_tokens={20 * STEP_TOKENS}",
    "tracking.close_timeout_s=5",  # the job's tracker gives up on the full store quickly
)


def _mount(path: Path, options: str) -> str | None:
    """None once mounted, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return None if proc.returncode == 0 else f"cannot mount a tmpfs: {proc.stderr.decode().strip()}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    reason = _mount(disk, "size=64m")
    if reason is not None:
        print(reason)
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_clear_line_with_the_path_and_sizes(tmp_path: Path) -> None:
    disk = tmp_path / "tiny"
    reason = _mount(disk, "size=64k")
    if reason is not None:
        print(reason)
        pytest.skip(reason)
    try:
        atomic_write_json(disk / "m.json", {"ok": 1})
        with pytest.raises(StorageError) as info:
            atomic_write_json(disk / "m.json", {"x": "y" * 200_000})
        msg = str(info.value)
        assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
        assert msg.startswith(f"no space left on device: cannot write {disk / 'm.json'} (200.0 kB needed, ")
        assert "free on its file system" in msg and "\n" not in msg
        assert json.loads((disk / "m.json").read_text()) == {"ok": 1}  # the old content, whole
        assert [p.name for p in disk.iterdir()] == ["m.json"]  # no temporary file left
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(StorageError, match=r"^read-only file system: cannot write .*m\.json"):
            atomic_write_json(disk / "m.json", {"ok": 2})
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    # SQLite's wording, found behind the MLflow or SQLAlchemy error that wraps it.
    wrapped = RuntimeError("the store failed")
    wrapped.__cause__ = sqlite3.OperationalError("database or disk is full")
    err = as_storage_error(wrapped, path=tmp_path / "mlflow.db")
    assert isinstance(err, StorageError) and err.errno == errno.ENOSPC and "mlflow.db" in str(err)
    assert as_storage_error(ValueError("other")) is None


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 4096, 1):  # to the last byte
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def _store_rows(db: Path, run_id: str) -> list[tuple[str, int, float]]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("SELECT key, step, value FROM metrics WHERE run_uuid = ?", (run_id,)).fetchall()


def _file_rows(path: Path) -> list[tuple[str, int, float]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = row.pop("step")
        out.extend((k, step, float(v)) for k, v in row.items())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_launcher_stops_cleanly_on_a_full_or_read_only_disk_and_the_relaunch_resumes(
    small_disk: Path, tmp_path: Path, fault: str
) -> None:
    results = small_disk / "results"
    sweep = tmp_path / "disk.yaml"
    sweep.write_text("name: disk\narms:\n  - {data.task: uncond, model.init: random}\n")
    cmd = [sys.executable, "-m", "ablate.cli", "--results", str(results), "launch", str(sweep), *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, filler, read_only = time.monotonic() + 300, None, []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        jsonl = list((results / "cache" / "train").glob("*/metrics.jsonl"))
        if jsonl and len(jsonl[0].read_text().splitlines()) >= 30:  # training, past a checkpoint
            if fault == "full":
                filler = _fill(small_disk)
            else:
                # A remount of the whole tmpfs read-only is refused while files are open for writing
                # (SQLite's): empty read-only file systems over the train directory and the manifest's.
                for d in (jsonl[0].parent, results / "sweeps" / "disk"):
                    assert _mount(d, "ro,size=1m") is None
                    read_only.append(d)
            break
    out, err = proc.communicate(timeout=600)
    assert filler is not None or len(read_only) == 2
    assert proc.returncode not in (0, None), out[-2000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]  # one line, naming the path (and, for a full disk, the sizes)
    if fault == "full":
        assert lines[0].startswith("error: no space left on device: cannot write "), lines[0]
    else:
        assert lines[0].startswith("error: read-only file system: cannot write "), lines[0]
    assert str(results) in lines[0] and "launch again" in lines[0]
    assert "failed" in out  # the train job failed on the same disk: its line says why
    train_dir = next((results / "cache" / "train").iterdir())
    for d in read_only:  # what lies under them: as left
        subprocess.run(["umount", str(d)], check=True)
    read_only.clear()
    # Valid as left: the manifest parses, the store passes SQLite's own check.
    manifest = json.loads((results / "sweeps" / "disk" / "manifest.json").read_text())
    assert manifest["name"] == "disk"
    with sqlite3.connect(f"{(results / 'mlflow.db').as_uri()}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    if fault == "full":
        assert filler is not None
        filler.unlink()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from" in "".join(p.read_text() for p in (results / "jobs").rglob("*_log.out"))
    local = _file_rows(train_dir / "metrics.jsonl")
    run_id = json.loads((train_dir / "provenance.json").read_text())["mlflow_run_id"]
    assert sorted({s for k, s, _ in local if k == "loss"}) == list(range(1, 301))
    assert sorted(_store_rows(results / "mlflow.db", run_id)) == sorted(local)  # nothing lost, nothing twice
