"""The training loop shared by the `pretrain` and `train` stages.

Token budgets become steps (ablate.train.schedule); each optimizer step reads its sequences from the shard
reader at an exact sample position, accumulates gradients over micro-batches (token-weighted, so the result
equals one large batch), logs the loss split, and checkpoints at a token interval. Resuming restores model,
optimizer, step and RNG (ablate.train.state), and the data position follows from the step, so an
interrupted run's curve equals an uninterrupted one's.

The loop reads the schema's own sections (train.*, optim.*): a stage with its own budget (pretrain) passes
copies with those fields replaced. Metrics go to the `log_metrics` it is given (the stage's sink writes
metrics.jsonl, then the tracker); the loop imports no tracking code.

Data parallel (inside ablate.train.distributed.init_distributed, WORLD_SIZE > 1): each step's global
sample positions are dealt to the ranks (strided), each rank weights its loss by the *global* count of
targets and the gradients are summed over ranks during the last micro-batch's backward
(ablate.train.grad_sync), so a step equals a one-process step over the same global batch. Only rank 0 logs,
writes progress.json and checkpoints; every rank resumes from the same checkpoint, and a stop asked of any
rank stops all of them after the same step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ablate import metrics as M
from ablate.data.sequence import VocabLayout, caption_dropout_mask, drop_captions
from ablate.data.shards import ShardDataset, ShardSampler, read_batch
from ablate.errors import ConfigError, StopRequested
from ablate.rundir import RunDir
from ablate.schema import PRECISIONS, OptimConfig, TrainConfig
from ablate.train import distributed as dist
from ablate.train.distributed import DistEnv
from ablate.train.grad_sync import GradSync
from ablate.train.loss import LossParts, shift_targets, split_loss
from ablate.train.schedule import BatchPlan, lr_at, plan_batch, tokens_to_steps, warmup_tokens_to_steps
from ablate.train.state import TrainState, adamw, resume, save

LogMetrics = Callable[[dict[str, float], int], None]
"""Where the loop's metric rows go, with their step (rank 0 only)."""
LogParams = Callable[[dict[str, Any]], None]
"""Where the loop's derived settings (loop.total_steps, ...) go (rank 0 only)."""


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
    if precision not in PRECISIONS:
        raise ConfigError("train.precision", precision, f"{', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@dataclass(frozen=True)
class Schedule:
    """A run's token budgets in optimizer steps (the global batch depends on batch_tokens and seq_len only;
    the world size sets each rank's share)."""

    batch: BatchPlan
    total_steps: int
    warmup_steps: int
    checkpoint_every: int
    """Steps between checkpoints; 0: only at the end and on a stop."""
    eval_every: int
    """Steps between calls of the loop's `evaluate`; 0: only before the first step and after the last."""

    @classmethod
    def plan(
        cls, train: TrainConfig, optim: OptimConfig, seq_len: int, world_size: int, eval_every_tokens: int
    ) -> Schedule:
        batch = plan_batch(train.batch_tokens, seq_len, train.micro_batch_size, world_size)
        per_step = batch.tokens_per_step
        total_steps = tokens_to_steps(train.total_tokens, per_step)
        return cls(
            batch=batch,
            total_steps=total_steps,
            warmup_steps=warmup_tokens_to_steps(optim.warmup_tokens, per_step, total_steps),
            checkpoint_every=_every(train.checkpoint_every_tokens, per_step),
            eval_every=_every(eval_every_tokens, per_step),
        )

    @property
    def tokens_per_step(self) -> int:
        return self.batch.tokens_per_step

    def evaluates_at(self, step: int) -> bool:
        """Whether the loop's `evaluate` runs after `step` (1-based: steps taken)."""
        return bool(self.eval_every and step % self.eval_every == 0) or step == self.total_steps

    def checkpoints_at(self, step: int) -> bool:
        """Whether a checkpoint is due after `step` (a stop forces one besides)."""
        return bool(self.checkpoint_every and step % self.checkpoint_every == 0) or step == self.total_steps

    def params(self) -> dict[str, Any]:
        """The derived settings a run's tracker shows (as loop.<name>)."""
        return {
            "loop.total_steps": self.total_steps,
            "loop.tokens_per_step": self.tokens_per_step,
            "loop.accum_steps": self.batch.accum_steps,
            "loop.total_tokens": self.total_steps * self.tokens_per_step,
        }


def _every(tokens: int, tokens_per_step: int) -> int:
    """A token interval in steps (at least 1); 0 stays 0 (never)."""
    return max(1, round(tokens / tokens_per_step)) if tokens else 0


@dataclass
class RunSetup:
    """What every step of one run reads besides the TrainState: settings, data, and the step's machinery."""

    train: TrainConfig
    optim: OptimConfig
    schedule: Schedule
    env: DistEnv
    dataset: ShardDataset
    sampler: ShardSampler
    layout: VocabLayout
    device: torch.device
    forward: Callable[[torch.Tensor], torch.Tensor]
    """The model, or its torch.compile'd wrapper (for the forward passes only)."""
    autocast: Any
    trainable: list[nn.Parameter]
    grad_sync: GradSync


def _setup(
    model: nn.Module,
    dataset: ShardDataset,
    layout: VocabLayout,
    train: TrainConfig,
    optim: OptimConfig,
    env: DistEnv,
    eval_every_tokens: int,
) -> tuple[TrainState, RunSetup]:
    """Seed, optimizer, precision and compilation: a fresh state at step 0 and the run it steps through."""
    torch.manual_seed(train.seed)
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    if cuda:  # TF32 matmuls and convolutions: float32 storage, tensor-core speed for what autocast leaves
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    state = TrainState(model, adamw(model, optim, fused=cuda))
    autocast = precision_context(train.precision, device)
    if hasattr(model, "activation_checkpointing"):  # ablate's Transformer; other modules train as they are
        setattr(model, "activation_checkpointing", train.activation_checkpointing)  # noqa: B010
    # Compiled for the forward passes only: state dicts, evaluation and checkpoints use the model itself.
    forward = torch.compile(model) if train.compile else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    run = RunSetup(
        train=train,
        optim=optim,
        schedule=Schedule.plan(train, optim, dataset.seq_len, env.world_size, eval_every_tokens),
        env=env,
        dataset=dataset,
        # The whole stream, not a rank's: positions are global (step x sequences_per_step + i), so a
        # checkpoint holds no rank-specific position and a resume may even change the world size.
        sampler=ShardSampler(len(dataset), seed=train.seed),
        layout=layout,
        device=device,
        forward=forward,
        autocast=autocast,
        trainable=trainable,
        grad_sync=GradSync(trainable, reduce_dtype=train.grad_reduce_dtype),
    )
    return state, run


def _resume(state: TrainState, checkpoint: Path, main: bool) -> None:
    """Continue from the checkpoint if there is one, else make sure every rank starts from rank 0's init."""
    # Every rank reads the same file: nothing writes it until a step, which needs every rank, is done.
    if resume(state, checkpoint):
        if main:  # in the job log: where a requeued or relaunched run picked up
            print(
                f"[{time.strftime('%H:%M:%S')}] resuming from {checkpoint} at step {state.step}", flush=True
            )
    else:
        dist.broadcast_model(state.model)  # ranks build the same init from the seed; this makes sure of it


def _rank_batch(run: RunSetup, step: int) -> torch.Tensor:
    """This rank's sequences of `step` (S_rank, L), captions dropped where train.caption_dropout says."""
    plan = run.schedule.batch
    # This rank's strided share of the step's global positions: rank r takes r, r + W, r + 2W, ...
    first = step * plan.sequences_per_step
    positions = np.arange(first + run.env.rank, first + plan.sequences_per_step, run.env.world_size)
    batch = read_batch(run.dataset, run.sampler.indices_at(positions))
    if run.train.caption_dropout:
        drop = caption_dropout_mask(run.train.seed, step, plan.sequences_per_step, run.train.caption_dropout)
        batch = torch.from_numpy(drop_captions(batch.numpy(), run.layout, drop[positions - first]))
    return batch


def train_step(state: TrainState, run: RunSetup) -> dict[str, float]:
    """One optimizer step from state.step (which it advances); returns the step's metrics."""
    t0 = time.perf_counter()
    s, plan = run.schedule, run.schedule.batch
    lr = lr_at(state.step, run.optim.lr, s.warmup_steps, s.total_steps, run.optim.min_lr_ratio)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = shift_targets(_rank_batch(run, state.step).to(run.device))  # (S_rank, L-1) each
    # Token-weighted accumulation: each micro-batch's mean is scaled by its share of the *global* step's
    # targets, so summing over micro-batches and ranks gives the mean over the whole global batch.
    n_used = max(1, dist.global_sum(int((targets != run.layout.pad).sum())))
    parts: list[LossParts] = []
    starts = range(0, inputs.shape[0], plan.micro_batch_size)
    for i in starts:
        x, y = inputs[i : i + plan.micro_batch_size], targets[i : i + plan.micro_batch_size]
        with run.autocast:
            p = split_loss(run.forward(x), y, run.layout)  # logits (b, L-1, V), float32 even under autocast
        if i == starts[-1]:  # this rank's last backward of the step reduces as its gradients appear
            run.grad_sync.arm()
        (p.loss * ((p.n_text + p.n_image) / n_used)).backward()
        parts.append(p)
    run.grad_sync.finish()  # every .grad is now the sum over ranks
    # The reduced gradients are identical on every rank, so the norm, the clipping and the step are too.
    clip = run.optim.grad_clip if run.optim.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.trainable, clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    dt = time.perf_counter() - t0

    merged = dist.reduce_loss_parts(LossParts.merge(parts)).to_metrics()  # the global batch's loss
    return {
        M.LOSS: merged[M.LOSS],
        # Only the token types the step has: a text-only LM (pretrain) has no image loss, an
        # unconditional run no text loss, and a 0 logged for them would read as a perfect loss.
        **({M.TEXT_LOSS: merged[M.TEXT_LOSS]} if merged["n_text"] else {}),
        **({M.IMAGE_LOSS: merged[M.IMAGE_LOSS]} if merged["n_image"] else {}),
        M.PERPLEXITY: merged[M.PERPLEXITY],
        M.LR: lr,
        M.TOKENS: state.step * s.tokens_per_step,
        M.TOKENS_PER_S: s.tokens_per_step / dt,
        "grad_norm": float(grad_norm),
    }


class _Progress:
    """progress.json at most every `every_s` seconds (and at the last step), with this session's rate."""

    def __init__(self, run_dir: RunDir, schedule: Schedule, every_s: float) -> None:
        self.run_dir, self.schedule, self.every_s = run_dir, schedule, every_s
        self.start = time.perf_counter()
        self.last = 0.0
        self.tokens = 0

    def step_done(self, step: int, loss: float) -> None:
        s = self.schedule
        self.tokens += s.tokens_per_step
        now = time.perf_counter()
        if now - self.last < self.every_s and step != s.total_steps:
            return
        self.last = now
        rate = self.tokens / (now - self.start)
        self.run_dir.write_progress(
            {
                "step": step,
                "total_steps": s.total_steps,
                "tokens": step * s.tokens_per_step,
                "total_tokens": s.total_steps * s.tokens_per_step,
                "loss": loss,
                "tokens_per_s": rate,
                "eta_s": (s.total_steps - step) * s.tokens_per_step / max(rate, 1e-9),
            },
        )


def train_loop(
    model: nn.Module,
    dataset: ShardDataset,
    layout: VocabLayout,
    train: TrainConfig,
    optim: OptimConfig,
    out_dir: Path,
    log_metrics: LogMetrics,
    *,
    log_params: LogParams = lambda params: None,
    evaluate: Callable[[int, int], dict[str, float]] | None = None,
    eval_every_tokens: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    progress_every_s: float = 2.0,
) -> dict[str, float]:
    """Train `model` on `dataset` to train.total_tokens; returns the last step's metrics.

    `evaluate(step, tokens)` (optional) runs before the first step, every eval_every_tokens and after the
    last; its metrics are logged at that step. Checkpoints go to out_dir/checkpoints/last.pt. Under
    torch.distributed every rank calls this with the same arguments; `evaluate`, `log_metrics`,
    `log_params` and the files run on rank 0 only.
    """
    env = dist.require_group_if_launched()
    main = env.is_main
    run_dir = RunDir(out_dir)
    if main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
    state, run = _setup(model, dataset, layout, train, optim, env, eval_every_tokens)
    s = run.schedule
    _resume(state, run_dir.last_checkpoint, main)
    if main:
        log_params(s.params())
    if evaluate is not None and state.step == 0 and main:
        log_metrics(evaluate(0, 0), 0)

    last: dict[str, float] = {}
    progress = _Progress(run_dir, s, progress_every_s)
    model.train()
    while state.step < s.total_steps:
        last = train_step(state, run)
        step = state.step
        if evaluate is not None and s.evaluates_at(step) and main:
            last.update(evaluate(step, step * s.tokens_per_step))
        if main:
            log_metrics(last, step)
        stop = dist.any_rank(should_stop())  # one rank's preemption notice stops all after this step
        if stop or s.checkpoints_at(step):
            if main:
                save(state, run_dir.last_checkpoint)
            dist.barrier()  # no rank goes on (or exits, on a stop) before the checkpoint is on disk
        if main:
            progress.step_done(step, last[M.LOSS])
        if stop and step < s.total_steps:
            run.grad_sync.close()
            raise StopRequested(f"stopped at step {step} after a checkpoint")
    run.grad_sync.close()
    return last
