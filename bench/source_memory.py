"""Peak resident memory of streaming img2dataset shards through iter_webdataset + prepare_sample.

Writes 64 shards of the same size (synthetic scenes rendered at 320 px, cropped to 320x240, with noise so
the files are photo-sized; every other one JPEG, the rest PNG; each with a .txt caption and a .json) in a
temporary directory, then, in a fresh subprocess per shard count (1, 8, 64), streams every sample of the
first N shards once and prepares it at 256 px, as a real-data stage would. It reports how much the process's peak RSS (VmHWM) grew while reading:
with one sample in memory at a time it must stay flat in the number of shards.

    python bench/source_memory.py            # 200 samples per shard
    python bench/source_memory.py --quick    # 40 samples per shard (a smoke run, well under a minute)
    python bench/source_memory.py --per-shard 2 --shards 1,2    # toy size (the smoke test)
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from rss import reset_peak, status_kib  # bench/rss.py (this folder is on sys.path when run)

SOURCE_SIDE = 320
SIZE = 256
MIN_SIDE = 64
COUNTS = (1, 8, 64)


def read_case(directory: str, n_shards: int) -> dict[str, float]:
    """Child process: stream and prepare every sample of the first n shards; peak RSS growth and speed."""
    from ablate.data.preprocess import BadSample, SkipCounter, prepare_sample
    from ablate.data.sources import expand_shards, iter_webdataset

    shards = expand_shards(directory)[:n_shards]
    counter = SkipCounter()
    reset = reset_peak()
    base = status_kib("VmRSS") if reset else status_kib("VmHWM")
    t0 = time.perf_counter()
    checksum = 0
    for shard in shards:
        for raw in iter_webdataset(shard):
            try:
                img, _ = prepare_sample(raw, SIZE, MIN_SIDE)
            except BadSample as e:
                counter.skip(e.reason)
                continue
            counter.keep()
            checksum += int(img[0, 0, 0])  # touch the result
    dt = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    return {
        "growth_mib": (peak - base) / 1024,
        "peak_mib": peak / 1024,
        "samples": counter.kept,
        "bad": counter.bad,
        "samples_per_s": counter.seen / dt,
        "checksum": checksum,
    }


def _encoded_samples(n: int) -> list[tuple[str, bytes, str]]:
    """(extension, image bytes, caption) of n synthetic scenes, encoded once and reused by every shard."""
    from PIL import Image

    from ablate.data.synthetic import generate

    images, captions, _ = generate(n, 0, "train", SOURCE_SIDE)
    rng = np.random.default_rng(0)
    out = []
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        # Flat synthetic colours compress to almost nothing; noise gives files the size of web photos.
        noisy = np.clip(img[40:280].astype(np.int16) + rng.integers(-12, 13, (240, SOURCE_SIDE, 3)), 0, 255)
        buf = io.BytesIO()
        fmt, ext = ("JPEG", "jpg") if i % 2 == 0 else ("PNG", "png")
        Image.fromarray(noisy.astype(np.uint8)).save(buf, fmt)  # 320 wide, 240 high
        out.append((ext, buf.getvalue(), cap))
    return out


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def build(directory: Path, n_shards: int, per_shard: int) -> int:
    """n_shards shards of per_shard samples with distinct keys; returns the bytes of one shard."""
    samples = _encoded_samples(per_shard)
    for s in range(n_shards):
        with tarfile.open(directory / f"{s:05d}.tar", "w") as tf:
            for i, (ext, data, cap) in enumerate(samples):
                key = f"{s:05d}{i:04d}"
                _add(tf, f"{key}.{ext}", data)
                _add(tf, f"{key}.txt", cap.encode())
                _add(tf, f"{key}.json", json.dumps({"key": key, "caption": cap}).encode())
    return (directory / "00000.tar").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 samples per shard instead of 200")
    ap.add_argument("--per-shard", type=int, help="samples per shard (default 200, 40 with --quick)")
    ap.add_argument("--shards", default=",".join(map(str, COUNTS)), help="shard counts, comma-separated")
    ap.add_argument("--child", nargs=2, metavar=("DIR", "N_SHARDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(read_case(args.child[0], int(args.child[1]))))
        return

    per_shard = args.per_shard or (40 if args.quick else 200)
    counts = sorted({int(c) for c in args.shards.split(",")})
    header = ["shards", "samples", "data MiB", "peak RSS growth", "peak RSS", "samples/s"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ablate-source-bench-") as tmp:
        shard_bytes = build(Path(tmp), max(counts), per_shard)
        for n in counts:
            out = subprocess.run(
                [sys.executable, __file__, "--child", tmp, str(n)], check=True, capture_output=True, text=True
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            assert r["bad"] == 0 and r["samples"] == n * per_shard, r
            rows.append(
                [
                    str(n),
                    str(int(r["samples"])),
                    f"{n * shard_bytes / 2**20:.1f}",
                    f"+{r['growth_mib']:.1f} MiB",
                    f"{r['peak_mib']:.0f} MiB",
                    f"{r['samples_per_s']:.0f}",
                ]
            )
    print(
        f"streaming every sample once: {per_shard} samples per shard ({shard_bytes / 2**20:.1f} MiB), "
        f"{SOURCE_SIDE}x240 images to {SIZE}x{SIZE}"
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
