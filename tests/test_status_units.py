"""`ablate status` on a stage split into units: units done / running / failed, images per second, ETA."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from ablate.rundir import RunDir
from ablate.status import unit_lines


def test_units_of_the_current_stage_are_summed_up(tmp_path: Path) -> None:
    stage = RunDir(tmp_path / "cache" / "prepare" / "k1")
    name = "prepare/k1"
    jobs = {name: {"dir": str(stage.path)}}
    for unit, state in (("00000", "done"), ("00001", "done"), ("00002", "running"), ("00003", "failed")):
        u = stage.unit(unit)
        u.path.mkdir(parents=True)
        jobs[f"{name}/{unit}"] = {"dir": str(u.path)}
        if state == "done":
            u.mark_complete()
        elif state == "running":
            u.set_status("running")  # this process: alive
            u.write_progress({"images": 4000, "images_per_s": 250.0, "eta_s": 24.0, "unit": unit})
        else:
            u.set_status("failed", error="DataError: too many bad samples")
    manifest = SimpleNamespace(data={"jobs": jobs, "arms": [{"label": "a", "stages": {"prepare": name}}]})
    row = {"arm": "a", "stage": "prepare", "state": "pending"}
    lines = unit_lines(manifest, [row, {**row, "arm": "a"}], {})  # two rows at one stage: said once
    assert lines[0] == "prepare (prepare/k1): 2/4 units done, 1 failed, 1 running, 250 images/s, ETA 0m48s"
    assert lines[1:] == ["  unit 00003: failed"]
    assert os.getpid() == RunDir(stage.unit("00002").path).read_status()["pid"]


def test_a_stage_without_units_adds_no_line(tmp_path: Path) -> None:
    jobs = {"train/k": {"dir": str(tmp_path)}}
    manifest = SimpleNamespace(data={"jobs": jobs, "arms": [{"label": "a", "stages": {"train": "train/k"}}]})
    assert unit_lines(manifest, [{"arm": "a", "stage": "train"}], {}) == []
