"""A launch plans and submits without importing torch (about 1.5-2.5 s of a dry run's time on a small
machine): only the jobs' processes load it. Guards the function-local imports of the stage modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import contextlib, io, sys
from ablate import cli
import ablate.launch.slurm  # the SLURM launcher and its job wrapper too
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = cli.main(["--results", sys.argv[1], "launch", "sweeps/paper.yaml", "--dry-run"])
assert rc == 0 and "arm(s)" in out.getvalue(), out.getvalue()[-2000:]
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_a_dry_run_of_the_paper_grid_does_not_import_torch(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", "torch imported by: " + done.stdout[-500:]
