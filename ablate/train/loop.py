"""The training loop shared by the `pretrain` and `train` stages.

Token budgets become steps (ablate.train.schedule); each optimizer step reads its sequences from the shard
reader at an exact sample position, accumulates gradients over micro-batches (token-weighted, so the result
equals one large batch), logs the loss split, and checkpoints at a token interval. Resuming restores model,
optimizer, step, RNG and data position, so an interrupted run's curve equals an uninterrupted one's.

Data parallel (inside ablate.train.distributed.init_distributed, WORLD_SIZE > 1): each step's global
sample positions are dealt to the ranks (strided), each rank weights its loss by the *global* count of
targets and the gradients are summed over ranks during the last micro-batch's backward
(ablate.train.grad_sync), so a step equals a one-process step over the same global batch. Only rank 0 logs, writes metrics.jsonl / progress.json and checkpoints; every rank resumes from the
same checkpoint, and a stop asked of any rank stops all of them after the same step.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ablate.config.schema import OptimConfig
from ablate.data.sequence import VocabLayout, caption_dropout_mask, drop_captions
from ablate.data.shards import ShardDataset, ShardSampler, read_batch
from ablate.errors import ConfigError, StopRequested
from ablate.rundir import RunDir
from ablate.tracking import Tracker
from ablate.train import distributed as dist
from ablate.train.checkpoint import load_checkpoint, save_checkpoint
from ablate.train.grad_sync import GradSync
from ablate.train.loss import LossParts, shift_targets, split_loss
from ablate.train.schedule import lr_at, plan_batch, tokens_to_steps, warmup_tokens_to_steps


@dataclass
class LoopConfig:
    """What the loop needs, in the paper's units (tokens)."""

    total_tokens: int
    batch_tokens: int
    micro_batch_size: int
    seq_len: int
    lr: float
    """Peak LR of this stage (optim.lr for train, pretrain.lr for pretrain; optim.lr itself is not read)."""
    warmup_tokens: int
    """Warm-up of this stage (like lr: optim.warmup_tokens is not read)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW betas, eps, weight decay, clipping and the cosine's floor."""
    checkpoint_every_tokens: int = 0
    precision: str = "float32"
    """auto (bf16 on CUDA, float32 on CPU), bf16 (autocast of forward and loss) or float32."""
    compile: bool = False
    """torch.compile the model for the training steps."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward."""
    grad_reduce_dtype: str = "float32"
    """Data parallel: float32 or bf16, the dtype gradients are summed over ranks in."""
    seed: int = 0
    caption_dropout: float = 0.0
    """Fraction of text-to-image sequences trained without their caption (ablate.data.sequence.drop_captions)."""
    progress_every_s: float = 2.0


def native_bf16(device: torch.device, capabilities: dict[str, Any] | None = None) -> bool:
    """Whether bf16 autocast is faster than float32 on `device`: CUDA, or a CPU with AMX-BF16.

    A demo step (bench/demo_step_profile.py, one thread) under bf16 was 1.4x faster than float32 with AMX,
    but 1.5x slower on a Xeon with AVX512-BF16 and no AMX (the casts cost more than its bf16 dot products
    save) and 9x slower on an AVX2-only CPU (emulated). `capabilities`: torch.cpu's, for tests.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return bool(caps.get("amx_bf16"))


def precision_context(precision: str, device: torch.device) -> Any:
    """The autocast context of a precision setting: bf16 for bf16 (and for auto where bf16 is native,
    native_bf16), else a no-op."""
    if precision not in ("auto", "bf16", "float32"):
        raise ConfigError("train.precision", precision, "auto, bf16 or float32")
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices of the blocks; not norms, biases or embeddings (as open_lm and nanoGPT do)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2 and "tok_embeddings" not in name and not name.startswith("output"):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def train_loop(
    model: nn.Module,
    dataset: ShardDataset,
    layout: VocabLayout,
    cfg: LoopConfig,
    out_dir: Path,
    tracker: Tracker,
    *,
    evaluate: Callable[[int, int], dict[str, float]] | None = None,
    eval_every_tokens: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """Train `model` on `dataset` to cfg.total_tokens; returns the last step's metrics.

    `evaluate(step, tokens)` (optional) runs before the first step, every eval_every_tokens and after the last; its metrics
    are logged at that step. Checkpoints go to out_dir/checkpoints/last.pt. Under torch.distributed every rank
    calls this with the same arguments; `evaluate` and the outputs run on rank 0 only.
    """
    env = dist.require_group_if_launched()
    main = env.is_main
    out_dir = Path(out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    # The global batch depends on (batch_tokens, seq_len) only; the world size sets each rank's share.
    plan = plan_batch(cfg.batch_tokens, cfg.seq_len, cfg.micro_batch_size, env.world_size)
    tokens_per_step = plan.tokens_per_step
    total_steps = tokens_to_steps(cfg.total_tokens, tokens_per_step)
    warmup_steps = warmup_tokens_to_steps(cfg.warmup_tokens, tokens_per_step, total_steps)
    ckpt_every = (
        max(1, round(cfg.checkpoint_every_tokens / tokens_per_step)) if cfg.checkpoint_every_tokens else 0
    )
    eval_every = max(1, round(eval_every_tokens / tokens_per_step)) if eval_every_tokens else 0

    torch.manual_seed(cfg.seed)
    o = cfg.optim
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    if cuda:  # TF32 matmuls and convolutions: float32 storage, tensor-core speed for what autocast leaves
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = torch.optim.AdamW(
        _param_groups(model, o.weight_decay), lr=cfg.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=cuda
    )
    autocast = precision_context(cfg.precision, device)
    if hasattr(model, "activation_checkpointing"):  # ablate's Transformer; other modules train as they are
        setattr(model, "activation_checkpointing", cfg.activation_checkpointing)  # noqa: B010
    # Compiled for the forward passes only: state dicts, evaluation and checkpoints use the model itself.
    forward = torch.compile(model) if cfg.compile else model
    run_dir = RunDir(out_dir)
    ckpt_path = run_dir.last_checkpoint
    metrics_log = run_dir.metrics_log()
    step = 0
    # Every rank reads the same file: nothing writes it until a step, which needs every rank, is done.
    state = load_checkpoint(ckpt_path)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        step = state["step"]
        if main:  # in the job log: where a requeued or relaunched run picked up
            print(f"[{time.strftime('%H:%M:%S')}] resuming from {ckpt_path} at step {step}", flush=True)
    else:
        dist.broadcast_model(model)  # ranks build the same init from the seed; this makes sure of it
    if main:
        metrics_log.truncate_after(step)

    # The whole stream, not a rank's: positions are global (step x sequences_per_step + i), so a checkpoint
    # holds no rank-specific position and a resume may even change the world size.
    sampler = ShardSampler(len(dataset), seed=cfg.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_sync = GradSync(trainable, reduce_dtype=cfg.grad_reduce_dtype)
    info = {
        "total_steps": total_steps,
        "tokens_per_step": tokens_per_step,
        "accum_steps": plan.accum_steps,
        "total_tokens": total_steps * tokens_per_step,
    }
    if main:
        tracker.log_params({f"loop.{k}": v for k, v in info.items()})

    def log(step: int, metrics: dict[str, float]) -> None:
        if main:  # the file first: a step the store has is always in metrics.jsonl (exactly-once resume)
            metrics_log.append(step, metrics)
            tracker.log_metrics(metrics, step)

    if evaluate is not None and step == 0 and main:
        log(0, evaluate(0, 0))

    last: dict[str, float] = {}
    last_progress = 0.0
    t_start = time.perf_counter()
    tokens_this_session = 0
    model.train()
    while step < total_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg.lr, warmup_steps, total_steps, cfg.optim.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # This rank's strided share of the step's global positions: rank r takes r, r + W, r + 2W, ...
        first = step * plan.sequences_per_step
        positions = np.arange(first + env.rank, first + plan.sequences_per_step, env.world_size)
        batch = read_batch(dataset, sampler.indices_at(positions))  # (S_rank, L)
        if cfg.caption_dropout:
            drop = caption_dropout_mask(cfg.seed, step, plan.sequences_per_step, cfg.caption_dropout)
            batch = torch.from_numpy(drop_captions(batch.numpy(), layout, drop[positions - first]))
        batch = batch.to(device)
        inputs, targets = shift_targets(batch)  # (S_rank, L-1) each
        # Token-weighted accumulation: each micro-batch's mean is scaled by its share of the *global* step's
        # targets, so summing over micro-batches and ranks gives the mean over the whole global batch.
        n_used = max(1, dist.global_sum(int((targets != layout.pad).sum())))
        parts: list[LossParts] = []
        starts = range(0, batch.shape[0], plan.micro_batch_size)
        for i in starts:
            x, y = inputs[i : i + plan.micro_batch_size], targets[i : i + plan.micro_batch_size]
            with autocast:
                p = split_loss(forward(x), y, layout)  # logits (b, L-1, V), float32 even under autocast
            if i == starts[-1]:  # this rank's last backward of the step reduces as its gradients appear
                grad_sync.arm()
            (p.loss * ((p.n_text + p.n_image) / n_used)).backward()
            parts.append(p)
        grad_sync.finish()  # every .grad is now the sum over ranks
        # The reduced gradients are identical on every rank, so the norm, the clipping and the step are too.
        grad_norm = torch.nn.utils.clip_grad_norm_(
            trainable, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_this_session += tokens_per_step
        dt = time.perf_counter() - t0

        merged = dist.reduce_loss_parts(LossParts.merge(parts)).to_metrics()  # the global batch's loss
        last = {
            "loss": merged["loss"],
            # Only the token types the step has: a text-only LM (pretrain) has no image loss, an
            # unconditional run no text loss, and a 0 logged for them would read as a perfect loss.
            **({"text_loss": merged["text_loss"]} if merged["n_text"] else {}),
            **({"image_loss": merged["image_loss"]} if merged["n_image"] else {}),
            "perplexity": merged["perplexity"],
            "lr": lr,
            "tokens": step * tokens_per_step,
            "tokens_per_s": tokens_per_step / dt,
            "grad_norm": float(grad_norm),
        }
        eval_now = (eval_every and step % eval_every == 0) or step == total_steps
        if evaluate is not None and eval_now and main:
            last.update(evaluate(step, step * tokens_per_step))
        log(step, last)

        stop = dist.any_rank(should_stop())  # one rank's preemption notice stops all after this step
        if stop or step == total_steps or (ckpt_every and step % ckpt_every == 0):
            if main:
                save_checkpoint(
                    ckpt_path,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "rng": _rng_state(),
                        "step": step,
                    },
                )
            dist.barrier()  # no rank goes on (or exits, on a stop) before the checkpoint is on disk
        now = time.perf_counter()
        if main and (now - last_progress >= cfg.progress_every_s or step == total_steps):
            last_progress = now
            rate = tokens_this_session / (now - t_start)
            run_dir.write_progress(
                {
                    "step": step,
                    "total_steps": total_steps,
                    "tokens": step * tokens_per_step,
                    "total_tokens": total_steps * tokens_per_step,
                    "loss": last["loss"],
                    "tokens_per_s": rate,
                    "eta_s": (total_steps - step) * tokens_per_step / max(rate, 1e-9),
                },
            )
        if stop and step < total_steps:
            grad_sync.close()
            raise StopRequested(f"stopped at step {step} after a checkpoint")
    grad_sync.close()
    return last
