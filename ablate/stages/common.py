"""What the training stages (`pretrain`, `train`) share: model arguments, loop settings, the final save."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

from ablate.cache import atomic_write_text
from ablate.config.schema import RunConfig
from ablate.data.sequence import VocabLayout
from ablate.data.shards import ShardDataset
from ablate.model.transformer import ModelArgs, Transformer
from ablate.stages.context import StageContext
from ablate.train import distributed as dist
from ablate.train.checkpoint import save_checkpoint
from ablate.train.loop import LoopConfig, train_loop


def model_args(cfg: RunConfig, vocab_size: int) -> ModelArgs:
    """open_lm model arguments from the run config."""
    m = cfg.model
    return ModelArgs(
        hidden_dim=m.hidden_dim,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        seq_len=cfg.data.seq_len,
        vocab_size=vocab_size,
        post_embed_norm=m.post_embed_norm,
        weight_tying=m.weight_tying,
        model_norm=m.model_norm,
        ffn_type=m.ffn_type,
        qk_norm=m.qk_norm,
        positional_embedding_type=m.positional_embedding_type,
    )


def loop_config(
    cfg: RunConfig, *, total_tokens: int, batch_tokens: int, lr: float, warmup_tokens: int, seed: int
) -> LoopConfig:
    """The loop's settings: the stage's budget and LR; AdamW, clipping and checkpointing from the config."""
    o = cfg.optim
    return LoopConfig(
        total_tokens=total_tokens,
        batch_tokens=batch_tokens,
        micro_batch_size=cfg.train.micro_batch_size,
        seq_len=cfg.data.seq_len,
        lr=lr,
        warmup_tokens=warmup_tokens,
        min_lr_ratio=o.min_lr_ratio,
        beta1=o.beta1,
        beta2=o.beta2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        grad_clip=o.grad_clip,
        checkpoint_every_tokens=cfg.train.checkpoint_every_tokens,
        seed=seed,
    )


def train_and_save(
    ctx: StageContext,
    model: Transformer,
    dataset: ShardDataset,
    layout: VocabLayout,
    loop: LoopConfig,
    evaluate: Callable[[int, int], dict[str, float]] | None = None,
    eval_every_tokens: int = 0,
) -> dict[str, float]:
    """Run the loop, then save the model as an open_lm release (model.pt + model_config.json).

    Data-parallel when the runner opened a process group: every rank trains on this rank's GPU (or the CPU);
    rank 0 alone writes the model, and the others wait until it is written.
    """
    model.to(dist.training_device())
    final = train_loop(
        model,
        dataset,
        layout,
        loop,
        ctx.out_dir,
        ctx.tracker,
        evaluate=evaluate,
        eval_every_tokens=eval_every_tokens,
        should_stop=ctx.should_stop,
    )
    if dist.is_main():
        ctx.log("done: " + " ".join(f"{k}={v:.4g}" for k, v in final.items()))
        save_checkpoint(ctx.out_dir / "model.pt", {"state_dict": model.state_dict()})
        atomic_write_text(ctx.out_dir / "model_config.json", json.dumps(asdict(model.args), indent=2))
    dist.barrier()  # no rank reports the stage done before the model is on disk
    return final
