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


def _arm(tmp_path: Path, states: dict[str, str | tuple[str, dict]]) -> SimpleNamespace:
    """A one-arm manifest whose stage directories are in the given states ('done', or a status.json state,
    optionally with a progress.json)."""
    jobs, stages = {}, {}
    for stage, want in states.items():
        state, progress = want if isinstance(want, tuple) else (want, {})
        run = RunDir(tmp_path / "cache" / stage / "k")
        run.path.mkdir(parents=True)
        jobs[f"{stage}/k"] = {"dir": str(run.path), "state": "submitted"}
        stages[stage] = f"{stage}/k"
        if state == "done":
            run.mark_complete()
        elif state != "pending":
            run.set_status(state)  # "running": this process, alive
        if progress:
            run.write_progress(progress)
    data = {
        "name": "s",
        "file": "s.yaml",
        "cluster": "local",
        "tracking_uri": "unused",
        "jobs": jobs,
        "arms": [{"label": "a", "stages": stages}],
    }
    return SimpleNamespace(data=data)


def test_an_arm_whose_evaluate_finished_is_at_evaluate_done(tmp_path: Path, monkeypatch) -> None:
    import ablate.status as status

    stages = ("synth", "text_tokenizer", "image_tokenizer", "prepare", "train", "evaluate")
    manifest = _arm(tmp_path, dict.fromkeys(stages, "done"))
    (row,) = status.arm_rows(manifest, {})
    assert (row["stage"], row["state"]) == ("evaluate", "done")
    monkeypatch.setattr(status, "_mlflow_progress", lambda m, ids: ({}, ""))
    line = next(ln for ln in status.format_status(manifest).splitlines() if ln.startswith("a "))
    assert line.split()[1:3] == ["evaluate", "done"]


def test_the_row_shows_the_running_stage_with_how_far_it_is(tmp_path: Path, monkeypatch) -> None:
    import ablate.status as status

    monkeypatch.setattr(status, "_mlflow_progress", lambda m, ids: ({}, ""))
    first = dict.fromkeys(("synth", "text_tokenizer", "image_tokenizer", "prepare"), "done")
    train = ("running", {"tokens": 450_000, "total_tokens": 1_000_000, "loss": 2.5})
    manifest = _arm(tmp_path / "1", {**first, "train": train, "evaluate": "pending"})
    line = next(ln for ln in status.format_status(manifest).splitlines() if ln.startswith("a "))
    assert line.split()[1:6] == ["train", "running", "45%", "0.45M/1.00M", "2.5000"]

    manifest = _arm(tmp_path / "2", {**first, "train": "done", "evaluate": "running"})
    (row,) = status.arm_rows(manifest, {})
    assert (row["stage"], row["state"]) == ("evaluate", "running")
    line = next(ln for ln in status.format_status(manifest).splitlines() if ln.startswith("a "))
    assert line.split()[1:3] == ["evaluate", "running"]  # no progress of its own: no percentage


def test_a_stage_at_work_or_in_trouble_wins_over_an_earlier_one_not_started() -> None:
    from ablate.status import current_stage

    # pretrain comes before train in run order but does not gate prepare: prepare runs while it waits.
    assert current_stage({"prepare": "running", "pretrain": "pending", "train": "pending"}) == "prepare"
    assert current_stage({"prepare": "pending", "pretrain": "queued"}) == "pretrain"
    assert current_stage({"synth": "running", "text_tokenizer": "failed"}) == "text_tokenizer"
    assert current_stage({"synth": "done", "prepare": "pending", "train": "pending"}) == "prepare"
    assert current_stage({"train": "done", "evaluate": "done"}) == "evaluate"


def test_a_stage_counting_steps_shows_its_percentage_from_them(tmp_path: Path, monkeypatch) -> None:
    import ablate.status as status

    monkeypatch.setattr(status, "_mlflow_progress", lambda m, ids: ({}, ""))
    states = {
        "synth": "done",
        "image_tokenizer": ("running", {"step": 150, "total_steps": 300}),
        "train": "pending",
    }
    line = next(ln for ln in status.format_status(_arm(tmp_path, states)).splitlines() if ln.startswith("a "))
    assert line.split()[1:4] == ["image_tokenizer", "running", "50%"]
