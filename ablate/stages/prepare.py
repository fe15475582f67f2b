"""`prepare`: image codes + caption tokens -> fixed-length token sequences in memory-mapped shards.

Synthetic data (data.source=synthetic): one job over the `synth` stage's splits. Real data (webdataset,
folder): one unit of work per input shard (or group of UNIT_IMAGES images of a folder), each a job of its
own that pretokenizes its samples into units/<unit>/<split>/ (`ablate.data.pretokenize`) with its own
completion marker, so a failed or preempted unit is redone alone and a relaunch runs only missing units;
then the stage's own job combines them: <split>/meta.json names every unit's shards (no copy), units.json
lists every output shard with its sample counts, and the bad samples are summed and logged by reason.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ablate.atomic import atomic_write_json
from ablate.data.preprocess import SkipCounter
from ablate.data.sequence import VocabLayout, layout_t2i, layout_uncond
from ablate.data.sources import (
    RawSample,
    expand_pattern,
    expand_shards,
    folder_units,
    hash_unit,
    iter_folder,
    iter_webdataset,
    sample_keys,
    split_of,
)
from ablate.errors import AblateError, ConfigError, DataError
from ablate.rundir import RunDir
from ablate.schema import RunConfig
from ablate.splits import HELDOUT, SPLITS, TRAIN, VAL
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.inputs import load_split, open_image_tokenizer, open_text_tokenizer
from ablate.stages.stage import Stage
from ablate.tokenize.text import TextTokenizer

if TYPE_CHECKING:  # torch and the code that needs it load when the stage runs (ablate.stages.common)
    from ablate.tokenize.image import ImageTokenizer

ENCODE_BATCH = 256


def _run_synthetic(ctx: StageContext) -> None:
    import torch

    from ablate.data.shards import ShardWriter

    d = ctx.cfg.data
    image_tok = open_image_tokenizer(ctx.inputs["image_tokenizer"])
    text_tok = open_text_tokenizer(ctx.inputs["text_tokenizer"])
    layout = VocabLayout(text_vocab_size=ctx.cfg.model.text_vocab_size, codebook_size=image_tok.codebook_size)
    meta_common = {
        "task": d.task,
        "vocab": layout.to_dict(),
        "special_ids": layout.special_ids,
        "image_tokens": image_tok.tokens_per_image,
        "text_tokenizer": text_tok.fingerprint,
        "text_vocab_size": text_tok.vocab_size,
    }
    for split in SPLITS:
        images, captions, _ = load_split(ctx.inputs["synth"], split)
        n_caption_tokens, truncated = [], 0
        writer = ShardWriter(ctx.out_dir / split, seq_len=d.seq_len, vocab_size=layout.size, overwrite=True)
        for start in range(0, len(captions), ENCODE_BATCH):
            with torch.no_grad():
                codes = np.asarray(
                    image_tok.encode(np.asarray(images[start : start + ENCODE_BATCH]))
                )  # (b, h*w)
            seqs = []
            for c, cap in zip(codes, captions[start : start + ENCODE_BATCH], strict=True):
                if d.task == "uncond":
                    seqs.append(layout_uncond(c, layout, d.seq_len))
                    continue
                ids = text_tok.encode_caption(cap, d.caption_leading_space)
                n_caption_tokens.append(len(ids))
                truncated += len(ids) > d.caption_tokens
                seqs.append(layout_t2i(ids[: d.caption_tokens], c, layout, d.seq_len))
            if seqs:
                writer.add_many(np.stack(seqs))
        mean_caption = float(np.mean(n_caption_tokens)) if n_caption_tokens else 0.0
        writer.finish(
            {
                **meta_common,
                "split": split,
                "caption_tokens_mean": mean_caption,
                "captions_truncated": int(truncated),
            }
        )
        ctx.log(
            f"{split}: {len(captions)} sequences of {d.seq_len} tokens"
            + (
                f", caption {mean_caption:.1f} tokens on average ({truncated} truncated)"
                if n_caption_tokens
                else ""
            )
        )
        if split == "train":
            ratio = image_tok.tokens_per_image / mean_caption if mean_caption else float("inf")
            metrics = {"sequences": float(len(captions)), "caption_tokens_mean": mean_caption}
            if n_caption_tokens:
                metrics["image_text_ratio"] = ratio
            ctx.log_metrics(metrics, step=0)


UNIT_IMAGES = 10_000  # images per unit of an image folder (img2dataset writes 10,000 per shard)
UNIT_SUMMARY = "unit.json"
UNITS_MANIFEST = "units.json"


def _input_units(cfg: RunConfig) -> dict[str, list[Path]]:
    """Unit name -> its input files: one tar shard each (webdataset), or a group of images (folder)."""
    d = cfg.data
    if d.source == "webdataset":
        # A brace pattern names its shards without looking at the disk, so a dry run can plan (and
        # estimate) a launch whose data lives elsewhere; check_assets verifies they exist at launch.
        path = str(d.path)
        shards = [Path(p) for p in expand_pattern(path)] if "{" in path else expand_shards(path)
        stems = [p.stem for p in shards]
        unique = len(set(stems)) == len(stems)
        return {
            (stem if unique else f"s{i:05d}"): [p]
            for i, (stem, p) in enumerate(zip(stems, shards, strict=True))
        }
    if d.source == "folder":
        return {f"g{i:05d}": files for i, files in enumerate(folder_units(str(d.path), UNIT_IMAGES))}
    return {}


def units(cfg: RunConfig) -> tuple[str, ...]:
    """Real data: one unit per input shard or folder group; synthetic data: none (one job)."""
    return tuple(_input_units(cfg))


# Validation fractions a too-small split's error suggests, the first that gives SUGGEST_SAMPLES samples.
SUGGESTED_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)
SUGGEST_SAMPLES = 10


def _unit_keys(cfg: RunConfig, files: list[Path]) -> list[str]:
    """The sample keys of one unit's inputs, as pretokenize splits them (tar headers, or file names)."""
    if cfg.data.source == "webdataset":
        return [k for shard in files for k in _shard_keys(str(shard), *_stamp(shard))]
    root = Path(str(cfg.data.path))
    return [f.relative_to(root).as_posix().rsplit(".", 1)[0] for f in files]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _shard_keys(shard: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    """sample_keys, once per shard version: a sweep's arms share their data, and the check runs per arm."""
    return tuple(sample_keys(shard))


def check_splits(cfg: RunConfig) -> None:
    """ConfigError if real data's splits are too small for the stages that read them: train needs a
    sample, and t2i's evaluate without data.eval_path samples the val and heldout captions, so needs one
    there. Counted from the sample keys (the split is a hash of the key), before any job runs; the count is
    an upper bound (a sample may still be bad), so only an empty split is refused here and `evaluate`
    copes with one emptied by bad samples. Stops reading as soon as every split needed has a sample;
    inputs it cannot list (missing, not a tar) are left to check_assets and prepare to report.
    """
    d = cfg.data
    if d.source == "synthetic":
        return
    needs_eval = d.task == "t2i" and not d.eval_path
    counts = dict.fromkeys(SPLITS, 0)
    hashes: list[float] = []
    try:
        for files in _input_units(cfg).values():
            for key in _unit_keys(cfg, files):
                counts[split_of(key, d.val_fraction, d.heldout_fraction)] += 1
                hashes.append(hash_unit(key))
            if counts[TRAIN] and (counts[VAL] + counts[HELDOUT] or not needs_eval):
                return
    except (AblateError, OSError):
        return
    n = len(hashes)
    where = f"data.path={d.path} holds {n} sample(s) (by key, before decoding)"
    if not counts["train"]:
        raise ConfigError(
            "data.path",
            d.path,
            "a data set with at least one sample in the train split",
            hint=f"{where}; at data.val_fraction={d.val_fraction} and data.heldout_fraction="
            f"{d.heldout_fraction} none is left to train on: give more data or lower those fractions",
        )
    target = min(SUGGEST_SAMPLES, cfg.evaluate.n_samples, n)
    fits = [f for f in SUGGESTED_FRACTIONS if f + d.heldout_fraction < 1]
    suggest = next((f for f in fits if sum(u < f for u in hashes) >= target), fits[-1] if fits else 0.0)
    raise ConfigError(
        "data.val_fraction",
        d.val_fraction,
        "a fraction that leaves at least one sample in the val or heldout split (evaluate samples their "
        "captions)",
        hint=f"{where}; at data.val_fraction={d.val_fraction} and data.heldout_fraction={d.heldout_fraction} "
        f"the val split gets 0 of them and heldout 0, so every evaluate would fail after training: set "
        f"data.val_fraction={suggest} ({sum(u < suggest for u in hashes)} of the {n} in val) or give "
        "data.eval_path (a reference set to take captions from)",
    )


def _samples(cfg: RunConfig, files: list[Path]) -> Iterator[RawSample]:
    if cfg.data.source == "webdataset":
        for shard in files:
            yield from iter_webdataset(shard)
    else:
        yield from iter_folder(str(cfg.data.path), files)


def run_unit(ctx: StageContext) -> None:
    """Pretokenize one unit of real data into ctx.out_dir (units/<unit>/)."""
    from ablate.data.pretokenize import pretokenize

    cfg, unit = ctx.cfg, str(ctx.unit)
    files = _input_units(cfg).get(unit)
    if files is None:
        raise DataError(f"unit {unit!r} is no longer in data.path={cfg.data.path!r}; relaunch to replan")
    image_tok = open_image_tokenizer(ctx.inputs[names.IMAGE_TOKENIZER])
    text_tok = open_text_tokenizer(ctx.inputs[names.TEXT_TOKENIZER])
    layout = VocabLayout(text_vocab_size=cfg.model.text_vocab_size, codebook_size=image_tok.codebook_size)
    size = sum(f.stat().st_size for f in files)
    run_dir = RunDir(ctx.out_dir)

    def progress(p: dict) -> None:
        # ETA from the bytes per image so far (a tar stream has no sample count up front): an estimate.
        done = max(p["images"], 1)
        est_total = size / max(bytes_read[0] / done, 1.0)
        rate = max(p["images_per_s"], 1e-9)
        run_dir.write_progress({**p, "eta_s": max(est_total - done, 0) / rate, "unit": unit})

    bytes_read = [0]

    def counted(samples: Iterator[RawSample]) -> Iterator[RawSample]:
        for raw in samples:
            bytes_read[0] += len(raw.image or b"") + len(raw.caption or "") + 1536  # + tar headers
            yield raw

    meta = _shard_meta(layout, image_tok, text_tok, cfg) | {"unit": unit, "inputs": [str(f) for f in files]}
    result = pretokenize(
        counted(_samples(cfg, files)),
        ctx.out_dir,
        image_tok,
        text_tok,
        layout,
        cfg.data,
        meta,
        progress,
    )
    atomic_write_json(ctx.out_dir / UNIT_SUMMARY, result.to_dict())
    ctx.log(
        f"unit {unit}: {result.skips.kept} samples kept of {result.skips.seen} "
        + ", ".join(f"{k} {v}" for k, v in result.sequences.items())
    )


def _shard_meta(
    layout: VocabLayout, image_tok: ImageTokenizer, text_tok: TextTokenizer, cfg: RunConfig
) -> dict:
    """Metadata every shard directory of this stage records (vocabulary, tokenizers)."""
    return {
        "task": cfg.data.task,
        "vocab": layout.to_dict(),
        "special_ids": layout.special_ids,
        "image_tokens": image_tok.tokens_per_image,
        "image_tokenizer": getattr(image_tok, "fingerprint", None),
        "text_tokenizer": text_tok.fingerprint,
        "text_vocab_size": text_tok.vocab_size,
    }


def _combine_units(ctx: StageContext) -> None:
    """The stage's own job on real data: one dataset per split across every unit, the manifest, metrics."""
    from ablate.data.shards import ShardDataset, combine

    cfg = ctx.cfg
    names_ = units(cfg)
    out = RunDir(ctx.out_dir)
    skips = SkipCounter()
    manifest: dict[str, dict] = {}
    caption_tokens = kept_t2i = 0
    for unit in names_:
        unit_dir = out.unit(unit)
        if not unit_dir.is_complete():
            raise DataError(f"unit {unit} of {ctx.out_dir} is not complete; relaunch to run it")
        summary = json.loads((unit_dir.path / UNIT_SUMMARY).read_text())
        skips.merge(SkipCounter.from_metrics(summary["skips"]))
        caption_tokens += int(summary["caption_tokens"])
        kept_t2i += sum(summary["sequences"].values())
        manifest[unit] = {
            "sequences": summary["sequences"],
            "shards": {
                split: [s["file"] for s in ShardDataset(unit_dir.path / split).meta["shards"]]
                for split in SPLITS
            },
        }
    first = ShardDataset(out.unit(names_[0]).path / "train").metadata if names_ else {}
    for split in SPLITS:
        combine(
            [out.unit(u).path / split for u in names_],
            ctx.out_dir / split,
            {**first, "split": split, "unit": None},
        )
    atomic_write_json(ctx.out_dir / UNITS_MANIFEST, manifest)
    if skips.seen and skips.fraction > cfg.data.max_bad_fraction:
        counts = ", ".join(f"{r} {n}" for r, n in skips.skipped.items() if n)
        raise DataError(
            f"{skips.bad} of {skips.seen} samples ({skips.fraction:.1%}) were bad, more than "
            f"data.max_bad_fraction={cfg.data.max_bad_fraction} ({counts}); see each unit's {UNIT_SUMMARY} "
            f"under {ctx.out_dir}/units/"
        )
    totals = {split: sum(m["sequences"][split] for m in manifest.values()) for split in SPLITS}
    metrics = {
        **{k: float(v) for k, v in skips.as_metrics().items()},
        **{f"sequences_{k}": float(v) for k, v in totals.items()},
    }
    if cfg.data.task == "t2i" and kept_t2i and caption_tokens:
        metrics["caption_tokens_mean"] = caption_tokens / kept_t2i
        metrics["image_text_ratio"] = float(first.get("image_tokens", 0)) / metrics["caption_tokens_mean"]
    ctx.log_metrics(metrics, step=0)
    ctx.log(
        f"{len(names_)} units: "
        + ", ".join(f"{k} {v}" for k, v in totals.items())
        + f"; skipped {skips.bad} of {skips.seen} ("
        + ", ".join(f"{r} {n}" for r, n in skips.skipped.items() if n)
        + ")"
    )


def run(ctx: StageContext) -> None:
    if ctx.cfg.data.source == "synthetic":
        _run_synthetic(ctx)
    else:
        _combine_units(ctx)


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the sequence layout (images and captions come in through the inputs' keys)."""
    d = cfg.data
    out: dict[str, Any] = {
        "task": d.task,
        "seq_len": d.seq_len,
        "caption_tokens": d.caption_tokens,
        "text_vocab_size": cfg.model.text_vocab_size,
    }
    if d.caption_leading_space:  # only when set, so the keys of existing results stay valid
        out["caption_leading_space"] = True
    if d.source != "synthetic":  # real data: the inputs themselves, and how they are read and split
        files: dict[str, Any]
        try:
            files = {
                u: [(str(f.resolve()), f.stat().st_size if f.exists() else None) for f in fs]
                for u, fs in _input_units(cfg).items()
            }
        except Exception as e:  # a missing path is validation's to report; the key still has to be computable
            files = {"error": str(e)}
        out.update(
            source=d.source,
            inputs=files,
            **{
                k: getattr(d, k)
                for k in (
                    "image_size",
                    "min_image_side",
                    "val_fraction",
                    "heldout_fraction",
                    "max_bad_fraction",
                )
            },
        )
    return out


STAGE = Stage(
    names.PREPARE,
    version=1,
    config=config,
    run=run,
    inputs=(names.SYNTH, names.IMAGE_TOKENIZER, names.TEXT_TOKENIZER),
    params=("data", "tokenizer"),
    units=units,
    run_unit=run_unit,
)
