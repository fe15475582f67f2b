"""Learning-rate schedule and token-to-step conversion, with the paper's numbers."""

from __future__ import annotations

import pytest

from ablate.errors import ConfigError
from ablate.train.schedule import lr_at, plan_batch, tokens_to_steps, warmup_tokens_to_steps

PEAK = 3e-4


def test_warmup_endpoints():
    assert lr_at(0, PEAK, 100, 1000) == pytest.approx(PEAK / 100)  # step 0 already learns
    assert lr_at(99, PEAK, 100, 1000) == pytest.approx(PEAK)  # last warm-up step at the peak
    assert lr_at(100, PEAK, 100, 1000) == pytest.approx(PEAK)  # cosine starts at the peak
    warm = [lr_at(s, PEAK, 100, 1000) for s in range(100)]
    assert all(a < b for a, b in zip(warm, warm[1:], strict=False))


def test_cosine_endpoints_and_monotonic():
    assert lr_at(1000, PEAK, 100, 1000) == pytest.approx(0.1 * PEAK)
    assert lr_at(5000, PEAK, 100, 1000) == pytest.approx(0.1 * PEAK)
    assert lr_at(999, PEAK, 100, 1000) == pytest.approx(0.1 * PEAK, rel=1e-4)
    assert lr_at(550, PEAK, 100, 1000) == pytest.approx(0.55 * PEAK)  # midpoint: halfway to the floor
    decay = [lr_at(s, PEAK, 100, 1000) for s in range(100, 1001)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_at(1000, PEAK, 100, 1000, min_lr_ratio=0.0) == 0.0


def test_no_warmup_and_bad_args():
    assert lr_at(0, PEAK, 0, 10) == pytest.approx(PEAK)
    with pytest.raises(ConfigError, match="warmup_steps"):
        lr_at(0, PEAK, 11, 10)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        lr_at(0, PEAK, 1, 10, min_lr_ratio=2)


def test_plan_batch_arithmetic():
    p = plan_batch(8192, 128, micro_batch_size=16, world_size=1)
    assert (p.sequences_per_step, p.accum_steps, p.tokens_per_step) == (64, 4, 8192)
    p = plan_batch(8192, 128, micro_batch_size=8, world_size=2)
    assert (p.sequences_per_step, p.accum_steps, p.sequences_per_rank) == (64, 4, 32)
    # The batch is rounded to whole sequences only (not to micro-batches): 50 stays 50 (4 micro-batches,
    # the last of 2); 50.4 rounds down, 50.5 (half) up.
    p = plan_batch(50 * 128, 128, 16)
    assert (p.sequences_per_step, p.micro_batch_size, p.accum_steps) == (50, 16, 4)
    assert plan_batch(50 * 128 + 51, 128, 16).sequences_per_step == 50
    assert plan_batch(50 * 128 + 64, 128, 16).sequences_per_step == 51
    # Smaller than one micro-batch: the micro-batch (a ceiling) shrinks, the batch stays as asked.
    p = plan_batch(128, 128, 16)
    assert (p.sequences_per_step, p.micro_batch_size, p.accum_steps) == (1, 1, 1)
    p = plan_batch(1152, 288, 8)  # sweeps/batch.yaml's half batch at demo scale: 4 sequences
    assert (p.sequences_per_step, p.micro_batch_size, p.tokens_per_step) == (4, 4, 1152)
    p = plan_batch(3 * 128, 128, 4, world_size=2)  # 3 sequences over 2 ranks: 2 + 1, micro 2
    assert (p.sequences_per_step, p.sequences_per_rank, p.micro_batch_size) == (3, 2, 2)
    assert [p.rank_sequences(r) for r in range(2)] == [2, 1]
    with pytest.raises(ConfigError, match="batch_tokens"):
        plan_batch(127, 128, 1)
    with pytest.raises(ConfigError, match="one sequence per rank"):
        plan_batch(3 * 128, 128, 4, world_size=4)


def test_tokens_to_steps_ceil():
    assert tokens_to_steps(1000, 100) == 10
    assert tokens_to_steps(1001, 100) == 11
    assert tokens_to_steps(0, 100) == 0
    assert warmup_tokens_to_steps(250, 100) == 3
    with pytest.raises(ConfigError, match="warmup_tokens"):
        warmup_tokens_to_steps(2000, 100, total_steps=10)


def test_paper_numbers():
    """100B tokens, 1M-token batches, 1,152-token sequences, 2K warm-up steps, 64 GPUs.

    1M / 1152 = 868.06 sequences, rounded to 868 = 999,936 tokens per step whatever the ranks and the
    micro-batch, so 100B tokens take 100,007 steps and the paper's 2K warm-up steps (2B tokens at the
    nominal 1M) take 2,001. Over 64 ranks, 36 take 14 sequences and 28 take 13.
    """
    for world, micro in ((64, 1), (64, 7), (4, 1), (1, 8)):
        p = plan_batch(1_000_000, 1152, micro_batch_size=micro, world_size=world)
        assert (p.sequences_per_step, p.tokens_per_step) == (868, 999_936)
    p = plan_batch(1_000_000, 1152, micro_batch_size=1, world_size=64)
    assert (p.sequences_per_rank, p.accum_steps) == (14, 14)
    assert sorted({p.rank_sequences(r) for r in range(64)}) == [13, 14]
    assert sum(p.rank_sequences(r) for r in range(64)) == 868
    total = tokens_to_steps(100_000_000_000, p.tokens_per_step)
    assert total == 100_007
    assert warmup_tokens_to_steps(2_000 * 1_000_000, p.tokens_per_step, total) == 2_001
