"""Token shards on disk: fixed-length sequences in flat binary files, read through lazy memory maps.

A shard directory holds ``shard_00000.bin``, ``shard_00001.bin``, ... (C-order ``(count, seq_len)`` arrays
of ``uint16`` when the vocabulary fits, else ``int32``) and ``meta.json``, written last: its presence
marks the directory complete. Every file is written under a temporary name and renamed into place
(``ablate.atomic``), so a shard file is whole whenever it exists under its final name.

Reading keeps at most ``max_open_shards`` memory maps open (least recently used closed first), so the
resident memory a reader accumulates is bounded by that many shards, whatever the dataset size
(``bench/reader_memory.py``: reading 1, 4 or 16 shards of 64 MiB grows peak RSS by ~69 MiB each time).
The price of the default bound of one open map is a re-map (~60 us) whenever consecutive reads change
shard: shuffled reads over 16 shards run at ~16k sequences/s instead of ~150k with every map kept open.

Sampling (ShardSampler) is an infinite, deterministic stream of dataset indices, epoch after epoch, which
ranks share by striding; see its docstring for the order and for how a run resumes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.atomic import TMP_SUFFIX, AtomicFile, atomic_write_text
from ablate.errors import ConfigError, DataError

FORMAT = "ablate-token-shards/1"
META_NAME = "meta.json"
DEFAULT_SHARD_BYTES = 64 << 20  # 64 MiB: big enough to keep the file count low, small enough to rewrite
DTYPES = ("uint16", "int32")
CONSTANT_PROBES = 8  # rows per shard probed on open for a constant (overwritten) file
_REBUILD = "delete the directory to rebuild it (the prepare stage writes it again)"


def shard_name(i: int) -> str:
    """File name of shard ``i``."""
    return f"shard_{i:05d}.bin"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Smallest supported dtype holding ids ``[0, vocab_size)``: uint16 up to 65,536 ids, else int32."""
    if vocab_size < 1:
        raise ConfigError("vocab_size", vocab_size, "an integer >= 1")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class ShardWriter:
    """Writes fixed-length sequences into shards of ``sequences_per_shard``; memory use is one sequence batch.

    Use ``add`` / ``add_many``, then ``finish(metadata)``; as a context manager, an exception (or leaving
    without ``finish``) removes the unfinished shard and leaves no ``meta.json``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        seq_len: int,
        vocab_size: int,
        sequences_per_shard: int | None = None,
        dtype: Any = None,
        overwrite: bool = False,
    ) -> None:
        if seq_len < 1:
            raise ConfigError("seq_len", seq_len, "an integer >= 1")
        self.out_dir = Path(out_dir)
        self.seq_len = int(seq_len)
        self.vocab_size = int(vocab_size)
        self.dtype = dtype_for_vocab(vocab_size) if dtype is None else np.dtype(dtype)
        if self.dtype.name not in DTYPES:
            raise ConfigError("dtype", self.dtype.name, " or ".join(DTYPES))
        if vocab_size - 1 > np.iinfo(self.dtype).max:
            raise ConfigError("dtype", self.dtype.name, f"a dtype holding ids up to {vocab_size - 1}")
        row_bytes = self.seq_len * self.dtype.itemsize
        self.sequences_per_shard = (
            max(1, DEFAULT_SHARD_BYTES // row_bytes)
            if sequences_per_shard is None
            else int(sequences_per_shard)
        )
        if self.sequences_per_shard < 1:
            raise ConfigError("sequences_per_shard", sequences_per_shard, "an integer >= 1")

        self.out_dir.mkdir(parents=True, exist_ok=True)
        meta = self.out_dir / META_NAME
        if meta.exists():
            if not overwrite:
                raise DataError(f"{self.out_dir} already holds finished shards ({META_NAME}); {_REBUILD}")
            meta.unlink()  # first, so the directory reads as incomplete while it is rewritten
        # Leftovers of an interrupted write would otherwise sit beside the new shards (pathlib's glob
        # matches the hidden temporary files too).
        for stale in [*self.out_dir.glob("shard_*.bin"), *self.out_dir.glob(f"*{TMP_SUFFIX}")]:
            stale.unlink()

        self._shards: list[dict[str, Any]] = []
        self._file: AtomicFile | None = None  # the open shard, under its temporary name
        self._hash: Any = None  # hashlib's sha256 object of the open shard
        self._count = 0  # sequences in the open shard
        self._finished = False

    @property
    def total(self) -> int:
        """Sequences added so far."""
        return sum(s["count"] for s in self._shards) + self._count

    def _close_shard(self) -> None:
        assert self._file is not None
        self._file.commit()
        name = shard_name(len(self._shards))
        nbytes = self._count * self.seq_len * self.dtype.itemsize
        self._shards.append(
            {"file": name, "count": self._count, "bytes": nbytes, "sha256": self._hash.hexdigest()}
        )
        self._file, self._hash, self._count = None, None, 0

    def add(self, seq: Any) -> None:
        """Append one sequence ``(seq_len,)``."""
        self.add_many(np.asarray(seq).reshape(1, -1))

    def add_many(self, arr: Any) -> None:
        """Append sequences ``(n, seq_len)``; ids must lie in ``[0, vocab_size)``."""
        if self._finished:
            raise DataError(f"ShardWriter for {self.out_dir} is already finished")
        arr = np.asarray(arr)
        if arr.ndim != 2 or arr.shape[1] != self.seq_len:
            raise DataError(f"expected sequences of shape (n, {self.seq_len}), got {arr.shape}")
        if arr.shape[0] == 0:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:  # a cast would wrap these silently
            raise DataError(f"token ids must lie in [0, {self.vocab_size}); found range [{lo}, {hi}]")
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        done = 0
        while done < arr.shape[0]:
            if self._file is None:
                self._file = AtomicFile(self.out_dir / shard_name(len(self._shards)))
                self._hash = hashlib.sha256()
            take = min(arr.shape[0] - done, self.sequences_per_shard - self._count)
            chunk = arr[done : done + take].tobytes()
            self._file.write(chunk)
            self._hash.update(chunk)
            self._count += take
            done += take
            if self._count == self.sequences_per_shard:
                self._close_shard()

    def finish(self, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close the last shard and write ``meta.json`` (with the caller's ``metadata``); returns the record."""
        if self._finished:
            raise DataError(f"ShardWriter for {self.out_dir} is already finished")
        if self._count:
            self._close_shard()
        meta = {
            "format": FORMAT,
            "seq_len": self.seq_len,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "sequences_per_shard": self.sequences_per_shard,
            "total": sum(s["count"] for s in self._shards),
            "shards": self._shards,
            "metadata": dict(metadata or {}),
        }
        text = json.dumps(meta, indent=1, sort_keys=True)  # TypeError here names a non-JSON metadata value
        atomic_write_text(self.out_dir / META_NAME, text)
        self._finished = True
        return meta

    def abort(self) -> None:
        """Drop the unfinished shard (finished shards stay, but without meta.json nothing reads them)."""
        if self._file is not None:
            self._file.abort()
            self._file, self._hash, self._count = None, None, 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._finished:
            self.abort()


def combine(parts: list[Path], out_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write ``out_dir/meta.json`` naming every shard of the finished shard directories ``parts`` (paths
    relative to out_dir), so one ShardDataset reads across all of them without copying a byte.

    The parts must agree on seq_len, dtype and vocab_size; an empty part (no shards) is allowed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for part in parts:
        meta_path = Path(part) / META_NAME
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_path} is missing or unreadable ({e}); {_REBUILD}") from None
        first = first or meta
        for key in ("seq_len", "dtype", "vocab_size"):
            if meta.get(key) != first.get(key):
                raise DataError(
                    f"{meta_path}: {key} {meta.get(key)!r} differs from {first.get(key)!r}; {_REBUILD}"
                )
        rel = Path(os.path.relpath(Path(part).resolve(), out_dir.resolve()))
        shards += [{**s, "file": (rel / s["file"]).as_posix()} for s in meta["shards"]]
    if first is None:
        raise DataError(f"no shard directories to combine into {out_dir}")
    meta = {
        "format": FORMAT,
        "seq_len": first["seq_len"],
        "dtype": first["dtype"],
        "vocab_size": first["vocab_size"],
        "sequences_per_shard": first["sequences_per_shard"],
        "total": sum(int(s["count"]) for s in shards),
        "shards": shards,
        "metadata": dict(metadata),
    }
    atomic_write_text(out_dir / META_NAME, json.dumps(meta, indent=1, sort_keys=True))
    return meta


class ShardDataset:
    """Random access to the sequences of a shard directory; validates ``meta.json`` against the files.

    Shards are memory-mapped on first use and at most ``max_open_shards`` maps stay open. Items are
    returned as copies, so no returned array keeps a map (and its resident pages) alive.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        seq_len: int | None = None,
        dtype: Any = None,
        max_open_shards: int = 1,
    ) -> None:
        self.path = Path(path)
        if max_open_shards < 1:
            raise ConfigError("max_open_shards", max_open_shards, "an integer >= 1")
        self.max_open_shards = int(max_open_shards)
        meta_path = self.path / META_NAME
        if not meta_path.is_file():
            raise DataError(
                f"{meta_path} is missing: {self.path} is not a finished shard directory "
                f"(an interrupted prepare leaves none); {_REBUILD}"
            )
        try:
            meta = json.loads(meta_path.read_text())
            self.seq_len = int(meta["seq_len"])
            self.dtype = np.dtype(meta["dtype"])
            shards = list(meta["shards"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{meta_path} is unreadable or incomplete ({e!r}); {_REBUILD}") from None
        if meta.get("format") != FORMAT or self.dtype.name not in DTYPES:
            raise DataError(
                f"{meta_path}: format {meta.get('format')!r} / dtype {self.dtype.name!r}, expected "
                f"{FORMAT!r} with dtype in {DTYPES}; {_REBUILD}"
            )
        if seq_len is not None and int(seq_len) != self.seq_len:
            raise DataError(f"{meta_path}: seq_len is {self.seq_len}, expected {seq_len}; {_REBUILD}")
        if dtype is not None and np.dtype(dtype) != self.dtype:
            raise DataError(
                f"{meta_path}: dtype is {self.dtype.name}, expected {np.dtype(dtype).name}; {_REBUILD}"
            )
        self.meta: dict[str, Any] = meta
        vocab = meta.get("vocab_size")
        if (
            isinstance(vocab, bool)
            or not isinstance(vocab, int)
            or not 1 <= vocab <= np.iinfo(self.dtype).max + 1
        ):
            raise DataError(
                f"{meta_path}: vocab_size {vocab!r} is not an integer in [1, {np.iinfo(self.dtype).max + 1}] "
                f"(what {self.dtype.name} holds); {_REBUILD}"
            )
        self.vocab_size = int(vocab)

        row_bytes = self.seq_len * self.dtype.itemsize
        self._files: list[Path] = []
        counts = []
        for s in shards:
            f = self.path / s["file"]
            count = int(s["count"])
            expected = count * row_bytes
            if count < 1 or int(s.get("bytes", expected)) != expected:
                raise DataError(
                    f"{meta_path}: shard {s['file']} records {count} sequences and {s.get('bytes')} bytes, "
                    f"inconsistent with seq_len {self.seq_len} x {self.dtype.name}; {_REBUILD}"
                )
            if not f.is_file():
                raise DataError(f"shard {f} is missing: expected {expected} bytes, found no file; {_REBUILD}")
            found = f.stat().st_size
            if found != expected:
                raise DataError(
                    f"shard {f} has the wrong size: expected {expected} bytes ({count} sequences x "
                    f"{self.seq_len} tokens x {self.dtype.itemsize} B), found {found} bytes "
                    f"(truncated or not written by this meta.json); {_REBUILD}"
                )
            self._files.append(f)
            counts.append(count)
        self.counts = np.asarray(counts, dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)  # (num_shards+1,)
        if int(meta.get("total", self._starts[-1])) != self._starts[-1]:
            raise DataError(
                f"{meta_path}: total {meta.get('total')} != sum of shard counts {self._starts[-1]}; {_REBUILD}"
            )
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()
        for shard in range(self.num_shards):
            self._check_not_constant(shard)
        self.close()

    def _check_not_constant(self, shard: int) -> None:
        """DataError if CONSTANT_PROBES rows spread over the shard are all one id repeated.

        No sequence ablate writes is one id repeated (image sequences hold specials and codes; text is
        packed prose), let alone several rows spread over a shard: a file overwritten with one byte value
        (or a broken writer) would otherwise train to a loss of 0 and look like success. It reads a few
        pages per shard, once, when the directory is opened.
        """
        count = int(self.counts[shard])
        rows = np.unique(np.linspace(0, count - 1, min(count, CONSTANT_PROBES)).astype(np.int64))
        if rows.size < 2 or self.seq_len < 2:
            return
        probe = self._map(shard)[rows]  # (P, L)
        if (probe == probe[0, 0]).all():
            raise DataError(
                f"shard {self._files[shard]}: every probed sequence ({rows.size} of {count}) is token id "
                f"{int(probe[0, 0])} repeated {self.seq_len} times: the file is corrupted or was overwritten "
                f"(`ablate verify` checks it against the sha256 in meta.json); {_REBUILD}"
            )

    def _check_ids(self, shard: int, rows: np.ndarray, data: np.ndarray) -> None:
        """DataError naming the file, row and id if `data` (rows `rows` of `shard`) holds an id outside
        the vocabulary (one max/min over the batch, cheap next to a training step)."""
        if not data.size:
            return
        hi, lo = data.max(), data.min()
        if hi < self.vocab_size and lo >= 0:
            return
        bad = (data >= self.vocab_size) | (data < 0)
        r, c = (int(x[0]) for x in np.nonzero(bad))
        raise DataError(
            f"shard {self._files[shard]}: sequence {int(rows[r])} of the file (position {c}) holds token id "
            f"{int(data[r, c])}, outside the vocabulary [0, {self.vocab_size}) its meta.json records: the "
            f"file is corrupted (`ablate verify` checks it against its sha256); {_REBUILD}"
        )

    # --- metadata ----------------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """The caller's metadata given to ShardWriter.finish (vocab layout, tokenizer fingerprints, ...)."""
        return self.meta.get("metadata", {})

    @property
    def num_shards(self) -> int:
        return len(self._files)

    @property
    def sequences_per_shard(self) -> int:
        """Nominal shard size (every shard but the last holds exactly this many)."""
        return int(self.meta.get("sequences_per_shard", self.counts.max() if self.num_shards else 1))

    def __len__(self) -> int:
        return int(self._starts[-1])

    # --- reading -----------------------------------------------------------------------------------------
    def _map(self, shard: int) -> np.memmap:
        m = self._maps.get(shard)
        if m is None:
            while len(self._maps) >= self.max_open_shards:
                self._maps.popitem(last=False)  # dropping the last reference unmaps it
            m = np.memmap(
                self._files[shard], dtype=self.dtype, mode="r", shape=(int(self.counts[shard]), self.seq_len)
            )
            self._maps[shard] = m
        else:
            self._maps.move_to_end(shard)
        return m

    def _check(self, idx: np.ndarray) -> np.ndarray:
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} sequences: [{idx.min()}, {idx.max()}]")
        return np.where(idx < 0, idx + n, idx)

    def __getitem__(self, i: int) -> np.ndarray:
        """Sequence ``i`` as a fresh ``(seq_len,)`` array in the shard dtype."""
        i = int(self._check(np.asarray([int(i)], dtype=np.int64))[0])
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        row = i - int(self._starts[shard])
        out = np.array(self._map(shard)[row])  # (L,)
        self._check_ids(shard, np.asarray([row]), out[None])
        return out

    def read(self, indices: Any) -> np.ndarray:
        """Sequences at ``indices`` as one ``(B, seq_len)`` array; each shard is mapped once per call."""
        idx = self._check(np.asarray(indices, dtype=np.int64).reshape(-1))
        out = np.empty((idx.size, self.seq_len), dtype=self.dtype)  # (B, L)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for shard in np.unique(shard_of):
            sel = shard_of == shard
            rows = idx[sel] - self._starts[shard]
            chunk = self._map(int(shard))[rows]  # fancy index: a copy
            self._check_ids(int(shard), rows, chunk)
            out[sel] = chunk
        return out

    def verify(self) -> None:
        """Check every shard's sha256 against meta.json (reads all data; sizes are checked on open)."""
        for f, s in zip(self._files, self.meta["shards"], strict=True):
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(functools.partial(fh.read, 1 << 20), b""):
                    h.update(block)
            if "sha256" in s and h.hexdigest() != s["sha256"]:
                raise DataError(f"shard {f}: sha256 {h.hexdigest()} != recorded {s['sha256']}; {_REBUILD}")

    def close(self) -> None:
        """Unmap every open shard."""
        self._maps.clear()

    def __getstate__(self) -> dict[str, Any]:
        # A pickled memmap would carry its data: workers reopen their own maps instead.
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state


def read_batch(dataset: ShardDataset, indices: Any) -> torch.Tensor:
    """Sequences at ``indices`` as a ``torch.long`` tensor ``(B, seq_len)``."""
    return torch.from_numpy(dataset.read(indices).astype(np.int64))


DEFAULT_BLOCK_SIZE = 1 << 22  # 4,194,304 indices: a block permutation is 32 MiB of int64


class ShardSampler:
    """Deterministic, resumable stream of dataset indices, shared by ``world_size`` ranks.

    Order of epoch ``e`` (from ``(seed, e)`` only): the ``n`` indices are dealt into ``nb =
    ceil(n / block_size)`` strided blocks (block ``b`` = ``b, b+nb, b+2nb, ...``); the block order is
    permuted, then each block's members are permuted. With ``n <= block_size`` (default 4,194,304) that is
    a plain uniform permutation; beyond, it never holds more than one block's permutation in memory, and
    because blocks are strided every stretch of the stream still draws from the whole dataset (whatever
    order the shards were written in).

    The *global stream* is epoch 0's order, then epoch 1's, ...; position ``g`` belongs to rank
    ``g % world_size``. Ranks are therefore disjoint and together cover every epoch exactly.
    """

    def __init__(
        self, n: int, seed: int, rank: int = 0, world_size: int = 1, block_size: int | None = None
    ) -> None:
        if n < 1:
            raise DataError(f"cannot sample from an empty dataset (n={n})")
        if seed < 0:
            raise ConfigError("seed", seed, "an integer >= 0")
        if world_size < 1:
            raise ConfigError("world_size", world_size, "an integer >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError("rank", rank, f"an integer in [0, {world_size})")
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), int(world_size)
        self.block_size = min(self.n, DEFAULT_BLOCK_SIZE if block_size is None else int(block_size))
        if self.block_size < 1:
            raise ConfigError("block_size", block_size, "an integer >= 1")
        self.num_blocks = -(-self.n // self.block_size)
        # Strided block b has ceil((n - b) / nb) members.
        self._block_sizes = (self.n - np.arange(self.num_blocks) + self.num_blocks - 1) // self.num_blocks
        self._orders: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(block order, start of each ordered block within the epoch)."""
        hit = self._orders.get(epoch)
        if hit is None:
            # The constant words tag the two uses: SeedSequence([s, e]) equals [s, e, 0], so tags must differ
            # inside the words, not by length.
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_blocks)
            starts = np.concatenate([[0], np.cumsum(self._block_sizes[order])[:-1]]).astype(np.int64)
            hit = self._orders[epoch] = (order, starts)
            if len(self._orders) > 2:
                self._orders.popitem(last=False)
        return hit

    def _block_perm(self, epoch: int, block: int) -> np.ndarray:
        key = (epoch, block)
        perm = self._perms.get(key)
        if perm is None:
            rng = np.random.default_rng([self.seed, epoch, 1, block])
            perm = self._perms[key] = rng.permutation(int(self._block_sizes[block]))
            if len(self._perms) > 2:  # the current block and, across a boundary, its neighbour
                self._perms.popitem(last=False)
        return perm

    def indices_at(self, positions: Any) -> np.ndarray:
        """Dataset indices at global stream positions (any shape of non-negative ints, int64 result)."""
        pos = np.asarray(positions, dtype=np.int64)
        flat = pos.reshape(-1)
        if flat.size and flat.min() < 0:
            raise ValueError("stream positions must be >= 0")
        out = np.empty_like(flat)
        epochs, offsets = np.divmod(flat, self.n)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            order, starts = self._epoch(int(epoch))
            off = offsets[in_epoch]
            k = np.searchsorted(starts, off, side="right") - 1  # ordered-block slot of each position
            res = np.empty_like(off)
            for slot in np.unique(k):
                sel = k == slot
                block = int(order[slot])
                res[sel] = (
                    block + self.num_blocks * self._block_perm(int(epoch), block)[off[sel] - starts[slot]]
                )
            out[in_epoch] = res
        return out.reshape(pos.shape)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s whole order (all ranks); materialises ``n`` indices, for tests and small data."""
        return self.indices_at(np.arange(epoch * self.n, (epoch + 1) * self.n, dtype=np.int64))

    def batches(self, batch_size: int, start_sample: int = 0) -> Iterator[np.ndarray]:
        """This rank's batches of ``batch_size`` indices, forever, resuming at global position ``start_sample``.

        ``start_sample`` counts samples consumed by *all* ranks (for a trainer: optimizer steps done x
        sequences per step), so a resumed run continues exactly where an uninterrupted one would be, even
        with a different world size. This rank starts at the first position >= ``start_sample`` it owns.
        """
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        if start_sample < 0:
            raise ConfigError("start_sample", start_sample, "an integer >= 0")
        w = self.world_size
        first = int(start_sample) + (self.rank - int(start_sample)) % w
        step = np.arange(batch_size, dtype=np.int64) * w  # (batch_size,)
        span = batch_size * w
        while True:
            yield self.indices_at(first + step)
            first += span
