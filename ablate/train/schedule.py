"""Learning-rate schedule and the conversion of token budgets (as the paper states them) into steps.

The paper gives sizes in tokens: 100B training tokens, 1M-token batches, sequences of 1,152 tokens. A token
here is a sequence *position* (padding included), as in the paper's batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ablate.errors import ConfigError


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio * peak``.

    - warm-up (``step < warmup_steps``): ``peak * (step + 1) / warmup_steps``, so step 0 already learns
      (``peak / warmup_steps``) and step ``warmup_steps - 1`` runs at the peak (as open_lm does);
    - cosine: ``step == warmup_steps`` is the peak, ``step == total_steps`` the minimum; the last step
      actually taken (``total_steps - 1``) is a hair above it. Steps past the end stay at the minimum.
    """
    if step < 0:
        raise ConfigError("step", step, "an integer >= 0")
    if total_steps < 1:
        raise ConfigError("total_steps", total_steps, "an integer >= 1")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError("warmup_steps", warmup_steps, f"an integer in [0, total_steps={total_steps}]")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError("min_lr_ratio", min_lr_ratio, "a number in [0, 1]")
    if peak_lr < 0:
        raise ConfigError("peak_lr", peak_lr, "a number >= 0")
    min_lr = peak_lr * min_lr_ratio
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's sequences are split over ranks and gradient-accumulation micro-batches.

    ``sequences_per_step == micro_batch_size * accum_steps * world_size``: every rank runs ``accum_steps``
    micro-batches of exactly ``micro_batch_size`` sequences (no ragged last micro-batch), so a step's
    gradient is the mean over equally sized pieces.
    """

    seq_len: int
    sequences_per_step: int
    micro_batch_size: int
    accum_steps: int
    world_size: int
    requested_tokens: int = 0
    """The batch size asked for (``batch_tokens``); 0 when unknown."""

    @property
    def tokens_per_step(self) -> int:
        """Tokens (positions) one optimizer step consumes, after rounding: the *effective* global batch."""
        return self.sequences_per_step * self.seq_len

    @property
    def sequences_per_rank(self) -> int:
        """Sequences each rank processes per optimizer step."""
        return self.micro_batch_size * self.accum_steps

    @property
    def deviation(self) -> float:
        """Relative difference of the effective batch from the requested one (+0.032: 3.2% larger)."""
        if not self.requested_tokens:
            return 0.0
        return self.tokens_per_step / self.requested_tokens - 1.0


def plan_batch(batch_tokens: int, seq_len: int, micro_batch_size: int, world_size: int = 1) -> BatchPlan:
    """Convert a global batch size in tokens into sequences per optimizer step, split over ``world_size`` ranks.

    The global batch is ``batch_tokens`` whatever the number of ranks: more ranks mean fewer accumulation
    steps, not a bigger batch. Rounding rule: ``batch_tokens / seq_len`` sequences, rounded to the *nearest*
    multiple of one unit, ``micro_batch_size * world_size`` sequences (halves round up), and never below one
    unit; ``accum_steps`` is the number of units. Every rank thus runs the same whole number of full
    micro-batches. ``micro_batch_size`` is a ceiling: when the request holds fewer sequences per rank than
    one micro-batch, the micro-batch shrinks to that many (rounded, at least 1) instead of the batch
    growing. The effective batch (``tokens_per_step``) can differ from the request by less than half a
    unit (more only below one sequence per rank): read ``tokens_per_step`` / ``deviation`` and log it. A large unit (many ranks x a big
    micro-batch) rounds coarsely: at 1M tokens of 1,152-token sequences (868.06 sequences) over 64 ranks,
    micro 8 gives 1,024 sequences (+18%), micro 7 gives 896 (+3.2%); see ``closest_micro_batch_size``.
    ConfigError if ``batch_tokens`` is smaller than one sequence.
    """
    for key, value in (
        ("seq_len", seq_len),
        ("micro_batch_size", micro_batch_size),
        ("world_size", world_size),
    ):
        if int(value) != value or value < 1:
            raise ConfigError(key, value, "an integer >= 1")
    if int(batch_tokens) != batch_tokens:
        raise ConfigError("batch_tokens", batch_tokens, "a whole number of tokens")
    batch_tokens = int(batch_tokens)
    if batch_tokens < seq_len:
        raise ConfigError(
            "batch_tokens", batch_tokens, f">= seq_len ({seq_len}): a batch must hold at least one sequence"
        )
    # micro_batch_size is a ceiling (what fits in memory): a batch smaller than one unit shrinks it rather
    # than growing the batch (sweeps/batch.yaml at demo scale asks for 4 sequences with micro-batches of 8).
    per_rank = batch_tokens / seq_len / world_size
    if per_rank < micro_batch_size:
        micro_batch_size = max(1, min(micro_batch_size, int(per_rank + 0.5)))
    unit = micro_batch_size * world_size
    span = seq_len * unit  # tokens in one unit
    units = max(1, (2 * batch_tokens + span) // (2 * span))  # round half up, in exact integer arithmetic
    return BatchPlan(
        seq_len=seq_len,
        sequences_per_step=units * unit,
        micro_batch_size=micro_batch_size,
        accum_steps=units,
        world_size=world_size,
        requested_tokens=batch_tokens,
    )


def closest_micro_batch_size(
    batch_tokens: int, seq_len: int, max_micro_batch_size: int, world_size: int = 1
) -> int:
    """The micro-batch size in ``1..max_micro_batch_size`` whose plan_batch comes closest to ``batch_tokens``.

    Ties go to the larger micro-batch (fewer accumulation steps). A suggestion for configs whose unit rounds
    coarsely; plan_batch itself never changes the micro-batch it is given.
    """
    best, best_err = 1, None
    for micro in range(1, int(max_micro_batch_size) + 1):
        err = abs(plan_batch(batch_tokens, seq_len, micro, world_size).tokens_per_step - batch_tokens)
        if best_err is None or err <= best_err:
            best, best_err = micro, err
    return best


def tokens_to_steps(total_tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps needed to consume ``total_tokens`` (ceil: the budget is reached, never cut short)."""
    if tokens_per_step < 1:
        raise ConfigError("tokens_per_step", tokens_per_step, "an integer >= 1")
    if total_tokens < 0:
        raise ConfigError("total_tokens", total_tokens, "an integer >= 0")
    return -(-int(total_tokens) // int(tokens_per_step))


def warmup_tokens_to_steps(warmup_tokens: int, tokens_per_step: int, total_steps: int | None = None) -> int:
    """Warm-up steps for a warm-up given in tokens (ceil, as tokens_to_steps).

    ConfigError if the warm-up would be longer than ``total_steps`` (when given) rather than silently
    clipping it: a warm-up that long is a mistake in the config.
    """
    try:
        steps = tokens_to_steps(warmup_tokens, tokens_per_step)
    except ConfigError as e:
        raise ConfigError("warmup_tokens" if e.key == "total_tokens" else e.key, e.value, e.allowed) from None
    if total_steps is not None and steps > total_steps:
        raise ConfigError(
            "warmup_tokens",
            warmup_tokens,
            f"at most the training budget ({total_steps} steps x {tokens_per_step} tokens)",
            hint=f"it converts to {steps} warm-up steps",
        )
    return steps
