"""`prepare`: image codes + caption tokens -> fixed-length token sequences in memory-mapped shards."""

from __future__ import annotations

import numpy as np
import torch

from ablate.config.schema import RunConfig
from ablate.data.sequence import VocabLayout, layout_t2i, layout_uncond
from ablate.data.shards import ShardWriter
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.image_tokenizer import open_image_tokenizer
from ablate.stages.stage import Stage
from ablate.stages.synth import SPLITS, load_split
from ablate.stages.text_tokenizer import open_text_tokenizer

ENCODE_BATCH = 256


def run(ctx: StageContext) -> None:
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
                ids = text_tok.encode(cap)
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
            ctx.tracker.log_metrics(metrics, step=0)


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the sequence layout (images and captions come in through the inputs' keys)."""
    d = cfg.data
    return {
        "task": d.task,
        "seq_len": d.seq_len,
        "caption_tokens": d.caption_tokens,
        "text_vocab_size": cfg.model.text_vocab_size,
    }


STAGE = Stage(
    names.PREPARE,
    version=1,
    config=config,
    run=run,
    inputs=(names.SYNTH, names.IMAGE_TOKENIZER, names.TEXT_TOKENIZER),
    params=("data", "tokenizer"),
)
