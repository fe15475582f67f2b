"""`evaluate`: samples from a trained run and their image metrics (Figure 5), FID on real data.

The prompts: text-to-image on synthetic data, the captions of the first `evaluate.n_samples` validation
pairs (attribute combinations seen in training) and held-out pairs (never seen); on real data, those of
the reference set's first n_samples usable samples (the `eval_set` stage; e.g. 30,000 MS-COCO captions),
or of its own val and held-out splits without data.eval_path. Unconditional: n_samples times `<doc> <image>`.

More prompts than `evaluate.slice_size` are sampled as units, one per slice (`s0000`, `s0001`, ...: a GPU
task each of the stage's array on SLURM), each resumable alone; the stage's own job then assembles them.
A slice samples in batches with a KV cache (bf16 autocast on CUDA, per train.precision), decodes through
the image tokenizer and scores its images: against the synthetic grammar (caption_match_<set>,
colour_match_<set>, colour_match_chance against shuffled captions, scene_valid), and on real data with
evaluate.fid_weights, their Inception features, whose statistics the assembly compares with the
reference set's (`fid`: torch-fidelity's InceptionV3, ablate.evaluate.fid). Each slice's sampling is
seeded by (evaluate.seed, slice), so a slice redone after a failure draws the same images.

Outputs (and MLflow artifacts): `samples.png` (grid of `evaluate.grid_images`, captions green where
matched), `samples.csv` (index, split, caption, match), `samples.npz` (every sample's codes; the grid's
images) and `metrics.json` (and metrics.jsonl's one row).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ablate import metrics
from ablate.atomic import atomic_write_bytes, atomic_write_text
from ablate.data.eval_set import eval_set_config
from ablate.data.sequence import VocabLayout, caption_ids, prompt_t2i, prompt_uncond
from ablate.data.synthetic import Scene, render
from ablate.errors import DataError
from ablate.rundir import RunDir
from ablate.schema import RunConfig
from ablate.splits import HELDOUT, TRAIN, VAL
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.inputs import (
    has_eval_set,
    load_split,
    open_image_tokenizer,
    open_text_tokenizer,
    read_captions,
    read_reference,
)
from ablate.stages.slices import PROBE_FIELDS
from ablate.stages.stage import Stage

if TYPE_CHECKING:  # torch and the code that needs it load when the stage runs (ablate.stages.common)
    import torch

    from ablate.model.transformer import Transformer

T2I_SPLITS = {VAL: metrics.SEEN, HELDOUT: metrics.HELDOUT}  # shard split -> the name the metrics use
SLICE_FILE = "slice.npz"
SLICE_SEED_STRIDE = 1_000_003  # slice i samples from seed + i * stride: slices never share a stream
NOT_SCORED = -1  # match / colour of a sample with nothing to check it against (real data)


@dataclass
class PromptSet:
    """One named set of prompts (seen, heldout, eval or uncond), with what its samples are checked against."""

    name: str
    prompts: list[np.ndarray]
    captions: list[str]
    scenes: list[Scene] | None  # the synthetic grammar's scenes; None: real data or unconditional


def load_trained(train_dir, device: torch.device | None = None) -> Transformer:
    """The model a `train` stage saved (model.pt + model_config.json), in eval mode on `device`."""
    import torch

    from ablate.model.checkpoint_io import load_into, load_open_lm_state_dict
    from ablate.model.transformer import ModelArgs, Transformer

    model = Transformer(ModelArgs.from_json(train_dir / "model_config.json"))
    load_into(model, load_open_lm_state_dict(train_dir / "model.pt"))
    return model.to(device or torch.device("cpu")).eval()


def _split_set(ctx: StageContext, split: str, layout: VocabLayout, n: int, n_codes: int) -> PromptSet:
    """The first n pairs of a prepared split (same order as synth); real data has no scenes and its
    captions are decoded from the shards."""
    from ablate.data.shards import ShardDataset

    shards = ShardDataset(ctx.inputs[names.PREPARE] / split)
    seqs = shards.read(np.arange(min(n, len(shards))))  # (n, L)
    ids = [caption_ids(s, layout) for s in seqs]
    prompts = [prompt_t2i(c, layout, ctx.cfg.data.seq_len, n_codes) for c in ids]
    if names.SYNTH not in ctx.inputs:
        tok = open_text_tokenizer(ctx.inputs[names.TEXT_TOKENIZER])
        return PromptSet(
            T2I_SPLITS.get(split, split), prompts, [tok.decode([int(i) for i in c]) for c in ids], None
        )
    _, captions, scenes = load_split(ctx.inputs[names.SYNTH], split)
    return PromptSet(
        T2I_SPLITS.get(split, split),
        prompts,
        list(captions[: len(ids)]),
        [Scene.from_dict(s) for s in scenes[: len(ids)]],
    )


def prompt_sets(ctx: StageContext, layout: VocabLayout, n_codes: int) -> list[PromptSet]:
    """Every prompt of the stage, as named sets in a fixed order (slices index their concatenation)."""
    cfg, n = ctx.cfg, ctx.cfg.evaluate.n_samples
    if cfg.data.task != "t2i":
        return [PromptSet(metrics.UNCOND, [prompt_uncond(layout)] * n, ["(unconditional)"] * n, None)]
    if names.EVAL_SET in ctx.inputs:
        tok = open_text_tokenizer(ctx.inputs[names.TEXT_TOKENIZER])
        captions = read_captions(ctx.inputs[names.EVAL_SET])[:n]
        ids = [
            tok.encode_caption(c, cfg.data.caption_leading_space)[: cfg.data.caption_tokens] for c in captions
        ]
        prompts = [prompt_t2i(i, layout, cfg.data.seq_len, n_codes) for i in ids]
        return [PromptSet(metrics.EVAL, prompts, captions, None)]
    sets = [_split_set(ctx, split, layout, n, n_codes) for split in T2I_SPLITS]
    if not any(s.prompts for s in sets):
        # Real data whose val and heldout splits prepare left empty (few samples, some bad: the launch
        # refuses only splits empty by key). Sampling training captions beats failing after training.
        d = cfg.data
        ctx.log(
            f"warning: the val and heldout splits of {ctx.inputs[names.PREPARE]} hold no sample "
            f"(data.val_fraction={d.val_fraction}, data.heldout_fraction={d.heldout_fraction}); sampling the "
            f"captions of the first {n} training pairs instead. For captions the model has not trained on, "
            "raise data.val_fraction or give data.eval_path"
        )
        return [_split_set(ctx, TRAIN, layout, n, n_codes)]  # named "train" in metrics and samples.csv
    return sets


def n_prompts(cfg: RunConfig) -> int:
    """Prompts the stage samples at most (a real reference set may hold fewer usable samples)."""
    sets = 2 if cfg.data.task == "t2i" and not has_eval_set(cfg) else 1
    return sets * cfg.evaluate.n_samples


def units(cfg: RunConfig) -> tuple[str, ...]:
    """One unit per slice of evaluate.slice_size prompts; none when they fit one slice."""
    n = math.ceil(n_prompts(cfg) / cfg.evaluate.slice_size)
    return tuple(f"s{i:04d}" for i in range(n)) if n > 1 else ()


def _fid_wanted(ctx: StageContext) -> bool:
    return names.EVAL_SET in ctx.inputs and bool(ctx.cfg.evaluate.fid_weights)


def _scene(sets: list[PromptSet], k: int, i: int) -> Scene:
    scenes = sets[k].scenes
    if scenes is None:  # pragma: no cover (callers pick sets with scenes)
        raise DataError(f"prompt set {sets[k].name} has no scenes")
    return scenes[i]


def sample_slice(ctx: StageContext, index: int) -> dict[str, np.ndarray]:
    """Sample and score slice `index` of the stage's prompts: per-sample arrays (index, set, codes, match,
    colour, chance; features with FID)."""
    import torch

    from ablate.data.shards import ShardDataset
    from ablate.evaluate.image_metrics import caption_matches, colours_present, scene_valid
    from ablate.evaluate.sampling import sample_from_prompts
    from ablate.train.distributed import training_device
    from ablate.train.loop import precision_context

    cfg, e = ctx.cfg, ctx.cfg.evaluate
    device = training_device()
    model = load_trained(ctx.inputs[names.TRAIN], device)
    image_tok = open_image_tokenizer(ctx.inputs[names.IMAGE_TOKENIZER])
    layout = VocabLayout.from_dict(ShardDataset(ctx.inputs[names.PREPARE] / VAL).metadata["vocab"])
    sets = prompt_sets(ctx, layout, image_tok.tokens_per_image)
    flat = [(k, i) for k, s in enumerate(sets) for i in range(len(s.prompts))]
    lo, hi = index * e.slice_size, min(len(flat), (index + 1) * e.slice_size)
    rows = flat[lo:hi] if lo < len(flat) else []
    n = len(rows)
    seed = e.seed + SLICE_SEED_STRIDE * index
    generator = torch.Generator(device=device).manual_seed(seed)
    with precision_context(cfg.train.precision, device):
        codes = sample_from_prompts(
            model,
            [sets[k].prompts[i] for k, i in rows],
            layout,
            image_tok.tokens_per_image,
            batch_size=e.batch_size,
            temperature=e.temperature,
            top_k=e.top_k,
            top_p=e.top_p,
            generator=generator,
            guidance_scale=e.guidance_scale if cfg.data.task == "t2i" else 1.0,
        )  # (n, n_codes)
    out: dict[str, np.ndarray] = {
        "index": np.arange(lo, lo + n),
        "set": np.array([k for k, _ in rows], dtype=np.int64),
        "codes": codes.numpy().astype(np.int32),
        "match": np.full(n, NOT_SCORED, np.int8),
        "colour": np.full(n, NOT_SCORED, np.int8),
        "chance": np.full(n, NOT_SCORED, np.int8),
    }
    fid = _fid_wanted(ctx)
    if fid:
        out["features"] = np.zeros((n, 2048), np.float32)
    if not n:
        return out
    images = image_tok.decode(codes)  # (n, H, W, 3) uint8
    which = np.array([j for j, (k, _) in enumerate(rows) if sets[k].scenes is not None], dtype=np.int64)
    if len(which):
        sc = [_scene(sets, *rows[j]) for j in which]
        out["match"][which] = caption_matches(images[which], sc)
        out["colour"][which] = colours_present(images[which], sc)
        shuffled = np.random.default_rng(seed).permutation(len(sc))
        out["chance"][which] = colours_present(images[which], [sc[j] for j in shuffled])
    elif cfg.data.task != "t2i" and names.SYNTH in ctx.inputs:
        out["match"][:] = scene_valid(images, cfg.data.max_shapes)
    if fid:
        from ablate.evaluate.fid import inception_features, load_inception

        net = load_inception(e.fid_weights, device)
        out["features"] = inception_features(net, images, batch_size=e.batch_size).astype(np.float32)
    ctx.log(f"slice {index}: {n} samples (prompts {lo}..{lo + n - 1})")
    return out


def run_unit(ctx: StageContext) -> None:
    """One slice (ctx.unit = sNNNN) into units/<unit>/slice.npz."""
    result = sample_slice(ctx, int(str(ctx.unit).lstrip("s")))
    buf = io.BytesIO()
    np.savez(buf, **result)  # type: ignore[arg-type]  # numpy types the first keyword as allow_pickle
    atomic_write_bytes(ctx.out_dir / SLICE_FILE, buf.getvalue())


def _assemble(ctx: StageContext) -> dict[str, np.ndarray]:
    """Every slice's arrays, concatenated in prompt order: from the units, or sampled here as one slice."""
    names_ = units(ctx.cfg)
    if not names_:
        return sample_slice(ctx, 0)
    out = RunDir(ctx.out_dir)
    parts = []
    for unit in names_:
        if not out.unit(unit).is_complete():
            raise DataError(f"slice {unit} of {ctx.out_dir} is not complete; relaunch to sample it")
        with np.load(out.unit(unit).path / SLICE_FILE) as z:
            parts.append({k: z[k] for k in z.files})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _fid(ctx: StageContext, features: np.ndarray) -> float:
    """FID of the samples' features against the reference set's statistics (same weights, checked)."""
    from ablate.evaluate.fid import feature_stats, frechet_distance, weights_sha256

    ref = read_reference(ctx.inputs[names.EVAL_SET])
    if ref is None:
        raise DataError(f"{ctx.inputs[names.EVAL_SET]} has no FID reference statistics")
    sha = weights_sha256(str(ctx.cfg.evaluate.fid_weights))
    if str(ref["weights_sha256"]) != sha:
        raise DataError(
            f"the reference statistics in {ctx.inputs[names.EVAL_SET]} were computed with other Inception "
            f"weights than {ctx.cfg.evaluate.fid_weights} has now; put new weights under a new path"
        )
    mu, sigma = feature_stats(features)
    return frechet_distance(mu, sigma, ref["mu"], ref["sigma"])


def run(ctx: StageContext) -> None:
    import torch

    from ablate.data.shards import ShardDataset
    from ablate.evaluate.image_metrics import sample_grid

    e = ctx.cfg.evaluate
    image_tok = open_image_tokenizer(ctx.inputs[names.IMAGE_TOKENIZER])
    layout = VocabLayout.from_dict(ShardDataset(ctx.inputs[names.PREPARE] / VAL).metadata["vocab"])
    sets = prompt_sets(ctx, layout, image_tok.tokens_per_image)
    res = _assemble(ctx)
    values: dict[str, float] = {}
    for k, s in enumerate(sets):
        mine = res["set"] == k
        if s.scenes is not None and mine.any():
            match, colour = metrics.caption_match(s.name), metrics.colour_match(s.name)
            values[match] = float(res["match"][mine].mean())
            values[colour] = float(res["colour"][mine].mean())
            ctx.log(
                f"{s.name}: {values[match]:.3f} of {mine.sum()} samples match their caption, "
                f"{values[colour]:.3f} draw its colours"
            )
    if (res["chance"] != NOT_SCORED).any():
        values[metrics.COLOUR_MATCH_CHANCE] = float(res["chance"][res["chance"] != NOT_SCORED].mean())
    if ctx.cfg.data.task != "t2i" and names.SYNTH in ctx.inputs:
        values[metrics.SCENE_VALID] = float(res["match"].mean())
        ctx.log(
            f"unconditional: {values[metrics.SCENE_VALID]:.3f} of {len(res['match'])} samples read as scenes"
        )
    if "features" in res:
        values[metrics.FID] = _fid(ctx, res["features"].astype(np.float64))
        values[metrics.FID_SAMPLES] = float(len(res["features"]))
        ctx.log(f"FID {values[metrics.FID]:.2f} over {len(res['features'])} samples")

    captions = [sets[k].captions[i] for k, i in _set_positions(sets, res)]  # one per sample
    split = [sets[k].name for k in res["set"]]
    k = min(e.grid_images, len(res["codes"]))
    # Figure 5 shows seen and held-out prompts alike: take the grid's images from both halves.
    pick = np.linspace(0, len(res["codes"]) - 1, k).round().astype(int) if k else np.arange(0)
    grid_images = image_tok.decode(torch.from_numpy(res["codes"][pick].astype(np.int64)))
    positions = _set_positions(sets, res)
    # Synthetic captions describe a scene: draw it (the ground truth) left of each sample.
    scenes = [sets[positions[i][0]].scenes for i in pick]
    references = (
        np.stack([render(_scene(sets, *positions[i])) for i in pick])
        if len(pick) and all(s is not None for s in scenes)
        else None
    )
    scored = [res["match"][i] != NOT_SCORED for i in pick]
    grid = sample_grid(
        grid_images,
        [captions[i] for i in pick],
        ctx.out_dir / "samples.png",
        marks=[bool(res["match"][i] == 1) for i in pick] if all(scored) else None,
        references=references,
    )

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["index", "split", "caption", "match"], lineterminator="\n")
    writer.writeheader()
    for i, (c, s, m) in enumerate(zip(captions, split, res["match"], strict=True)):
        writer.writerow({"index": i, "split": s, "caption": c, "match": "" if m == NOT_SCORED else bool(m)})
    atomic_write_text(ctx.out_dir / "samples.csv", buf.getvalue())
    npz = io.BytesIO()
    np.savez_compressed(npz, codes=res["codes"], grid_index=pick, grid_images=grid_images)
    atomic_write_bytes(ctx.out_dir / "samples.npz", npz.getvalue())
    atomic_write_text(ctx.out_dir / "metrics.json", json.dumps(values, indent=2))
    ctx.log_metrics(values, step=0)
    for path in (grid, ctx.out_dir / "samples.csv"):
        ctx.tracker.log_artifact(path)


def _set_positions(sets: list[PromptSet], res: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """(set, position in set) of each sample, from its global index."""
    starts = np.cumsum([0] + [len(s.prompts) for s in sets])
    return [(int(k), int(g - starts[k])) for k, g in zip(res["set"], res["index"], strict=True)]


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the sampling settings (the probe's are train's), the sequence layout, the
    slicing (a slice's seed depends on it) and the reference set whose captions it samples."""
    out: dict[str, Any] = {k: v for k, v in asdict(cfg.evaluate).items() if k not in PROBE_FIELDS}
    if cfg.evaluate.guidance_scale == 1 or cfg.data.task != "t2i":  # read by t2i only; 1 keeps older keys
        del out["guidance_scale"]
    out.update(task=cfg.data.task, seq_len=cfg.data.seq_len)
    if has_eval_set(cfg):  # the captions, tokenized here as the training data's are
        out["eval_set"] = eval_set_config(cfg.data, cfg.evaluate.n_samples)
        out["caption_tokens"] = cfg.data.caption_tokens
        if cfg.data.caption_leading_space:
            out["caption_leading_space"] = True
    return out


STAGE = Stage(
    names.EVALUATE,
    version=4,  # 4: the strict caption check (nothing drawn beyond the caption)
    config=config,
    run=run,
    inputs=(
        names.TRAIN,
        names.PREPARE,
        names.IMAGE_TOKENIZER,
        names.TEXT_TOKENIZER,
        names.SYNTH,
        names.EVAL_SET,
    ),
    units=units,
    run_unit=run_unit,
)
