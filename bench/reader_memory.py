"""Peak resident memory of reading token shards, as a function of the number of shards.

Builds 1, 4 and 16 shards of ~64 MiB each (seq_len 1,152, int32: the paper's sequence and vocabulary) in a
temporary directory, then, in a fresh subprocess per case, reads every sequence once and reports how much
the process's peak RSS (VmHWM) grew while reading. Two read orders: ``sequential`` (dataset order, batches
of 64) and ``shuffled`` (ShardSampler order, batches of 64 via read_batch). A third column keeps every map
open (``max_open_shards`` unbounded) to show what the bound buys: mapped pages count in RSS until unmapped.

    python bench/reader_memory.py            # prints a table
    python bench/reader_memory.py --quick    # 4 MiB shards (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rss import reset_peak, status_kib  # bench/rss.py (this folder is on sys.path when run)

SEQ_LEN = 1152
VOCAB = 66_823  # 50,432 text + 7 specials + 16,384 image codes -> int32 shards
BATCH = 64


def read_case(path: str, order: str, max_open: int) -> dict[str, float]:
    """Child process: read every sequence once; report peak RSS growth (MiB) and throughput."""
    import torch  # noqa: F401  (imported before the baseline, as a trainer would have it)

    from ablate.data.shards import ShardDataset, ShardSampler, read_batch

    ds = ShardDataset(path, max_open_shards=max_open)
    n = len(ds)
    if order == "sequential":
        batches = (np.arange(i, min(i + BATCH, n)) for i in range(0, n, BATCH))
    else:
        it = ShardSampler(n, seed=0).batches(BATCH)
        batches = (next(it) for _ in range(-(-n // BATCH)))
    reset = reset_peak()
    base = status_kib("VmRSS") if reset else status_kib("VmHWM")
    t0 = time.perf_counter()
    checksum = 0
    for idx in batches:
        checksum += int(read_batch(ds, idx)[:, 0].sum())  # touch the data
    dt = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    return {"growth_mib": (peak - base) / 1024, "seq_per_s": n / dt, "sequences": n, "checksum": checksum}


def build(path: Path, n_shards: int, per_shard: int) -> None:
    from ablate.data.shards import ShardWriter

    rng = np.random.default_rng(n_shards)
    w = ShardWriter(path, SEQ_LEN, vocab_size=VOCAB, sequences_per_shard=per_shard)
    left = n_shards * per_shard
    while left:
        k = min(left, 2048)
        w.add_many(rng.integers(0, VOCAB, (k, SEQ_LEN), dtype=np.int32))
        left -= k
    w.finish({"bench": True})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 MiB shards instead of 64 MiB")
    ap.add_argument("--shards", default="1,4,16")
    ap.add_argument("--child", nargs=3, metavar=("PATH", "ORDER", "MAX_OPEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(read_case(args.child[0], args.child[1], int(args.child[2]))))
        return

    shard_mib = 4 if args.quick else 64
    per_shard = (shard_mib << 20) // (SEQ_LEN * 4)
    cases = [("sequential", 1), ("shuffled", 1), ("shuffled", 1 << 30)]
    header = ["shards", "data MiB"] + [f"{o} max_open={'all' if m > 1 else m}" for o, m in cases]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ablate-reader-bench-") as tmp:
        for n_shards in [int(s) for s in args.shards.split(",")]:
            path = Path(tmp) / f"s{n_shards}"
            build(path, n_shards, per_shard)
            row = [str(n_shards), f"{n_shards * per_shard * SEQ_LEN * 4 / 2**20:.0f}"]
            for order, max_open in cases:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), order, str(max_open)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                row.append(f"+{r['growth_mib']:.0f} MiB ({r['seq_per_s'] / 1e3:.0f}k seq/s)")
            rows.append(row)
            for f in path.iterdir():  # free the disk before the next, larger case
                f.unlink()
    print(f"peak RSS growth while reading every sequence once (seq_len {SEQ_LEN}, int32, batches of {BATCH})")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
