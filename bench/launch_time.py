"""Dry-run launch time: `ablate launch sweeps/paper.yaml --dry-run` and a 1,000-arm grid (lr x seed).

Each is timed as a user sees it, a fresh `ablate` process from start to exit (imports included), median of
--repeats runs. Then, in this process, the time to compose and validate the paper sweep's arms both ways:
ablate's (Hydra once per set of config-group choices, value overrides applied to plain copies) and every
arm composed from scratch by Hydra (how ablate composed before), the reference the run keys are tested
against (tests/test_sweep_limits.py). Targets (issue 12): paper < 2 s, 1,000 arms < 10 s.

    python bench/launch_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID_1000 = """name: bench1000
max_arms: 1000
base: [data.task=t2i]
grid:
  optim.lr: range(1,11)
  train.seed: range(0,100)
"""


def process_time(args: list[str], results: Path, repeats: int) -> float:
    """Median wall time of a fresh `ablate --results RESULTS ARGS` process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ablate.cli", "--results", str(results), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compose_both_ways(sweep_file: Path) -> tuple[int, float, float]:
    """Arms of a sweep, and seconds to compose + validate them: ablate's way, then Hydra per arm."""
    from ablate.arms import resolve_arms
    from ablate.config.compose import compose_with_hydra, finish, run_key, to_run_config
    from ablate.config.validate import validate
    from ablate.sweep import load_sweep

    sweep = load_sweep(sweep_file)
    resolve_arms(load_sweep(ROOT / "sweeps" / "t2i_init.yaml"))  # warm: imports, config registration
    start = time.perf_counter()
    resolve_arms(sweep)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    for arm in sweep.arms:
        cfg = finish(compose_with_hydra(arm.overrides), arm.overrides)
        validate(to_run_config(cfg))
        run_key(cfg)
    return len(sweep.arms), fast, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = Path(d) / "results"
        grid = Path(d) / "bench1000.yaml"
        grid.write_text(GRID_1000)
        paper = process_time(["launch", "sweeps/paper.yaml", "--dry-run"], results, args.repeats)
        big = process_time(["launch", str(grid), "--dry-run"], results, args.repeats)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ablate.launch.launcher"], check=True, cwd=ROOT)
        imports = time.perf_counter() - start
    n, fast, hydra = compose_both_ways(ROOT / "sweeps" / "paper.yaml")
    print(
        f"ablate launch sweeps/paper.yaml --dry-run: {paper:.2f} s (target < 2 s; median of {args.repeats})"
    )
    print(f"ablate launch <1,000-arm grid> --dry-run:  {big:.2f} s (target < 10 s)")
    print(
        f"python -c 'import ablate.launch.launcher' (no torch: tests/test_launch_imports.py): {imports:.2f} s"
    )
    print(
        f"paper.yaml's {n} arms composed + validated: {fast:.3f} s; every arm by Hydra from scratch: {hydra:.2f} s"
    )


if __name__ == "__main__":
    main()
