"""RunDir: the one place naming a run directory's files, with their reads and writes."""

from __future__ import annotations

import os

from ablate import rundir
from ablate.rundir import MetricsLog, RunDir


def test_paths_of_the_common_files(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.config == tmp_path / "config.yaml"
    assert rd.provenance == tmp_path / "provenance.json"
    assert rd.status == tmp_path / "status.json"
    assert rd.progress == tmp_path / "progress.json"
    assert rd.metrics == tmp_path / "metrics.jsonl"
    assert rd.marker == tmp_path / "_COMPLETE.json" == tmp_path / rundir.MARKER
    assert rd.checkpoints == tmp_path / "checkpoints"
    assert rd.last_checkpoint == tmp_path / "checkpoints" / "last.pt"
    assert rd / "model.pt" == tmp_path / "model.pt"
    assert os.fspath(rd) == str(tmp_path) and RunDir(str(tmp_path)) == rd


def test_description_status_and_progress(tmp_path):
    rd = RunDir(tmp_path / "run")
    assert rd.read_status() == {} and rd.read_progress() == {}
    assert rd.read_provenance() is None and rd.read_config() == {}
    rd.write_description("model:\n  dim: 8\n", {"stage": "train", "key": "abc"})
    assert rd.read_config() == {"model": {"dim": 8}}
    prov = rd.read_provenance()
    assert prov["stage"] == "train" and prov["key"] == "abc" and "git_commit" in prov and "host" in prov
    rd.set_status("running", attempt=2)
    status = rd.read_status()
    assert status["state"] == "running" and status["attempt"] == 2 and status["pid"] == os.getpid()
    rd.write_progress({"step": 3, "loss": 1.5})
    assert rd.read_progress()["step"] == 3 and "time" in rd.read_progress()


def test_completion_marker(tmp_path):
    rd = RunDir(tmp_path)
    assert not rd.is_complete()
    rd.mark_complete({"n": 1})
    assert rd.is_complete() and rd.marker.is_file() and RunDir(str(tmp_path)).is_complete()
    assert not RunDir(tmp_path / "other").is_complete()


def test_metrics_log(tmp_path):
    log = RunDir(tmp_path).metrics_log()
    assert isinstance(log, MetricsLog) and log.path == tmp_path / "metrics.jsonl" and log.rows() == []
    for step in (1, 2, 3):
        log.append(step, {"loss": float(step)})
    # A resume re-executes step 3: its first row stays (the tracking store keeps the first value too).
    assert log.rows() == [{"step": i, "loss": float(i)} for i in (1, 2, 3)]
    log.append(3, {"loss": -3.0})
    resumed = RunDir(tmp_path).metrics_log()  # a new process: reads which steps the file has
    resumed.append(3, {"loss": -3.0})
    resumed.append(4, {"loss": 4.0})
    assert log.rows() == [{"step": i, "loss": float(i)} for i in (1, 2, 3, 4)]


def test_metrics_log_drops_a_row_torn_by_a_crash(tmp_path):
    log = RunDir(tmp_path).metrics_log()
    log.append(1, {"loss": 1.0})
    with log.path.open("a") as f:
        f.write('{"step": 2, "lo')  # SIGKILL mid-write
    assert log.rows() == [{"step": 1, "loss": 1.0}]
    log = RunDir(tmp_path).metrics_log()  # the resumed process: its first append cuts the torn row...
    log.append(2, {"loss": 2.0})  # ...so this one starts on its own line
    assert log.path.read_text().splitlines()[-1] == '{"step": 2, "loss": 2.0}'
    assert log.rows() == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]
