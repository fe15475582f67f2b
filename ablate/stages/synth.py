"""`synth`: the demo's synthetic image-caption pairs (train, val, held-out attribute combinations)."""

from __future__ import annotations

import io
import json

import numpy as np

from ablate.atomic import atomic_write_bytes, atomic_write_text
from ablate.config.schema import RunConfig
from ablate.data.synthetic import generate
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.stage import Stage

SPLITS = ("train", "val", "heldout")


def run(ctx: StageContext) -> None:
    """Generate each split deterministically from data.seed and save images, captions and scenes."""
    d = ctx.cfg.data
    sizes = {"train": d.n_train, "val": d.n_val, "heldout": d.n_heldout}
    for split in SPLITS:
        images, captions, scenes = generate(sizes[split], d.seed, split, d.image_size, d.max_shapes)
        buf = io.BytesIO()
        np.save(buf, images)
        atomic_write_bytes(ctx.out_dir / f"{split}_images.npy", buf.getvalue())
        atomic_write_text(ctx.out_dir / f"{split}_captions.json", json.dumps(captions))
        atomic_write_text(ctx.out_dir / f"{split}_scenes.json", json.dumps([s.to_dict() for s in scenes]))
        ctx.log(f"{split}: {len(captions)} pairs, e.g. {captions[0]!r}" if captions else f"{split}: empty")
    ctx.log_metrics({f"n_{k}": float(v) for k, v in sizes.items()}, step=0)


def load_split(synth_dir, split: str) -> tuple[np.ndarray, list[str], list[dict]]:
    """Images (N, H, W, 3) uint8 (memory-mapped), captions and scene dicts of one split."""
    images = np.load(synth_dir / f"{split}_images.npy", mmap_mode="r")
    captions = json.loads((synth_dir / f"{split}_captions.json").read_text())
    scenes = json.loads((synth_dir / f"{split}_scenes.json").read_text())
    return images, captions, scenes


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the generator's settings."""
    d = cfg.data
    fields = ("source", "image_size", "max_shapes", "n_train", "n_val", "n_heldout", "seed")
    return {k: getattr(d, k) for k in fields}


STAGE = Stage(
    names.SYNTH,
    version=1,
    config=config,
    run=run,
    applies=lambda cfg: cfg.data.source == "synthetic",
    params=("data",),
)
