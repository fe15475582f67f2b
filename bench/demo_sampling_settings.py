"""Choose the demo's sampling settings on validation captions the evaluate stage does not report.

The evaluate stage reports caption match on the first `evaluate.n_samples` validation pairs; this
samples the pairs after them (`--offset`, default 128, so the two sets never share a caption) from one
trained run for each setting given, and prints exact caption match and colour match per setting.

    python bench/demo_sampling_settings.py results/cache/train/<key> \
        [--n 64] [--offset 128] [--settings 1.0:0 0.8:0 0.8:0:3 1.0:8]    # temperature:top_k[:guidance]

The run must have more than --offset validation pairs (the demo has 256; tests/test_bench_smoke.py trains a
tiny run and passes --offset 4 --n 4).

The run's inputs (prepare, image tokenizer; synth through prepare) are read from provenance.json. One thread, as a
demo job has; timings are this machine's and noisy when other jobs share it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ablate.data.sequence import VocabLayout, caption_ids, prompt_t2i
from ablate.data.shards import ShardDataset
from ablate.data.synthetic import Scene
from ablate.evaluate.image_metrics import caption_matches, colours_present
from ablate.evaluate.sampling import sample_from_prompts
from ablate.stages.evaluate import load_trained
from ablate.stages.inputs import load_split, open_image_tokenizer


def _input(train_dir: Path, stage: str) -> Path:
    prov = json.loads((train_dir / "provenance.json").read_text())
    path = Path(prov["inputs"][stage])
    # provenance names inputs relative to where the launch ran (the repository root)
    return path if path.is_absolute() or path.exists() else train_dir.parents[3] / path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train_dir", type=Path)
    ap.add_argument("--n", type=int, default=64, help="validation captions per setting")
    ap.add_argument("--offset", type=int, default=128, help="first validation pair used")
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["1.0:0", "0.8:0", "0.8:0:3", "1.0:8"],
        help="temperature:top_k[:guidance_scale] (guidance needs a run trained with caption dropout)",
    )
    ap.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    prepare = _input(a.train_dir, "prepare")
    image_tok = open_image_tokenizer(_input(a.train_dir, "image_tokenizer"))
    synth = _input(prepare, "synth")
    val = ShardDataset(prepare / "val")
    layout = VocabLayout.from_dict(val.metadata["vocab"])
    idx = np.arange(a.offset, min(len(val), a.offset + a.n))
    if not len(idx):
        raise SystemExit(f"--offset {a.offset}: the run has {len(val)} validation pairs")
    seqs = val.read(idx)
    prompts = [
        prompt_t2i(caption_ids(s, layout), layout, seqs.shape[1], image_tok.tokens_per_image) for s in seqs
    ]
    _, _, val_scenes = load_split(synth, "val")
    scenes = [Scene.from_dict(val_scenes[i]) for i in idx]
    model = load_trained(a.train_dir)
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if a.precision == "bf16"
        else torch.autocast("cpu", enabled=False)
    )
    for s in a.settings:
        parts = s.split(":")
        temp, top_k = float(parts[0]), int(parts[1])
        guidance = float(parts[2]) if len(parts) > 2 else 1.0
        gen = torch.Generator().manual_seed(a.seed)
        t0 = time.perf_counter()
        with ctx:
            codes = sample_from_prompts(
                model,
                prompts,
                layout,
                image_tok.tokens_per_image,
                batch_size=32,
                temperature=temp,
                top_k=top_k,
                generator=gen,
                guidance_scale=guidance,
            )
        images = image_tok.decode(codes)
        match = caption_matches(images, scenes).mean()
        colour = colours_present(images, scenes).mean()
        print(
            f"temperature {temp:<4} top_k {top_k:<3} guidance {guidance:<4}: caption match {match:.3f}, colour match {colour:.3f} "
            f"({len(idx)} val captions {idx[0]}..{idx[-1]}, {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
