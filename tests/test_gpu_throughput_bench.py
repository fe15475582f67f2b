"""bench/gpu_throughput.py runs (a CPU smoke check at a tiny size: no timing is asserted) and names peaks."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_throughput  # noqa: E402


def test_the_bench_trains_a_few_steps_and_reports_what_it_measured() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/gpu_throughput.py", "--config", "tiny", "--seq-len", "32"]
        + ["--micro-batch", "2", "--steps", "2", "--warmup", "1", "--precision", "bf16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert float(re.search(r"tokens/s\s+([\d,.]+)", out).group(1).replace(",", "")) > 0
    assert math.isfinite(float(re.search(r"loss\s+(\S+)", out).group(1)))
    assert "MFU           n/a" in out and "micro-batch 2, bf16" in out  # a CPU has no bf16 peak in the table


def test_peaks_are_found_by_device_name() -> None:
    assert gpu_throughput.peak_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_throughput.peak_for("NVIDIA A100 80GB PCIe") == 312e12
    assert gpu_throughput.peak_for("NVIDIA L4") == 121e12 and gpu_throughput.peak_for("NVIDIA L40S") == 362e12
    assert gpu_throughput.peak_for("NVIDIA H200") == 989e12
    assert gpu_throughput.peak_for("AMD EPYC") is None


def test_the_paper_vocabulary_is_text_plus_specials_plus_image_codes() -> None:
    assert gpu_throughput.PAPER_LAYOUT.size == 50432 + 7 + 16384 == 66823
