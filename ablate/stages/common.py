"""What the training stages (`pretrain`, `train`) share: model arguments, the loop call, the final save.

Torch loads when a stage runs, not when a launch plans one (tests/test_launch_imports.py): the stage
modules import the model, data and training code inside the functions that run them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ablate.atomic import atomic_write_text
from ablate.data.sequence import VocabLayout
from ablate.errors import ConfigError
from ablate.model.args import ModelArgs, open_lm_arch
from ablate.schema import OptimConfig, RunConfig, TrainConfig
from ablate.stages.context import StageContext

if TYPE_CHECKING:
    from ablate.data.shards import ShardDataset
    from ablate.model.transformer import Transformer

# Model fields that define the architecture (what a pretrained checkpoint must match); all but
# text_vocab_size are ModelArgs fields of the same name. model.config_json replaces them all.
ARCH_FIELDS = (
    "hidden_dim",
    "n_layers",
    "n_heads",
    "text_vocab_size",
    "post_embed_norm",
    "weight_tying",
    "model_norm",
    "ffn_type",
    "qk_norm",
    "positional_embedding_type",
)


def _architecture(cfg: RunConfig) -> dict[str, Any]:
    """ARCH_FIELDS from model.config_json when set (plus its norm_eps), else from the model.* fields."""
    m = cfg.model
    if m.config_json is None:
        return {k: getattr(m, k) for k in ARCH_FIELDS}
    arch = open_lm_arch(m.config_json)
    return {"text_vocab_size": arch.pop("vocab_size"), **arch}


def arch_config(cfg: RunConfig) -> dict[str, Any]:
    """The architecture the model is built with, for a stage key.

    With model.config_json it is read from the file, so the key follows its content: a changed file
    changes the key, and two paths to the same architecture share one.
    """
    try:
        return _architecture(cfg)
    except ConfigError as e:
        # Keys are also computed for configs never validated (planning a perturbed config, say). An
        # unusable file gets a key of its own, naming it and why; validate() refuses it before anything
        # is submitted, and model_args raises the same error.
        return {"config_json": cfg.model.config_json, "unusable": str(e)}


def model_args(cfg: RunConfig, vocab_size: int) -> ModelArgs:
    """open_lm model arguments from the run config (model.config_json's architecture when set)."""
    arch = {k: v for k, v in _architecture(cfg).items() if k != "text_vocab_size"}
    return ModelArgs(seq_len=cfg.data.seq_len, vocab_size=vocab_size, **arch)


def train_and_save(
    ctx: StageContext,
    model: Transformer,
    dataset: ShardDataset,
    layout: VocabLayout,
    train: TrainConfig,
    optim: OptimConfig,
    evaluate: Callable[[int, int], dict[str, float]] | None = None,
    eval_every_tokens: int = 0,
) -> dict[str, float]:
    """Run the loop on the stage's train and optim sections, then save the model as an open_lm release
    (model.pt + model_config.json). Metrics go through the stage's sink (ctx.log_metrics).

    Data-parallel when the runner opened a process group: every rank trains on this rank's GPU (or the CPU);
    rank 0 alone writes the model, and the others wait until it is written.
    """
    from ablate.train import distributed as dist
    from ablate.train.checkpoint import save_checkpoint
    from ablate.train.loop import train_loop

    model.to(dist.training_device())
    final = train_loop(
        model,
        dataset,
        layout,
        train,
        optim,
        ctx.out_dir,
        ctx.log_metrics,
        log_params=ctx.tracker.log_params,
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
