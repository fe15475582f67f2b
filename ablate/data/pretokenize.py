"""Pretokenization of real image-caption data: raw samples -> token sequences in shards, per split.

One call of `pretokenize` does one unit of work (one input shard, or one group of an image folder): each
sample is checked and preprocessed (`ablate.data.preprocess`), assigned to train, val or heldout by the hash
of its key (`ablate.data.sources.split_of`), its image encoded by the image tokenizer in batches, its
caption by the text tokenizer, and the sequence laid out as the synthetic data's are. Each split goes to
its own shard directory; memory is one batch of images per split, whatever the unit's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.data.preprocess import BadSample, SkipCounter, prepare_sample
from ablate.data.sequence import VocabLayout, layout_t2i, layout_uncond
from ablate.data.shards import ShardWriter
from ablate.data.sources import RawSample, split_of
from ablate.schema import DataConfig
from ablate.splits import SPLITS
from ablate.tokenize.image import ImageTokenizer
from ablate.tokenize.text import TextTokenizer

ENCODE_BATCH = 64  # images encoded at once (MoVQGAN at 256x256: ~40 MB of input per batch)
PROGRESS_EVERY_S = 5.0


@dataclass
class UnitResult:
    """What a unit wrote: sequences per split, the skip counts, caption token statistics."""

    sequences: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skips: SkipCounter = field(default_factory=SkipCounter)
    caption_tokens: int = 0
    captions_truncated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences,
            "skips": self.skips.as_metrics(),
            "caption_tokens": self.caption_tokens,
            "captions_truncated": self.captions_truncated,
        }


class _Split:
    """One split's pending images and captions, and its shard writer."""

    def __init__(self, out_dir: Path, seq_len: int, vocab_size: int) -> None:
        self.writer = ShardWriter(out_dir, seq_len=seq_len, vocab_size=vocab_size, overwrite=True)
        self.images: list[np.ndarray] = []
        self.captions: list[list[int]] = []


def pretokenize(
    samples: Iterable[RawSample],
    out_dir: Path,
    image_tok: ImageTokenizer,
    text_tok: TextTokenizer,
    layout: VocabLayout,
    data: DataConfig,
    metadata: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] = lambda p: None,
) -> UnitResult:
    """Write the usable samples as sequences under out_dir/<split>/, as the run's data section says (task,
    sizes, split fractions, the skip threshold); a DataError from the skip check (too many bad samples)
    leaves no finished split directory behind."""
    result = UnitResult()
    splits = {name: _Split(Path(out_dir) / name, data.seq_len, layout.size) for name in SPLITS}
    start = last = time.monotonic()
    try:
        for raw in samples:
            try:
                image, caption = prepare_sample(raw, data.image_size, data.min_image_side)
            except BadSample as bad:
                result.skips.skip(bad.reason)
                result.skips.check(data.max_bad_fraction, raw.shard, raw.key, bad.reason)
                continue
            result.skips.keep()
            name = split_of(raw.key, data.val_fraction, data.heldout_fraction)
            split = splits[name]
            ids = text_tok.encode_caption(caption, data.caption_leading_space) if data.task == "t2i" else []
            result.caption_tokens += len(ids)
            result.captions_truncated += len(ids) > data.caption_tokens
            split.images.append(image)
            split.captions.append(ids[: data.caption_tokens])
            if len(split.images) >= ENCODE_BATCH:
                _flush(split, image_tok, layout, data, result, name)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                on_progress({"images": result.skips.seen, "images_per_s": result.skips.seen / (now - start)})
        for split_name, split in splits.items():
            _flush(split, image_tok, layout, data, result, split_name)
            split.writer.finish({**metadata, "split": split_name})
    except BaseException:
        for split in splits.values():
            split.writer.abort()
        raise
    on_progress(
        {"images": result.skips.seen, "images_per_s": result.skips.seen / max(time.monotonic() - start, 1e-9)}
    )
    return result


def _flush(
    split: _Split,
    image_tok: ImageTokenizer,
    layout: VocabLayout,
    data: DataConfig,
    result: UnitResult,
    name: str,
) -> None:
    """Encode the pending images and write their sequences."""
    if not split.images:
        return
    with torch.no_grad():
        codes = np.asarray(image_tok.encode(np.stack(split.images)))  # (b, h*w)
    if data.task == "uncond":
        seqs = [layout_uncond(c, layout, data.seq_len) for c in codes]
    else:
        seqs = [
            layout_t2i(ids, c, layout, data.seq_len) for ids, c in zip(split.captions, codes, strict=True)
        ]
    split.writer.add_many(np.stack(seqs))
    result.sequences[name] += len(seqs)
    split.images, split.captions = [], []
