"""`evaluate`: samples from a trained run and their image metrics (Figure 5).

Text-to-image: the captions of the first `evaluate.n_samples` validation pairs (attribute combinations
seen in training) and held-out pairs (combinations never seen) are the prompts; each generated image is
decoded through the image tokenizer and checked against its caption exactly (the synthetic grammar), giving
`caption_match_seen` and `caption_match_heldout`; as partial credit, `colour_match_seen` /
`colour_match_heldout` (every colour the caption names is drawn) and `colour_match_chance` (the same
against shuffled captions: what the images score whatever they were asked for). Unconditional: `n_samples` images from `<doc> <image>`,
scored by `scene_valid` (the fraction that reads as a scene of the grammar at all).

Outputs (and MLflow artifacts): `samples.png` (grid of the first `evaluate.grid_images`, captions green
where matched), `samples.csv` (index, split, caption, match), `samples.npz` (codes and images), and
`metrics.json` (and the same as metrics.jsonl's one row). Sampling is seeded (`evaluate.seed`), so a rerun draws the same images.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from ablate.atomic import atomic_write_bytes, atomic_write_text
from ablate.config.schema import RunConfig
from ablate.data.preprocess import BadSample, prepare_sample
from ablate.data.sequence import VocabLayout, caption_ids, prompt_t2i, prompt_uncond
from ablate.data.shards import ShardDataset
from ablate.data.sources import RawSample, expand_shards, iter_folder, iter_webdataset
from ablate.data.synthetic import Scene
from ablate.errors import DataError
from ablate.evaluate.image_metrics import caption_matches, colours_present, sample_grid, scene_valid
from ablate.evaluate.sampling import sample_from_prompts
from ablate.model.checkpoint_io import load_into, load_open_lm_state_dict
from ablate.model.transformer import ModelArgs, Transformer
from ablate.rundir import RunDir
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.image_tokenizer import open_image_tokenizer
from ablate.stages.stage import Stage
from ablate.stages.synth import load_split
from ablate.stages.text_tokenizer import open_text_tokenizer
from ablate.stages.train import PROBE_FIELDS

# Shard split -> the name the metrics use.
T2I_SPLITS = {"val": "seen", "heldout": "heldout"}


def load_trained(train_dir) -> Transformer:
    """The model a `train` stage saved (model.pt + model_config.json)."""
    model = Transformer(ModelArgs.from_json(train_dir / "model_config.json"))
    load_into(model, load_open_lm_state_dict(train_dir / "model.pt"))
    return model.eval()


def _t2i_prompts(ctx: StageContext, split: str, layout: VocabLayout, n: int, image_tokens: int):
    """Prompts, caption strings and scenes of the first n pairs of a prepared split (same order as synth);
    real data has no scenes (None) and its captions are decoded from the shards."""
    shards = ShardDataset(ctx.inputs["prepare"] / split)
    n = min(n, len(shards))
    seqs = shards.read(np.arange(n))  # (n, L)
    ids = [caption_ids(s, layout) for s in seqs]
    prompts = [prompt_t2i(c, layout, ctx.cfg.data.seq_len, image_tokens) for c in ids]
    if names.SYNTH not in ctx.inputs:
        tok = open_text_tokenizer(ctx.inputs[names.TEXT_TOKENIZER])
        return prompts, [tok.decode([int(i) for i in c]) for c in ids], None
    _, captions, scenes = load_split(ctx.inputs[names.SYNTH], split)
    return prompts, list(captions[:n]), [Scene.from_dict(s) for s in scenes[:n]]


EVAL_SPLIT = "eval"  # the split name of data.eval_path's samples in metrics and samples.csv


def _eval_set_prompts(ctx: StageContext, layout: VocabLayout, n: int, image_tokens: int):
    """Prompts, captions and reference images of the first n usable samples of data.eval_path (the
    reference set, e.g. MS-COCO), read and preprocessed as the training data is."""
    d = ctx.cfg.data
    path = str(d.eval_path)
    raw: Iterator[RawSample]
    if d.source == "webdataset":
        raw = (s for shard in expand_shards(path, key="data.eval_path") for s in iter_webdataset(shard))
    else:
        raw = iter_folder(path)
    tok = open_text_tokenizer(ctx.inputs[names.TEXT_TOKENIZER])
    prompts: list[np.ndarray] = []
    captions: list[str] = []
    references: list[np.ndarray] = []
    for sample in raw:
        if len(prompts) >= n:
            break
        try:
            image, caption = prepare_sample(sample, d.image_size, d.min_image_side)
        except BadSample:
            continue
        ids = tok.encode(caption)[: d.caption_tokens]
        prompts.append(prompt_t2i(ids, layout, d.seq_len, image_tokens))
        captions.append(caption)
        references.append(image)
    if not prompts:
        raise DataError(f"data.eval_path={path!r} holds no usable sample (image and caption)")
    return prompts, captions, np.stack(references)


def run(ctx: StageContext) -> None:
    e = ctx.cfg.evaluate
    model = load_trained(ctx.inputs["train"])
    image_tok = open_image_tokenizer(ctx.inputs["image_tokenizer"])
    layout = VocabLayout.from_dict(ShardDataset(ctx.inputs["prepare"] / "val").metadata["vocab"])
    n_codes = image_tok.tokens_per_image
    generator = torch.Generator().manual_seed(e.seed)
    sample: dict[str, Any] = dict(
        batch_size=e.batch_size, temperature=e.temperature, top_k=e.top_k, top_p=e.top_p
    )

    rows: list[dict] = []
    all_codes, all_images, marks, labels = [], [], [], []
    metrics: dict[str, float] = {}
    references = None
    if ctx.cfg.data.task == "t2i":
        all_scenes: list[Scene] = []
        sets = {EVAL_SPLIT: EVAL_SPLIT} if ctx.cfg.data.eval_path else T2I_SPLITS
        for split, name in sets.items():
            if split == EVAL_SPLIT:
                prompts, captions, references = _eval_set_prompts(ctx, layout, e.n_samples, n_codes)
                scenes = None
            else:
                prompts, captions, scenes = _t2i_prompts(ctx, split, layout, e.n_samples, n_codes)
            codes = sample_from_prompts(model, prompts, layout, n_codes, generator=generator, **sample)
            images = image_tok.decode(codes)  # (n, H, W, 3) uint8
            if scenes is None:  # real data: no grammar to check a sample against (FID is the measure)
                rows += [{"split": name, "caption": c, "match": ""} for c in captions]
                all_codes.append(codes.numpy())
                all_images.append(images)
                marks += [False] * len(captions)
                labels += captions
                ctx.log(f"{name}: {len(captions)} samples (real data: no exact caption check)")
                continue
            match = caption_matches(images, scenes)
            metrics[f"caption_match_{name}"] = float(match.mean())
            metrics[f"colour_match_{name}"] = float(colours_present(images, scenes).mean())
            all_scenes += scenes
            rows += [
                {"split": name, "caption": c, "match": bool(m)} for c, m in zip(captions, match, strict=True)
            ]
            all_codes.append(codes.numpy())
            all_images.append(images)
            marks += match.tolist()
            labels += captions
            ctx.log(
                f"{name}: {match.mean():.3f} of {len(match)} samples match their caption, "
                f"{metrics[f'colour_match_{name}']:.3f} draw its colours"
            )
        if all_scenes:
            shuffled = np.random.default_rng(e.seed).permutation(len(all_scenes))
            chance = colours_present(np.concatenate(all_images), [all_scenes[i] for i in shuffled])
            metrics["colour_match_chance"] = float(chance.mean())
    else:
        prompts = [prompt_uncond(layout)] * e.n_samples
        codes = sample_from_prompts(model, prompts, layout, n_codes, generator=generator, **sample)
        images = image_tok.decode(codes)
        if names.SYNTH in ctx.inputs:
            valid = scene_valid(images, ctx.cfg.data.max_shapes)
            metrics["scene_valid"] = float(valid.mean())
        else:  # real data: nothing to check an unconditional sample against
            valid = np.zeros(len(images), dtype=bool)
        rows += [{"split": "uncond", "caption": "", "match": bool(v)} for v in valid]
        all_codes.append(codes.numpy())
        all_images.append(images)
        marks += valid.tolist()
        labels += ["(unconditional)"] * len(valid)
        ctx.log(f"unconditional: {valid.mean():.3f} of {len(valid)} samples read as valid scenes")

    images = np.concatenate(all_images)
    k = min(e.grid_images, len(images))
    # Figure 5 shows seen and held-out prompts alike: take the grid's images from both halves.
    pick = np.linspace(0, len(images) - 1, k).round().astype(int) if k else np.arange(0)
    arm = ", ".join(ctx.labels) or ctx.cfg.model.init
    title = f"{arm}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
    grid = sample_grid(
        images[pick],
        [labels[i] for i in pick],
        ctx.out_dir / "samples.png",
        marks=[marks[i] for i in pick],
        title=title,
    )

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["index", "split", "caption", "match"], lineterminator="\n")
    writer.writeheader()
    for i, r in enumerate(rows):
        writer.writerow({"index": i, **r})
    atomic_write_text(ctx.out_dir / "samples.csv", buf.getvalue())
    npz = io.BytesIO()
    # The reference images (data.eval_path) beside the samples, for FID against the same set.
    extra = {} if references is None else {"references": references}
    np.savez_compressed(npz, codes=np.concatenate(all_codes), images=images, **extra)
    atomic_write_bytes(ctx.out_dir / "samples.npz", npz.getvalue())
    atomic_write_text(ctx.out_dir / "metrics.json", json.dumps(metrics, indent=2))
    # metrics.jsonl as every stage writes it, so `ablate resend` can rebuild this run from the directory.
    atomic_write_text(RunDir(ctx.out_dir).metrics, json.dumps({"step": 0, **metrics}) + "\n")

    ctx.tracker.log_metrics(metrics, step=0)
    for path in (grid, ctx.out_dir / "samples.csv"):
        ctx.tracker.log_artifact(path)


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the sampling settings (the probe's are train's) and the sequence layout."""
    out: dict[str, Any] = {k: v for k, v in asdict(cfg.evaluate).items() if k not in PROBE_FIELDS}
    out.update(task=cfg.data.task, seq_len=cfg.data.seq_len)
    if cfg.data.eval_path:  # the reference set's prompts, read as the training data is
        d = cfg.data
        out["eval_set"] = {
            "path": d.eval_path,
            "image_size": d.image_size,
            "min_image_side": d.min_image_side,
            "caption_tokens": d.caption_tokens,
        }
    return out


STAGE = Stage(
    names.EVALUATE,
    version=2,
    config=config,
    run=run,
    inputs=(names.TRAIN, names.PREPARE, names.IMAGE_TOKENIZER, names.TEXT_TOKENIZER, names.SYNTH),
)
