"""`pretrain`: the demo's "pretrained" language model, trained on offline English text.

At paper scale this stage does not run: model.checkpoint names the released open_lm-1b weights. Its output
has the same form as an open_lm release (model.pt holding `state_dict`, model_config.json with open_lm's
keys), so the `train` stage loads both the same way.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

import numpy as np

from ablate.data.sequence import VocabLayout
from ablate.schema import UNKEYED_FIELDS, OptimConfig, RunConfig, TrainConfig
from ablate.splits import HELDOUT, TRAIN
from ablate.stages import names
from ablate.stages.common import arch_config, model_args, train_and_save
from ablate.stages.context import StageContext
from ablate.stages.inputs import PRETRAIN_DATA, load_corpus, open_text_tokenizer
from ablate.stages.stage import Stage

# What pretraining sets itself instead of the train and optim sections: its budget, LR, warm-up and seed
# (from the pretrain section); no caption dropout (text only); no freeze preset (that is the arm's).
_OWN_TRAIN = ("total_tokens", "batch_tokens", "seed", "caption_dropout", "trainable")
_OWN_OPTIM = ("lr", "warmup_tokens")
_S = TypeVar("_S", TrainConfig, OptimConfig)


def pack_documents(docs: list[str], tokenizer, seq_len: int, separator: str = "\n\n") -> np.ndarray:
    """Concatenate tokenized documents (separated by a blank line) and cut into (N, seq_len) rows."""
    sep = tokenizer.encode(separator)
    stream: list[int] = []
    for ids in tokenizer.encode_batch(docs):
        stream.extend(ids)
        stream.extend(sep)
    n = len(stream) // seq_len
    return np.asarray(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


def write_text_shards(ctx: StageContext, seq_len: int) -> dict[str, int]:
    """Tokenize the corpus splits into shards under out_dir/data/{train,heldout}; returns token counts."""
    from ablate.data.shards import ShardWriter

    tok = open_text_tokenizer(ctx.inputs["text_tokenizer"])
    counts = {}
    for split in (TRAIN, HELDOUT):
        rows = pack_documents(load_corpus(ctx.inputs["text_tokenizer"], split), tok, seq_len)
        writer = ShardWriter(
            ctx.out_dir / PRETRAIN_DATA / split,
            seq_len=seq_len,
            vocab_size=ctx.cfg.model.text_vocab_size,
            overwrite=True,
        )
        writer.add_many(rows)
        writer.finish({"split": split, "text_tokenizer": tok.fingerprint})
        counts[split] = int(rows.size)
    return counts


def run(ctx: StageContext) -> None:
    # torch and the code that needs it load when the stage runs (ablate.stages.common)
    import torch

    from ablate.data.shards import ShardDataset
    from ablate.model.transformer import Transformer, count_parameters
    from ablate.train import distributed as dist

    cfg, p = ctx.cfg, ctx.cfg.pretrain
    seq_len = cfg.data.seq_len
    # Rank 0 tokenizes the corpus (data-parallel ranks share the directory); the others wait for it.
    if dist.is_main() and not (ctx.out_dir / PRETRAIN_DATA / HELDOUT / "meta.json").exists():
        counts = write_text_shards(ctx, seq_len)
        ctx.log(f"corpus tokens: {counts['train']:,} train, {counts['heldout']:,} held-out")
    dist.barrier()
    dataset = ShardDataset(ctx.out_dir / PRETRAIN_DATA / TRAIN)
    # Text only: every target is a text token (the image range of this layout is never produced).
    layout = VocabLayout(text_vocab_size=cfg.model.text_vocab_size, codebook_size=1)

    args = model_args(cfg, cfg.model.text_vocab_size)
    torch.manual_seed(p.seed)
    model = Transformer(args)
    ctx.tracker.log_params({"n_params": count_parameters(model)})
    ctx.log(f"language model: {count_parameters(model):,} parameters; {len(dataset)} sequences of {seq_len}")
    train_and_save(ctx, model, dataset, layout, *loop_sections(cfg))


def loop_sections(cfg: RunConfig) -> tuple[TrainConfig, OptimConfig]:
    """The train and optim sections as the loop reads them for pretraining: pretraining's own budget, LR,
    warm-up and seed, no caption dropout, the default freeze preset; the arm's values of those fields are
    never read (its key does not cover them)."""
    p = cfg.pretrain
    train = _section(
        TrainConfig,
        cfg.train,
        {
            "total_tokens": p.total_tokens,
            "batch_tokens": p.batch_tokens,
            "seed": p.seed,
            "caption_dropout": 0.0,
        },
        _OWN_TRAIN,
    )
    return train, _section(OptimConfig, cfg.optim, {"lr": p.lr, "warmup_tokens": p.warmup_tokens}, _OWN_OPTIM)


def _section(cls: type[_S], section: _S, own: dict[str, Any], fields_own: tuple[str, ...]) -> _S:
    """A new `cls` with `own` set, its other `fields_own` at their defaults, the rest read from `section`."""
    kept = {f.name: getattr(section, f.name) for f in fields(cls) if f.name not in fields_own}
    return cls(**kept, **own)


def config(cfg: RunConfig) -> dict:
    """What the key hashes: architecture, pretraining budget, AdamW (its own LR and warm-up), and the
    train section's fields the loop reads that pretraining does not set itself (batching, checkpointing),
    at the top level; unkeyed ones (precision, ...) left out."""
    unkeyed = [f.split(".", 1)[1] for f in UNKEYED_FIELDS if f.startswith("train.")]
    return {
        "arch": arch_config(cfg),
        "pretrain": asdict(cfg.pretrain),
        "seq_len": cfg.data.seq_len,
        "optim": {k: v for k, v in asdict(cfg.optim).items() if k not in _OWN_OPTIM},
        **{k: v for k, v in asdict(cfg.train).items() if k not in (*_OWN_TRAIN, *unkeyed)},
    }


STAGE = Stage(
    names.PRETRAIN,
    # 2: the key covers train.checkpoint_every_tokens, which the loop reads.
    version=2,
    config=config,
    run=run,
    inputs=(names.TEXT_TOKENIZER,),
    applies=lambda cfg: cfg.model.needs_pretrain(),
    params=("model", "pretrain", "optim"),
    data_parallel=True,
    checkpoints=True,
)
