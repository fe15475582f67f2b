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

    ``sequences_per_step`` depends on the requested batch and the sequence length only (never on the
    micro-batch or the number of ranks), so a run key, which leaves the cluster out, always means the same
    effective batch. Rank ``r`` takes the step's positions ``r, r + world_size, ...`` (strided), so ranks
    hold ``ceil`` or ``floor`` of ``sequences_per_step / world_size`` sequences; the loop weights every
    micro-batch by its share of the *global* count of targets, so an uneven split (and a ragged last
    micro-batch) still gives exactly the one-large-batch gradient.
    """

    seq_len: int
    sequences_per_step: int
    micro_batch_size: int
    """Sequences per forward pass on one rank: min(the configured ceiling, sequences_per_rank)."""
    accum_steps: int
    """Micro-batches of the fullest rank: ceil(sequences_per_rank / micro_batch_size)."""
    world_size: int
    requested_tokens: int = 0
    """The batch size asked for (``batch_tokens``); 0 when unknown."""

    @property
    def tokens_per_step(self) -> int:
        """Tokens (positions) one optimizer step consumes, after rounding: the *effective* global batch."""
        return self.sequences_per_step * self.seq_len

    @property
    def sequences_per_rank(self) -> int:
        """Sequences the fullest rank processes per optimizer step (ceil of an even share)."""
        return -(-self.sequences_per_step // self.world_size)

    def rank_sequences(self, rank: int) -> int:
        """Sequences rank ``rank`` processes per step: its strided share of the step's positions."""
        return len(range(rank, self.sequences_per_step, self.world_size))

    @property
    def deviation(self) -> float:
        """Relative difference of the effective batch from the requested one (+0.032: 3.2% larger)."""
        if not self.requested_tokens:
            return 0.0
        return self.tokens_per_step / self.requested_tokens - 1.0


def sequences_per_step(batch_tokens: int, seq_len: int) -> int:
    """``batch_tokens / seq_len`` rounded to the nearest whole sequence (halves up), at least 1."""
    return max(1, (2 * int(batch_tokens) + int(seq_len)) // (2 * int(seq_len)))  # exact integer rounding


def plan_batch(batch_tokens: int, seq_len: int, micro_batch_size: int, world_size: int = 1) -> BatchPlan:
    """Convert a global batch size in tokens into sequences per optimizer step, split over ``world_size`` ranks.

    The global batch is ``batch_tokens / seq_len`` sequences rounded to the nearest whole sequence (halves
    up), whatever the micro-batch and the number of ranks: more ranks mean fewer sequences per rank, never
    another batch. The effective batch (``tokens_per_step``) thus differs from the request by less than
    half a sequence (1M tokens of 1,152-token sequences: 868 sequences, 999,936 tokens, -0.006%).
    Each rank takes ``sequences_per_step / world_size`` sequences, rounded up or down when the division is
    not exact (868 over 64 ranks: 36 ranks take 14, 28 take 13); ``micro_batch_size`` is a ceiling (what
    fits in memory) and shrinks to the fullest rank's share when that is smaller; ``accum_steps`` is the
    fullest rank's number of micro-batches (ceil: the last one may be smaller).
    ConfigError if ``batch_tokens`` is smaller than one sequence, or the step has fewer sequences than
    ranks (a rank with nothing to do).
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
    sequences = sequences_per_step(batch_tokens, seq_len)
    if sequences < world_size:
        raise ConfigError(
            "batch_tokens",
            batch_tokens,
            f">= one sequence per rank ({world_size} ranks x seq_len {seq_len} = {world_size * seq_len} tokens)",
            hint=f"it gives {sequences} sequences per step; use fewer ranks or a larger batch",
        )
    per_rank = -(-sequences // world_size)  # the fullest rank
    micro = min(int(micro_batch_size), per_rank)
    return BatchPlan(
        seq_len=seq_len,
        sequences_per_step=sequences,
        micro_batch_size=micro,
        accum_steps=-(-per_rank // micro),
        world_size=world_size,
        requested_tokens=batch_tokens,
    )


def closest_micro_batch_size(
    batch_tokens: int, seq_len: int, max_micro_batch_size: int, world_size: int = 1
) -> int:
    """The micro-batch size in ``1..max_micro_batch_size`` whose plan_batch comes closest to ``batch_tokens``.

    The effective batch no longer depends on the micro-batch (see plan_batch), so every size ties and the
    largest that plan_batch uses (fewest accumulation steps) wins: the micro-batch of plan_batch's own plan,
    so the cost estimate never suggests a change.
    """
    return plan_batch(batch_tokens, seq_len, max_micro_batch_size, world_size).micro_batch_size


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
