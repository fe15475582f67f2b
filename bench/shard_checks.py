"""What the shard integrity checks cost: ShardDataset open (size, metadata and constant-file probes), the
per-read vocabulary check, and `ablate verify`'s re-hash, on shards in the paper's format.

Writes 4 shards of ~64 MiB (seq_len 1,152, int32) in a temporary directory, then times: opening the
directory; shuffled reads of 64 sequences (ShardSampler order, the training loop's pattern) with the id
check and with the check bypassed; and re-hashing every shard.

    python bench/shard_checks.py            # 4 x 64 MiB
    python bench/shard_checks.py --quick    # 4 x 4 MiB (a smoke run)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ablate.data.shards import ShardDataset, ShardSampler, ShardWriter
from ablate.verify import run

SEQ_LEN = 1152
VOCAB = 66_823  # 50,432 text + 7 specials + 16,384 image codes -> int32 shards
BATCH = 64
SHARDS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    per_shard = (4 << 20 if args.quick else 64 << 20) // (SEQ_LEN * 4)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "cache" / "prepare" / "k" / "train"
        rng = np.random.default_rng(0)
        with ShardWriter(d, SEQ_LEN, VOCAB, sequences_per_shard=per_shard) as w:
            for _ in range(SHARDS):
                w.add_many(rng.integers(0, VOCAB, size=(per_shard, SEQ_LEN), dtype=np.int32))
            w.finish({})
        t = time.perf_counter()
        ds = ShardDataset(d)
        opened = time.perf_counter() - t
        sampler = ShardSampler(len(ds), seed=0)
        batches = [sampler.indices_at(np.arange(i * BATCH, (i + 1) * BATCH)) for i in range(200)]

        def reads() -> float:
            t = time.perf_counter()
            for b in batches:
                ds.read(b)
            return (time.perf_counter() - t) / len(batches)

        reads()  # warm the page cache
        checked = min(reads() for _ in range(3))
        original = ds._check_ids
        ds._check_ids = lambda *a: None  # type: ignore[method-assign]
        unchecked = min(reads() for _ in range(3))
        ds._check_ids = original  # type: ignore[method-assign]
        t = time.perf_counter()
        failed = run(Path(tmp), echo=lambda line: None)
        hashed = time.perf_counter() - t
        if failed:  # a mismatch on shards just written: the checks, not the shards, are wrong
            raise SystemExit("ablate verify failed on the shards just written")
        mib = SHARDS * per_shard * SEQ_LEN * 4 / 2**20
    print(f"{SHARDS} shards, {mib:.0f} MiB, seq_len {SEQ_LEN}, int32, batches of {BATCH}")
    print(f"open (sizes, metadata, constant probes): {opened * 1e3:.2f} ms")
    print(
        f"shuffled read: {checked * 1e3:.3f} ms/batch with the id check, {unchecked * 1e3:.3f} ms without "
        f"(+{(checked - unchecked) * 1e3:.3f} ms, {100 * (checked / unchecked - 1):.1f}%)"
    )
    print(f"ablate verify: {hashed:.2f} s ({mib / hashed:.0f} MiB/s)")


if __name__ == "__main__":
    main()
