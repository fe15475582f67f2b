"""`synth`: the demo's synthetic image-caption pairs (train, val, held-out attribute combinations)."""

from __future__ import annotations

import io
import json

import numpy as np

from ablate.atomic import atomic_write_bytes, atomic_write_text
from ablate.data.synthetic import generate
from ablate.schema import RunConfig
from ablate.splits import HELDOUT, SPLITS, TRAIN, VAL
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.stage import Stage


def run(ctx: StageContext) -> None:
    """Generate each split deterministically from data.seed and save images, captions and scenes."""
    d = ctx.cfg.data
    sizes = {TRAIN: d.n_train, VAL: d.n_val, HELDOUT: d.n_heldout}
    for split in SPLITS:
        images, captions, scenes = generate(sizes[split], d.seed, split, d.image_size, d.max_shapes)
        buf = io.BytesIO()
        np.save(buf, images)
        atomic_write_bytes(ctx.out_dir / f"{split}_images.npy", buf.getvalue())
        atomic_write_text(ctx.out_dir / f"{split}_captions.json", json.dumps(captions))
        atomic_write_text(ctx.out_dir / f"{split}_scenes.json", json.dumps([s.to_dict() for s in scenes]))
        ctx.log(f"{split}: {len(captions)} pairs, e.g. {captions[0]!r}" if captions else f"{split}: empty")
    ctx.log_metrics({f"n_{k}": float(v) for k, v in sizes.items()}, step=0)


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
