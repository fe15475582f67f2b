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
    # 50 sequences requested, unit 16: nearest multiple is 48; 56 rounds (half) up to 64.
    assert plan_batch(50 * 128, 128, 16).sequences_per_step == 48
    assert plan_batch(56 * 128, 128, 16).sequences_per_step == 64
    # Smaller than one micro-batch: the micro-batch (a ceiling) shrinks, the batch stays as asked.
    p = plan_batch(128, 128, 16)
    assert (p.sequences_per_step, p.micro_batch_size, p.accum_steps) == (1, 1, 1)
    p = plan_batch(1152, 288, 8)  # sweeps/batch.yaml's half batch at demo scale: 4 sequences
    assert (p.sequences_per_step, p.micro_batch_size, p.tokens_per_step) == (4, 4, 1152)
    p = plan_batch(3 * 128, 128, 4, world_size=2)  # 1.5 per rank rounds to micro 2: 4 sequences
    assert (p.sequences_per_step, p.sequences_per_rank, p.micro_batch_size) == (4, 2, 2)
    with pytest.raises(ConfigError, match="batch_tokens"):
        plan_batch(127, 128, 1)


def test_tokens_to_steps_ceil():
    assert tokens_to_steps(1000, 100) == 10
    assert tokens_to_steps(1001, 100) == 11
    assert tokens_to_steps(0, 100) == 0
    assert warmup_tokens_to_steps(250, 100) == 3
    with pytest.raises(ConfigError, match="warmup_tokens"):
        warmup_tokens_to_steps(2000, 100, total_steps=10)


def test_paper_numbers():
    """100B tokens, 1M-token batches, 1,152-token sequences, 2K warm-up steps, 64 GPUs.

    1M / 1152 = 868.06 sequences. One sequence per GPU (unit 64) rounds to 896 sequences = 1,032,192
    tokens per step, so 100B tokens take 96,882 steps and the paper's 2K warm-up steps (2B tokens at the
    nominal 1M) take 1,938. With 4 ranks the rounding is to 868 sequences (999,936 tokens): 100,007 steps.
    """
    p = plan_batch(1_000_000, 1152, micro_batch_size=1, world_size=64)
    assert (p.sequences_per_step, p.accum_steps, p.tokens_per_step) == (896, 14, 1_032_192)
    total = tokens_to_steps(100_000_000_000, p.tokens_per_step)
    assert total == 96_882
    assert warmup_tokens_to_steps(2_000 * 1_000_000, p.tokens_per_step, total) == 1_938

    p4 = plan_batch(1_000_000, 1152, micro_batch_size=1, world_size=4)
    assert (p4.sequences_per_step, p4.tokens_per_step) == (868, 999_936)
    assert tokens_to_steps(100_000_000_000, p4.tokens_per_step) == 100_007
