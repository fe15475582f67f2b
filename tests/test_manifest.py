"""The sweep manifest read from another working directory than the launch's: its stage dirs still point
at the results folder it lies in, and saving keeps them as the launch wrote them."""

from __future__ import annotations

import json
from pathlib import Path

from ablate.atomic import atomic_write_json
from ablate.launch.manifest import Manifest, manifest_path
from ablate.rundir import RunDir
from ablate.status import job_state


def _launched_from(workdir: Path) -> Path:
    """A manifest as `ablate launch` run in `workdir` with the default --results writes it."""
    results = workdir / "results"
    stage = results / "cache" / "train" / "abc123"
    stage.mkdir(parents=True)
    RunDir(stage).mark_complete()
    atomic_write_json(
        manifest_path(results, "demo"),
        {
            "name": "demo",
            "job_folder": "results/jobs/demo",
            "cluster": "local",
            "arms": [],
            "jobs": {
                "train/abc123": {"stage": "train", "key": "abc123", "dir": "results/cache/train/abc123"},
                "elsewhere": {"stage": "synth", "key": "k", "dir": "/abs/cache/synth/k"},
            },
        },
    )
    return results


def test_a_manifest_read_from_elsewhere_finds_its_stage_dirs(tmp_path, monkeypatch):
    results = _launched_from(tmp_path / "exp")
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "home")  # `ablate --results ../exp/results status demo`
    m = Manifest.load(Path("..") / "exp" / "results", "demo")
    job = m.data["jobs"]["train/abc123"]
    assert Path(job["dir"]).resolve() == (results / "cache" / "train" / "abc123").resolve()
    assert job_state(job) == "done"  # before the fix: "pending", the dir named nothing from here
    assert m.data["jobs"]["elsewhere"]["dir"] == "/abs/cache/synth/k"  # absolute dirs are left alone
    m.record("train/abc123", "done")
    saved = json.loads(manifest_path(results, "demo").read_text())
    assert saved["jobs"]["train/abc123"]["dir"] == "results/cache/train/abc123"  # as the launch wrote it
    assert saved["jobs"]["train/abc123"]["state"] == "done"


def test_read_where_it_was_launched_nothing_changes(tmp_path, monkeypatch):
    _launched_from(tmp_path)
    monkeypatch.chdir(tmp_path)
    m = Manifest.load(Path("results"), "demo")
    assert m.data["jobs"]["train/abc123"]["dir"] == "results/cache/train/abc123" and not m.as_written
