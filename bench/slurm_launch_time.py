"""Launch time on a real SLURM (ablate.ops.local_slurm): a 100-arm grid (lr x seed) queued and
`ablate launch` returned, side by side with hydra-submitit-launcher queueing 100 jobs of a trivial task.

ablate: a fresh results folder (no tracking store yet), `ablate launch GRID cluster=slurm` timed from
process start to exit, then the jobs it queued counted with squeue and cancelled before they run.
hydra-submitit-launcher (if installed: `pip install hydra-submitit-launcher`; not a dependency of
ablate): a Hydra app whose task prints its lr, `--multirun` over the same 100 points on the same
partition; timed to the moment all 100 jobs are queued (squeue), and to its return (it blocks until they
finish). Issue 12's target: 100 arms queued and `ablate launch` returned in under 5 s. Only the jobs
this script queued are cancelled (by their names), never other jobs of the user.

    python bench/slurm_launch_time.py [--skip-hydra] [--seeds 10]    # --seeds 1: a 10-arm grid (the smoke test)
"""

from __future__ import annotations

import argparse
import getpass
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = "bench100"  # the ablate jobs' names start with it ("bench100:train")
HYDRA_JOB = "bench100-hydra"  # hydra.launcher.name: the hydra jobs' name
LRS = 10  # learning rates of the grid; arms = LRS x --seeds
GRID = """name: {sweep}
grid:
  optim.lr: [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 9e-4, 1e-3]
  train.seed: range(0,{seeds})
"""
HYDRA_APP = """
import hydra

@hydra.main(version_base=None, config_path=None, config_name="config")
def main(cfg):
    print(cfg.lr, cfg.seed)

if __name__ == "__main__":
    from hydra.core.config_store import ConfigStore
    ConfigStore.instance().store(name="config", node={"lr": 1e-4, "seed": 0})
    main()
"""


def queued(prefix: str) -> list[str]:
    """Ids of this user's queued or running jobs (array tasks one by one) whose name starts with prefix."""
    user = os.environ.get("USER") or getpass.getuser()
    out = subprocess.run(
        ["squeue", "-h", "-r", "-u", user, "-o", "%j %i"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[-1] for line in out.splitlines() if line.startswith(prefix)]


def cancel(prefix: str) -> None:
    """Cancel the jobs this script queued (named prefix...) and wait until they have left the queue."""
    deadline = time.monotonic() + 60
    while (ids := queued(prefix)) and time.monotonic() < deadline:
        subprocess.run(["scancel", *sorted({i.split("_")[0] for i in ids})], check=False)  # whole arrays
        time.sleep(0.5)


def bench_ablate(tmp: Path, seeds: int) -> None:
    sweep = tmp / f"{SWEEP}.yaml"
    sweep.write_text(GRID.format(sweep=SWEEP, seeds=seeds))
    results = tmp / "results"
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablate.cli",
            "--results",
            str(results),
            "launch",
            str(sweep),
            "cluster=slurm",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        raise SystemExit("ablate launch failed")
    arrays = sum(" submitted " in line for line in proc.stdout.splitlines())
    jobs = len(queued(SWEEP + ":"))
    print(
        f"ablate launch: returned after {took:.2f} s; {arrays} sbatch arrays; {jobs} jobs (array tasks) in the queue"
    )
    print("  " + proc.stdout.strip().splitlines()[-1][:300])
    cancel(SWEEP + ":")


def bench_hydra(tmp: Path, seeds: int) -> None:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        print("hydra-submitit-launcher: not installed (pip install hydra-submitit-launcher); skipped")
        return
    app = tmp / "app.py"
    app.write_text(textwrap.dedent(HYDRA_APP))
    lrs = ",".join(f"{i}e-4" for i in range(1, 11))
    cmd = [
        sys.executable, str(app), "--multirun", "hydra/launcher=submitit_slurm", f"lr={lrs}",
        f"seed=range(0,{seeds})", "hydra.launcher.partition=local", "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", f"hydra.launcher.name={HYDRA_JOB}",
        f"hydra.sweep.dir={tmp / 'multirun'}",
    ]  # fmt: skip
    seen: dict[str, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def watch() -> None:
        while proc.poll() is None and "queued" not in seen:
            if len(queued(HYDRA_JOB)) >= LRS * seeds:
                seen["queued"] = time.perf_counter() - start
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate(timeout=900)
    took = time.perf_counter() - start
    watcher.join(timeout=5)
    if proc.returncode != 0:
        print(out[-2000:])
    when = f"{seen['queued']:.2f} s" if "queued" in seen else "never seen all at once (they ran as queued)"
    print(
        f"hydra-submitit-launcher: {LRS * seeds} jobs queued at {when}; returned after {took:.2f} s "
        "(waits for the jobs)"
    )
    cancel(HYDRA_JOB)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-hydra", action="store_true")
    parser.add_argument("--seeds", type=int, default=10, help=f"seeds per learning rate: {LRS} x SEEDS arms")
    args = parser.parse_args()
    from ablate.ops import local_slurm

    reason = local_slurm.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"no local SLURM: {reason}")
    info = local_slurm.up()
    print(f"local SLURM up: node {info.node}; {LRS * args.seeds} arms")
    cancel(SWEEP + ":")  # left over from an interrupted run of this script
    cancel(HYDRA_JOB)
    with tempfile.TemporaryDirectory() as d:
        bench_ablate(Path(d), args.seeds)
        if not args.skip_hydra:
            bench_hydra(Path(d), args.seeds)


if __name__ == "__main__":
    main()
