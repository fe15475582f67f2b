"""The SLURM path against a real scheduler: the single-node cluster of ablate.ops.local_slurm (slurm-wlm,
munge, slurmdbd + MariaDB on 127.0.0.1), skipped with the reason where it cannot start.

Tiny sweeps go through `ablate launch ... cluster=slurm` exactly as a user's would: job arrays per stage,
dependencies, requeue after preemption and timeout with exact resume, relaunch, cancel, a job killed
without a checkpoint, two tasks training data-parallel, and an sbatch refusal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scales import tiny

from ablate.launch import slurm
from ablate.launch.manifest import Manifest
from ablate.rundir import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny(
    "cluster=slurm",
    "cluster.cpus_per_task=1",
    "cluster.timeout_min=20",
    "train.batch_tokens=2304",  # 8 sequences a step: what the step counts below assume
    "train.total_tokens=14000",
    "train.checkpoint_every_tokens=4608",
)


def sweep_file(tmp: Path, name: str, lrs: list[float], extra: str = "") -> Path:
    """A sweep of random-init text-to-image arms that differ in learning rate (no pretraining needed)."""
    arms = "\n".join(f"  - {{data.task: t2i, model.init: random, optim.lr: {lr}{extra}}}" for lr in lrs)
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\narms:\n{arms}\n")
    return path


def ablate(results: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def launch(results: Path, path: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = ablate(results, "launch", str(path), *TINY, *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def job_ids(results: Path, name: str) -> dict[str, str]:
    """Job name -> the SLURM job id of its last submission."""
    jobs = Manifest.load(results, name).data["jobs"]
    return {n: j["job_id"] for n, j in jobs.items() if j.get("job_id")}


def wait_for(results: Path, name: str, timeout: float = 600) -> dict[str, slurm.JobState]:
    """Wait until none of the sweep's jobs is queued or running; their final sacct states."""
    deadline = time.monotonic() + timeout
    ids = list(job_ids(results, name).values())
    while True:
        states = slurm.sacct(ids)
        # A job just submitted may not be in the accounting database yet: count it as active.
        if all(j in states and states[j].state not in slurm.ACTIVE_STATES for j in ids):
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"sweep {name} still running after {timeout} s: {states}")
        time.sleep(2)


def wait_until(predicate, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def stage_dir(results: Path, name: str, label_index: int, stage: str) -> Path:
    m = Manifest.load(results, name).data
    return Path(m["jobs"][m["arms"][label_index]["stages"][stage]]["dir"])


def metric_rows(run_dir: Path) -> list[dict]:
    """The training steps' rows of metrics.jsonl (not the final values' row the stage adds at its last step)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "final_loss" not in r]


def sacct_times(ids: list[str]) -> dict[str, tuple[str, str]]:
    arrays = sorted({j.split("_")[0] for j in ids})
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(arrays), "-o", "JobID,Start,End"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {f[0]: (f[1], f[2]) for f in (line.split("|") for line in out.splitlines()) if len(f) == 3}


def reference_metrics(results: Path, path: Path, label_index: int, out: Path, *overrides: str) -> dict:
    """The arm's train stage run in this process, uninterrupted, single task, untracked: its last row."""
    from ablate.arms import resolve_arms
    from ablate.launch.graph import build_graph
    from ablate.stages.runner import run_job
    from ablate.sweep import load_sweep

    arms = resolve_arms(load_sweep(path, [*TINY, *overrides]))
    graph = build_graph(arms, results)
    node = graph.nodes[graph.arm_stages[arms[label_index].label]["train"]]
    run_job(dataclasses.replace(node.job, out_dir=str(out), tracking=None))
    return metric_rows(out)[-1]


def mlflow_steps(results: Path, run_id: str, key: str = "loss") -> list[int]:
    from ablate import tracking

    hist = tracking.fetch_histories(tracking.default_tracking_uri(results), [run_id], [key])
    return sorted(hist["step"].tolist())


@pytest.fixture(scope="module")
def results(slurm_cluster, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-results")


@pytest.fixture(scope="module")
def tiny(results, tmp_path_factory):
    """A two-arm sweep launched on SLURM and waited for."""
    path = sweep_file(tmp_path_factory.mktemp("sweeps"), "slurmtiny", [1e-3, 5e-4])
    proc = launch(results, path)
    return path, proc, wait_for(results, "slurmtiny")


def test_a_sweep_runs_as_one_array_per_stage_with_dependencies_honoured(results, tiny):
    path, proc, states = tiny
    ids = job_ids(results, "slurmtiny")
    assert all(s.state == "COMPLETED" for s in states.values()), states
    arrays = {}
    for name, jid in ids.items():
        arrays.setdefault(name.split("/")[0], set()).add(jid.split("_")[0])
    # One sbatch per stage; the two arms' train (and evaluate) jobs are tasks of one array.
    assert set(arrays) == {"synth", "text_tokenizer", "image_tokenizer", "prepare", "train", "evaluate"}
    assert all(len(a) == 1 for a in arrays.values()), arrays
    assert sum(jid.startswith(next(iter(arrays["train"]))) for jid in ids.values()) == 2
    # Non-blocking: launch returned long before the ~minutes of work were done.
    assert "submitted train" in proc.stdout and "ablate status slurmtiny" in proc.stdout
    # Every job started after the jobs it needs had ended.
    times = sacct_times(list(ids.values()))
    manifest = Manifest.load(results, "slurmtiny").data
    from ablate.arms import resolve_arms
    from ablate.launch.graph import build_graph
    from ablate.sweep import load_sweep

    graph = build_graph(resolve_arms(load_sweep(path, TINY)), results)
    for name, node in graph.nodes.items():
        for dep in node.deps:
            assert times[ids[name]][0] >= times[ids[dep]][1], (name, dep, times[ids[name]], times[ids[dep]])
    assert all(RunDir(j["dir"]).is_complete() for j in manifest["jobs"].values())


def test_status_shows_each_arm_done_with_its_job_and_run(results, tiny):
    status = ablate(results, "status", "slurmtiny")
    assert status.returncode == 0, status.stderr
    rows = [line for line in status.stdout.splitlines() if line.startswith("task=t2i init=random")]
    assert len(rows) == 2 and all(" evaluate " in r and " done " in r for r in rows), status.stdout
    eval_ids = {jid for n, jid in job_ids(results, "slurmtiny").items() if n.startswith("evaluate/")}
    assert all(any(j in r for j in eval_ids) for r in rows)  # the job of the stage the row shows


def test_relaunching_a_finished_sweep_submits_nothing(results, tiny):
    path = tiny[0]
    before = job_ids(results, "slurmtiny")
    proc = launch(results, path)
    assert "0 job(s) in 0 array(s) submitted" in proc.stdout, proc.stdout
    assert job_ids(results, "slurmtiny") == before


def test_sbatch_refusal_quotes_slurm_and_submits_nothing(results, tmp_path):
    path = sweep_file(tmp_path, "slurmbad", [7e-4])
    proc = ablate(results, "launch", str(path), *TINY, "cluster.partition=nosuchpartition")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sbatch refused" in proc.stderr and "invalid partition" in proc.stderr.lower(), proc.stderr
    assert "Nothing was submitted" in proc.stderr
    assert job_ids(results, "slurmbad") == {}  # the manifest holds no job that was not submitted


def test_cancelled_arm_alone_is_resubmitted(results, tiny, tmp_path):
    # Training long enough (200 steps, ~10 s here) to be still running when scancel comes: with TINY's 6
    # steps it could finish while `ablate launch` was still creating runs, and the cancel then hit nothing.
    long = ["train.total_tokens=460800"]
    path = sweep_file(tmp_path, "slurmcancel", [2e-3, 3e-3])
    launch(results, path, *long)
    ids = job_ids(results, "slurmcancel")
    victim = Manifest.load(results, "slurmcancel").data["arms"][1]["stages"]
    task = ids[victim["train"]]

    def running() -> bool:
        state = slurm.sacct([task]).get(task)
        return state is not None and state.state == "RUNNING"

    # Cancelled while still pending (a busy node starts the array's tasks one by one), an array task
    # leaves no accounting record at all; cancel it running, as the test means to.
    wait_until(running, timeout=300, what=f"train task {task} running")
    subprocess.run(["scancel", task], check=True)
    states = wait_for(results, "slurmcancel")
    assert states[ids[victim["train"]]].state == "CANCELLED"
    # Its evaluation waited on that one train task (aftercorr) and was dropped; the other arm finished.
    assert states[ids[victim["evaluate"]]].state != "COMPLETED"
    other = Manifest.load(results, "slurmcancel").data["arms"][0]["stages"]
    assert states[ids[other["evaluate"]]].state == "COMPLETED"
    status = ablate(results, "status", "slurmcancel")
    assert "cancelled" in status.stdout and "resubmits" in status.stdout, status.stdout
    proc = launch(results, path, *long)
    assert "2 job(s) in 2 array(s) submitted" in proc.stdout, proc.stdout
    after = job_ids(results, "slurmcancel")
    assert {n for n in after if after[n] != ids[n]} == {victim["train"], victim["evaluate"]}
    states = wait_for(results, "slurmcancel")
    assert states[after[victim["evaluate"]]].state == "COMPLETED"


def test_preempted_twice_resumes_exactly_into_one_mlflow_run(results, tiny, tmp_path):
    import submitit

    # 100 steps, no periodic checkpoint: a resume can only start from the checkpoint written on the signal.
    long = ["train.total_tokens=230400", "train.checkpoint_every_tokens=100000000"]
    path = sweep_file(tmp_path, "slurmpreempt", [1e-3], extra=", train.seed: 5")
    launch(results, path, *long)
    train_job = job_ids(results, "slurmpreempt")[
        Manifest.load(results, "slurmpreempt").data["arms"][0]["stages"]["train"]
    ]
    run_dir = stage_dir(results, "slurmpreempt", 0, "train")
    folder = Path(Manifest.load(results, "slurmpreempt").data["job_folder"])
    job = submitit.SlurmJob(folder=folder / "%j", job_id=train_job)
    for k, at_step in enumerate((10, 50), start=1):

        def reached(at_step: int = at_step) -> bool:
            p = run_dir / "progress.json"
            return p.exists() and json.loads(p.read_text()).get("step", 0) >= at_step

        wait_until(reached, what=f"step {at_step}")
        job._interrupt()  # SIGTERM then USR2, as a preemption
        wait_until(lambda k=k: _log_count(folder, train_job, "Exiting gracefully") >= k, what="requeue")
    states = wait_for(results, "slurmpreempt")
    assert states[train_job].state == "COMPLETED"
    rows = metric_rows(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, 101))  # resumed from the checkpoint: no step twice, none lost
    assert _log_count(folder, train_job, "resuming from") == 2
    ref = reference_metrics(results, path, 0, tmp_path / "ref", *long)
    assert rows[-1]["step"] == ref["step"]
    for key in ("loss", "image_loss", "text_loss", "lr", "grad_norm"):
        assert rows[-1][key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    run_id = json.loads((run_dir / "provenance.json").read_text())["mlflow_run_id"]
    assert mlflow_steps(results, run_id) == steps  # one MLflow run, every step once


def _log_count(folder: Path, job_id: str, needle: str) -> int:
    out, err = slurm.log_paths(folder, job_id)
    return sum(p.read_text(errors="replace").count(needle) for p in (out, err) if p.exists())


def test_a_timeout_requeues_and_resumes(results, tiny, tmp_path):
    # A 1-minute limit with the signal 45 s before it: the job is told to stop after 15 s (SLURM's timer
    # is coarse: here it came up to ~25 s in), checkpoints, requeues itself and resumes, until the training
    # is done. 800 steps take ~40 s of training on a fast machine, so at least one signal comes during it.
    long = [
        "train.total_tokens=1843200",
        "cluster.timeout_min=1",
        "cluster.signal_delay_s=45",
        "cluster.max_timeouts=20",
    ]
    path = sweep_file(tmp_path, "slurmtimeout", [1e-3], extra=", train.seed: 6")
    launch(results, path, *long)
    name = Manifest.load(results, "slurmtimeout").data["arms"][0]["stages"]["train"]
    train_job = job_ids(results, "slurmtimeout")[name]
    folder = Path(Manifest.load(results, "slurmtimeout").data["job_folder"])
    states = wait_for(results, "slurmtimeout", timeout=900)
    assert states[train_job].state == "COMPLETED", (
        states,
        slurm.tail(slurm.log_paths(folder, train_job)[1], 30),
    )
    assert _log_count(folder, train_job, "timed-out") >= 1
    steps = [r["step"] for r in metric_rows(stage_dir(results, "slurmtimeout", 0, "train"))]
    assert steps == list(range(1, 801))


def test_a_killed_job_is_reported_and_relaunch_restarts_it(results, tiny, tmp_path):
    long = [
        "train.total_tokens=230400",
        "train.checkpoint_every_tokens=23040",
    ]  # 100 steps, checkpoint every 10
    path = sweep_file(tmp_path, "slurmkill", [1e-3], extra=", train.seed: 7")
    launch(results, path, *long)
    run_dir = stage_dir(results, "slurmkill", 0, "train")

    def training() -> bool:
        p = run_dir / "progress.json"
        return p.exists() and json.loads(p.read_text()).get("step", 0) >= 25

    wait_until(training, what="training to pass step 25")
    pid = json.loads((run_dir / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # no checkpoint on the way out, as when a node dies
    wait_for(results, "slurmkill")
    status = ablate(results, "status", "slurmkill")
    assert " failed" in status.stdout and "SLURM: FAILED" in status.stdout, status.stdout
    proc = launch(results, path, *long)
    assert "2 job(s) in 2 array(s) submitted" in proc.stdout, proc.stdout
    wait_for(results, "slurmkill")
    folder = Path(Manifest.load(results, "slurmkill").data["job_folder"])
    train_job_after = job_ids(results, "slurmkill")[
        Manifest.load(results, "slurmkill").data["arms"][0]["stages"]["train"]
    ]
    steps = [r["step"] for r in metric_rows(run_dir)]
    assert steps == list(range(1, 101))
    # Resumed from its last periodic checkpoint (every 10 steps), not from step 0.
    log = slurm.log_paths(folder, train_job_after)[0].read_text()
    resumed = [int(m) for m in re.findall(r"resuming from .* at step (\d+)", log)]
    assert len(resumed) == 1 and resumed[0] >= 20 and resumed[0] % 10 == 0, resumed
    status = ablate(results, "status", "slurmkill")
    assert " done " in status.stdout, status.stdout


def test_two_tasks_train_data_parallel_and_match_one_task(results, tiny, tmp_path):
    # float32: under bf16 autocast (train.precision=auto on a CPU with AMX) the two reduction orders
    # round differently, by more than the tolerance below.
    path = sweep_file(tmp_path, "slurmddp", [1e-3], extra=", train.seed: 8, train.precision: float32")
    launch(results, path, "cluster.tasks_per_node=2")
    states = wait_for(results, "slurmddp")
    assert all(s.state == "COMPLETED" for s in states.values()), states
    run_dir = stage_dir(results, "slurmddp", 0, "train")
    rows = metric_rows(run_dir)
    ref = reference_metrics(results, path, 0, tmp_path / "ref")
    assert rows[-1]["step"] == ref["step"]
    for key in ("loss", "image_loss", "grad_norm"):
        assert rows[-1][key] == pytest.approx(ref[key], rel=1e-4), key
    folder = Path(Manifest.load(results, "slurmddp").data["job_folder"])
    train_job = job_ids(results, "slurmddp")[
        Manifest.load(results, "slurmddp").data["arms"][0]["stages"]["train"]
    ]
    # Two ranks ran (submitit writes one log per task).
    assert (folder / train_job / f"{train_job}_1_log.out").exists()


def test_eight_concurrent_jobs_log_every_step_to_one_mlflow_server(results, tiny, tmp_path, tracking_server):
    """Eight train tasks of one array run at once, each logging to the PostgreSQL-backed server over HTTP."""
    from ablate import tracking

    path = sweep_file(tmp_path, "slurmserver", [round(1.05e-3 + i * 1e-4, 6) for i in range(8)])
    uri = tracking_server.url
    launch(results, path, f"tracking.uri={uri}", "cluster.array_parallelism=8")
    states = wait_for(results, "slurmserver", timeout=900)
    assert all(s.state == "COMPLETED" for s in states.values()), states
    manifest = Manifest.load(results, "slurmserver").data
    assert manifest["tracking_uri"] == uri
    # Every train job ran at once with the others (one array, 8 tasks, all 8 allowed to run together).
    ids = job_ids(results, "slurmserver")
    trains = [ids[a["stages"]["train"]] for a in manifest["arms"]]
    times = sacct_times(trains)
    assert max(t[0] for t in times.values()) < min(t[1] for t in times.values())
    # Every step each job wrote to its run directory is in the server's store, exactly once.
    for arm in manifest["arms"]:
        job = manifest["jobs"][arm["stages"]["train"]]
        rows = metric_rows(Path(job["dir"]))
        provenance = json.loads((Path(job["dir"]) / "provenance.json").read_text())
        # Made by the job; if it is missing, the job's log says why (read only then).
        assert "mlflow_run_id" in provenance, "".join(
            p.read_text()[-2000:] for p in (results / "jobs").rglob(f"*{job['job_id']}*.err")
        )
        run_id = provenance["mlflow_run_id"]
        hist = tracking.fetch_histories(uri, [run_id], ["loss", "image_loss"])
        for key in ("loss", "image_loss"):
            logged = hist[hist.key == key]
            assert sorted(logged.step) == [r["step"] for r in rows], key
            assert logged.sort_values("step").value.tolist() == pytest.approx([r[key] for r in rows])
        assert tracking.run_info(uri, run_id)["status"] == "FINISHED"


def test_real_data_pretokenizes_as_one_array_of_units_then_trains(results, tmp_path):
    """data=webdataset on SLURM: the prepare stage's units are the tasks of one array, the stage's own
    job waits for that array, then training runs on the combined shards; a relaunch submits nothing."""
    import realdata

    overrides = realdata.overrides(tmp_path / "assets")
    path = sweep_file(tmp_path, "slurmreal", [1e-3])
    launch(results, path, *overrides, "pretrain.corpus_max_chars=60000")
    states = wait_for(results, "slurmreal")
    assert all(s.state == "COMPLETED" for s in states.values()), states
    ids = job_ids(results, "slurmreal")
    units = {n: j for n, j in ids.items() if n.startswith("prepare/") and n.count("/") == 2}
    assert sorted(n.rsplit("/", 1)[1] for n in units) == ["00000", "00001", "00002"]
    arrays = {j.split("_")[0] for j in units.values()}
    assert len(arrays) == 1, units  # one sbatch: the units are its tasks
    (stage_job,) = [j for n, j in ids.items() if n.startswith("prepare/") and n.count("/") == 1]
    times = sacct_times([*units.values(), stage_job])
    assert all(times[stage_job][0] >= times[j][1] for j in units.values())  # waited for every unit
    assert RunDir(stage_dir(results, "slurmreal", 0, "evaluate")).is_complete()
    proc = launch(results, path, *overrides, "pretrain.corpus_max_chars=60000")
    assert "0 job(s) in 0 array(s) submitted" in proc.stdout, proc.stdout
