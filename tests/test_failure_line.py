"""A failed job's launch line says what went wrong (the error's last line), then where its log is."""

from __future__ import annotations

from pathlib import Path

import pytest
import submitit

from ablate.launch.executor import error_line, failure_detail
from ablate.launch.graph import Node
from ablate.rundir import RunDir
from ablate.stages.runner import Job


def _node(tmp_path: Path) -> Node:
    return Node(Job(stage="train", key="k", out_dir=str(tmp_path / "train"), inputs={}, config={}))


def test_the_line_of_a_job_that_died_before_recording_its_state_comes_from_submitits_trace(
    tmp_path: Path,
) -> None:
    # A real subprocess; a builtin, as the child cannot import this test module.
    job = submitit.LocalExecutor(folder=tmp_path / "jobs").submit(int, "twelve")
    with pytest.raises(Exception) as info:  # noqa: PT011  # submitit's FailedJobError
        job.result()
    assert "You can check full logs" in str(info.value)  # what the line used to end with
    node = _node(tmp_path)
    line = error_line(node, info.value)
    assert line == "ValueError: invalid literal for int() with base 10: 'twelve'"
    assert failure_detail(node, info.value, job.paths.stderr) == f"{line}; log {job.paths.stderr}"


def test_the_runners_record_in_status_json_is_preferred(tmp_path: Path) -> None:
    node = _node(tmp_path)
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nablate.errors.DataError: shard 3 is truncated\n'
    RunDir(node.job.out_dir).set_status("failed", error=trace)
    assert (
        error_line(node, RuntimeError("submitit says: see the log"))
        == "ablate.errors.DataError: shard 3 is truncated"
    )
    RunDir(node.job.out_dir).set_status("running")  # killed without a record: submitit's message it is
    assert error_line(node, RuntimeError("Job 12 has not produced any output (state: CANCELLED)")) == (
        "Job 12 has not produced any output (state: CANCELLED)"
    )
