"""The local single-node SLURM cluster (ablate.ops.local_slurm) runs arrays, dependencies and requeues."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import cloudpickle
import pytest
import submitit

from ablate.ops import local_slurm

pytestmark = pytest.mark.slurm

# Jobs unpickle this module's functions in a fresh interpreter where tests/ is not importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED")


def _pid(info: local_slurm.ClusterInfo, daemon: str) -> int:
    return int((info.run_dir / f"{daemon}.pid").read_text().split()[0])


def _sbatch(cwd: Path, *args: str) -> str:
    """Submit a batch job from `cwd`; its id."""
    cmd = ["sbatch", "--parsable", f"--chdir={cwd}", f"--output={cwd}/%j.out", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]


def _sacct(job_id: str) -> dict[str, dict[str, str]]:
    """Allocation rows of a job (array tasks as `ID_N`), keyed by JobID."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,Start,End"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return {r[0]: {"State": r[1].split()[0], "Start": r[2], "End": r[3]} for r in rows}


def _wait_done(job_id: str, n: int, timeout: float = 120) -> dict[str, dict[str, str]]:
    """Wait until `n` allocations of the job have ended; their sacct rows."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = _sacct(job_id)
        if len(rows) == n and all(r["State"] in TERMINAL for r in rows.values()):
            return rows
        time.sleep(1)
    raise AssertionError(f"job {job_id} not done after {timeout} s: {_sacct(job_id)}")


def _t(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def test_up_is_idempotent_and_fast(slurm_cluster: local_slurm.ClusterInfo) -> None:
    pids = {d: _pid(slurm_cluster, d) for d in local_slurm.DAEMONS}
    start = time.monotonic()
    again = local_slurm.up()
    elapsed = time.monotonic() - start
    print(f"second up(): {elapsed:.2f} s")
    assert again == slurm_cluster
    assert elapsed < 5
    assert {d: _pid(again, d) for d in local_slurm.DAEMONS} == pids  # nothing restarted
    assert local_slurm.unavailable_reason() is None
    assert local_slurm.main(["status"]) == 0


def _listening() -> dict[int, set[str]]:
    """Port -> local addresses of the TCP sockets listening on it (/proc/net/tcp and tcp6, as `ss -ltn`)."""
    out: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            addr, port = local.split(":")
            if len(addr) == 8:  # IPv4, little-endian hex
                text = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                text = "::1" if addr == "00000000000000000000000001000000" else f"ipv6:{addr}"
            out.setdefault(int(port, 16), set()).add(text)
    return out


def test_daemons_listen_on_127_0_0_1_only(slurm_cluster: local_slurm.ClusterInfo) -> None:
    listening = _listening()
    for port in (local_slurm.CTLD_PORT, local_slurm.SLURMD_PORT, local_slurm.DBD_PORT):
        assert listening.get(port) == {"127.0.0.1"}, (port, listening.get(port))


def test_job_array_runs_with_throttle(slurm_cluster: local_slurm.ClusterInfo, tmp_path: Path) -> None:
    job = _sbatch(tmp_path, "--array=0-2%2", "--wrap", "sleep 2; echo task $SLURM_ARRAY_TASK_ID")
    rows = _wait_done(job, 3)
    assert sorted(rows) == [f"{job}_{i}" for i in range(3)]
    assert {r["State"] for r in rows.values()} == {"COMPLETED"}
    # %2: the task that starts last starts only once one of the two before it has ended
    by_start = sorted(rows.values(), key=lambda r: _t(r["Start"]))
    assert _t(by_start[2]["Start"]) >= min(_t(r["End"]) for r in by_start[:2])
    assert len(list(tmp_path.glob("*.out"))) == 3


def test_afterok_dependency_waits(slurm_cluster: local_slurm.ClusterInfo, tmp_path: Path) -> None:
    first = _sbatch(tmp_path, "--wrap", "sleep 3")
    second = _sbatch(tmp_path, f"--dependency=afterok:{first}", "--wrap", "true")
    rows = {**_wait_done(first, 1), **_wait_done(second, 1)}
    assert rows[first]["State"] == rows[second]["State"] == "COMPLETED"
    assert _t(rows[second]["Start"]) >= _t(rows[first]["End"])


def _square(x: int) -> int:
    return x * x


def test_submitit_map_array(slurm_cluster: local_slurm.ClusterInfo, tmp_path: Path) -> None:
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(partition=slurm_cluster.partition, cpus_per_task=1, time=5)
    jobs = executor.map_array(_square, range(4))
    assert [job.result() for job in jobs] == [0, 1, 4, 9]


class CountStarts(submitit.helpers.Checkpointable):
    """Records each start (a count and a time stamp per start); the first run waits to be preempted."""

    def __call__(self, folder: str) -> int:
        root = Path(folder)
        count = root / "count"
        n = int(count.read_text()) + 1 if count.exists() else 1
        count.write_text(str(n))
        (root / f"start{n}").write_text(str(time.time()))
        if n == 1:
            time.sleep(300)
        return n


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_quickly(
    slurm_cluster: local_slurm.ClusterInfo, tmp_path: Path
) -> None:
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(partition=slurm_cluster.partition, cpus_per_task=1, time=10)
    job = executor.submit(CountStarts(), str(tmp_path))
    end = time.monotonic() + 60
    while not (tmp_path / "start1").exists():
        assert time.monotonic() < end, f"job never started: {job.state}"
        time.sleep(0.2)
    time.sleep(2)  # let submitit install its signal handlers
    preempted_at = time.time()
    job._interrupt()  # SIGTERM then USR2 via scancel --signal, as a preemption does
    assert job.result() == 2
    delay = float((tmp_path / "start2").read_text()) - preempted_at
    print(f"requeue restart delay: {delay:.1f} s")
    assert (tmp_path / "count").read_text() == "2"
    assert 0 < delay < 60
