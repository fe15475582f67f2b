"""Launch time on a real SLURM (ablate.launch.local_slurm): a 100-arm grid (lr x seed) queued and
`ablate launch` returned, side by side with hydra-submitit-launcher queueing 100 jobs of a trivial task.

ablate: a fresh results folder (no tracking store yet), `ablate launch GRID cluster=slurm` timed from
process start to exit, then the jobs it queued counted with squeue and cancelled before they run.
hydra-submitit-launcher (if installed: `pip install hydra-submitit-launcher`; not a dependency of
ablate): a Hydra app whose task prints its lr, `--multirun` over the same 100 points on the same
partition; timed to the moment all 100 jobs are queued (squeue), and to its return (it blocks until they
finish). Issue 12's target: 100 arms queued and `ablate launch` returned in under 5 s.

    python bench/slurm_launch_time.py [--skip-hydra]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = """name: bench100
grid:
  optim.lr: [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 9e-4, 1e-3]
  train.seed: range(0,10)
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


def queued(user_filter: str) -> int:
    """Jobs in the queue whose name contains user_filter."""
    out = subprocess.run(["squeue", "-h", "-o", "%j %i"], capture_output=True, text=True, check=True).stdout
    return sum(user_filter in line for line in out.splitlines())


def cancel_all() -> None:
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and queued(""):
        time.sleep(0.5)


def bench_ablate(tmp: Path) -> None:
    sweep = tmp / "bench100.yaml"
    sweep.write_text(GRID)
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
    jobs = int(
        subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.count("\n")
    )
    print(
        f"ablate launch: returned after {took:.2f} s; {arrays} sbatch arrays; {jobs} jobs (array tasks) in the queue"
    )
    print("  " + proc.stdout.strip().splitlines()[-1][:300])
    cancel_all()


def bench_hydra(tmp: Path) -> None:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        print("hydra-submitit-launcher: not installed (pip install hydra-submitit-launcher); skipped")
        return
    app = tmp / "app.py"
    app.write_text(textwrap.dedent(HYDRA_APP))
    lrs = ",".join(f"{i}e-4" for i in range(1, 11))
    cmd = [
        sys.executable, str(app), "--multirun", "hydra/launcher=submitit_slurm", f"lr={lrs}", "seed=range(0,10)",
        "hydra.launcher.partition=local", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1", f"hydra.sweep.dir={tmp / 'multirun'}",
    ]  # fmt: skip
    seen: dict[str, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def watch() -> None:
        while proc.poll() is None and "queued" not in seen:
            n = int(
                subprocess.run(
                    ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True
                ).stdout.count("\n")
            )
            if n >= 100:
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
        f"hydra-submitit-launcher: 100 jobs queued at {when}; returned after {took:.2f} s (waits for the jobs)"
    )
    cancel_all()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-hydra", action="store_true")
    args = parser.parse_args()
    from ablate.launch import local_slurm

    info = local_slurm.up()
    print(f"local SLURM up: node {info.node}")
    cancel_all()
    with tempfile.TemporaryDirectory() as d:
        bench_ablate(Path(d))
        if not args.skip_hydra:
            bench_hydra(Path(d))


if __name__ == "__main__":
    main()
