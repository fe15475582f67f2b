"""Batch planning over ranks, and the cost estimate of an arm (paper arm on 8 x 8 A100s; CPU arms)."""

from __future__ import annotations

import itertools
import math

import pytest

from ablate.config.compose import compose_config, to_run_config
from ablate.config.validate import validate
from ablate.errors import ConfigError
from ablate.launch.estimate import (
    A100_BF16_PEAK_FLOPS,
    estimate_arm,
    estimate_table,
)
from ablate.train.schedule import closest_micro_batch_size, plan_batch, tokens_to_steps

PAPER = [
    "scale=paper",
    "cluster=slurm_a100",
    "model.checkpoint=/x/epoch_1.pt",
    "tokenizer.text_path=/x/tokenizer.json",
    "tokenizer.image_path=/x/movq",
]


def config(*overrides: str):
    cfg = to_run_config(compose_config(list(overrides)))
    validate(cfg)
    return cfg


# --- plan_batch with a world size ---------------------------------------------------------------------------


@pytest.mark.parametrize(("world", "accum"), [(1, 16), (2, 8), (4, 4), (16, 1)])
def test_global_batch_is_the_same_whatever_the_ranks(world, accum):
    p = plan_batch(8192, 128, micro_batch_size=4, world_size=world)
    assert (p.tokens_per_step, p.sequences_per_step, p.accum_steps) == (8192, 64, accum)
    assert p.sequences_per_rank * world == 64 and p.deviation == 0.0 and p.requested_tokens == 8192


def test_rounding_is_to_whole_sequences_whatever_the_micro_batch_and_ranks():
    for tokens, seq_len in itertools.product((10_000, 65_536, 1_000_000), (100, 1152)):
        sequences = None
        for micro, world in itertools.product((1, 3, 8), (1, 4, 64)):
            if round(tokens / seq_len) < world:  # fewer sequences than ranks: a ConfigError
                with pytest.raises(ConfigError, match="one sequence per rank"):
                    plan_batch(tokens, seq_len, micro, world)
                continue
            p = plan_batch(tokens, seq_len, micro, world)
            sequences = sequences or p.sequences_per_step
            assert p.sequences_per_step == sequences  # the same global batch for every micro and world
            assert abs(p.sequences_per_step - tokens / seq_len) <= 0.5
            assert 1 <= p.micro_batch_size <= micro
            assert sum(p.rank_sequences(r) for r in range(world)) == p.sequences_per_step
            assert max(p.rank_sequences(r) for r in range(world)) == p.sequences_per_rank
            assert p.accum_steps == math.ceil(p.sequences_per_rank / p.micro_batch_size)


def test_paper_batch_on_64_ranks():
    # 1,000,000 / 1152 = 868.06 sequences -> 868 whatever the micro-batch; 13 or 14 per rank.
    for micro in (7, 8):
        p = plan_batch(1_000_000, 1152, micro_batch_size=micro, world_size=64)
        assert (p.sequences_per_step, p.accum_steps, p.tokens_per_step) == (868, 2, 999_936)
        assert p.deviation == pytest.approx(999_936 / 1e6 - 1)
    assert closest_micro_batch_size(1_000_000, 1152, 8, world_size=64) == 8
    # One rank, micro 8: 868 / 8 = 108.5 -> 109 micro-batches, the last of 4.
    p1 = plan_batch(1_000_000, 1152, micro_batch_size=8)
    assert (p1.sequences_per_step, p1.accum_steps) == (868, 109)


def test_closest_micro_batch_is_the_ceiling_since_the_batch_no_longer_depends_on_it():
    assert closest_micro_batch_size(8192, 128, 16) == 16
    assert closest_micro_batch_size(8192, 128, 12, world_size=2) == 12
    assert closest_micro_batch_size(8192, 128, 1) == 1


# --- estimate_arm ---------------------------------------------------------------------------------------------


def open_lm_1b_matmul_params(vocab: int) -> int:
    """By hand: 24 layers of (attention 4 d^2, SwiGLU 3 d 5632, two LayerNorms with bias 4 d), the final
    LayerNorm (2 d) and the untied output layer (d x vocab); the input embedding is a lookup."""
    d, ffn, layers = 2048, 5632, 24
    return layers * (4 * d * d + 3 * d * ffn + 4 * d) + 2 * d + d * vocab


def test_paper_arm_on_slurm_a100():
    e = estimate_arm(config(*PAPER, "train.micro_batch_size=8"))
    assert (e.nodes, e.gpus_per_node, e.gpus, e.world_size) == (8, 8, 64, 64)
    assert (e.micro_batch_size, e.accum_steps, e.sequences_per_step) == (8, 2, 868)
    assert e.tokens_per_step == 868 * 1152 == 999_936
    assert e.steps == math.ceil(100e9 / 999_936) == 100_007  # 1M asked, rounded to whole sequences
    assert e.tokens == e.steps * e.tokens_per_step and 100e9 <= e.tokens < 100e9 + e.tokens_per_step
    assert e.suggested_micro_batch_size == 8

    vocab = 50_432 + 7 + 16_384
    assert e.vocab_size == vocab == 66_823
    n = open_lm_1b_matmul_params(vocab)
    assert e.matmul_parameters == n  # ~1.37B
    attention = 12 * 24 * 2048 * 1152  # QK^T and AV over the full context
    assert e.flops_per_token == pytest.approx(6 * n + attention)
    # Within a few % of the 6 x parameters rule of thumb, counting all ~1.51B parameters.
    total_params = n + 2048 * vocab
    assert 1.45e9 < total_params < 1.55e9
    assert e.flops_per_token == pytest.approx(6 * total_params, rel=0.03)

    # GPU-hours from independent round numbers: ~8.9 GFLOP/token x 100B tokens at 40% of 312 TFLOP/s.
    by_hand = 8.9e9 * 100e9 / (312e12 * 0.40) / 3600  # ~1,981
    assert e.gpu_hours == pytest.approx(by_hand, rel=0.01)
    assert 1_500 < e.gpu_hours < 2_500
    assert e.wall_hours == pytest.approx(e.gpu_hours / 64) and 25 < e.wall_hours < 40
    assert (e.mfu, e.peak_flops) == (0.40, A100_BF16_PEAK_FLOPS) == (0.40, 312e12)


def test_the_estimate_takes_its_mfu_from_the_config():
    base = estimate_arm(config(*PAPER))
    half = estimate_arm(config(*PAPER, "cluster.mfu=0.2"))
    assert half.mfu == 0.2 and half.gpu_hours == pytest.approx(2 * base.gpu_hours)
    with pytest.raises(ConfigError, match="cluster.mfu"):
        config(*PAPER, "cluster.mfu=40")


def test_paper_scale_default_micro_7_gives_the_same_batch():
    e = estimate_arm(config(*PAPER))  # conf/train/paper.yaml: micro_batch_size 7
    assert (e.tokens_per_step, e.micro_batch_size, e.accum_steps) == (999_936, 7, 2)
    assert e.steps == tokens_to_steps(100_000_000_000, 999_936) == 100_007


def test_cpu_clusters_give_steps_and_no_gpu_hours():
    for cluster in ("local", "debug", "slurm"):
        e = estimate_arm(config(f"cluster={cluster}"))
        assert (e.gpus, e.world_size) == (0, 1)
        assert e.gpu_hours is None and e.wall_hours is None
        assert (e.tokens_per_step, e.micro_batch_size, e.accum_steps) == (1152, 4, 1)
        assert e.steps == math.ceil(1_000_000 / 1152) == 869  # conf/train/demo.yaml
        assert e.flops_per_token > 0


def test_estimate_table_rows_total_and_assumptions():
    micro8 = (*PAPER, "train.micro_batch_size=8")  # the micro-batch no longer changes the batch
    paper = config(*micro8)
    rows = [
        ("init=pretrained", paper),
        ("init=random", config(*micro8, "model.init=random")),
        ("top_k=5", config(*micro8, "evaluate.top_k=5")),  # sampling only: shares the train job
    ]
    text = estimate_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["arm", "cluster"]
    assert any(line.startswith("init=pretrained") and "slurm 8x8 GPU" in line for line in lines)
    assert any(line.startswith("top_k=5 (= init=pretrained)") for line in lines)
    total = next(line for line in lines if line.startswith("total"))
    assert "2 train job(s)" in total
    one = estimate_arm(paper).gpu_hours
    assert f"{2 * one:,.0f}" in total and "200.0B" in total
    assert "MFU 0.40" in text and "312 TFLOP/s" in text
    # 999,936 tokens is -0.006% off the 1M asked: nothing to flag.
    assert "999,936 (-0.0%)" in text and "note:" not in text
    assert "partly frozen" not in text
    assert "pretrain" in text  # the footer says the LM is a given checkpoint


def test_estimate_table_says_frozen_arms_are_an_upper_bound():
    text = estimate_table([("emb_out", config(*PAPER, "train.trainable=emb_out"))])
    assert "partly frozen" in text and "upper bound" in text


def test_estimate_table_on_cpu_has_no_gpu_hours():
    text = estimate_table([("demo", config())])
    row = next(line for line in text.splitlines() if line.startswith("demo"))
    assert "local (CPU)" in row and row.rstrip().endswith("-")
    assert "note:" not in text


def test_estimate_table_flags_a_batch_far_from_whole_sequences():
    text = estimate_table([("tiny", config("train.batch_tokens=400"))])  # 1.39 sequences of 288 -> 1
    assert "note: tiny: effective batch 288 tokens is -28.0% off train.batch_tokens=400" in text
    assert "would give" not in text  # no micro-batch would do better: it does not change the batch


def test_pretokenization_estimate_at_paper_scale_from_a_brace_pattern_without_the_data():
    from ablate.config.compose import compose_config, to_run_config
    from ablate.launch.estimate import (
        A100_FP32_PEAK_FLOPS,
        ASSUMED_ENCODE_UTILIZATION,
        MOVQGAN_ENCODE_FLOPS,
        pretokenize_lines,
    )

    cfg = to_run_config(
        compose_config(
            [
                "scale=paper",
                "cluster=slurm_a100",
                "data=webdataset",
                "data.path='/nowhere/{00000..13399}.tar'",
                "model.checkpoint=/x.pt",
                "tokenizer.image_path=/m",
                "tokenizer.text_path=/t.json",
            ]
        )
    )
    (line,) = pretokenize_lines([("a", cfg), ("b", cfg)])  # one prepare job for both arms
    gpu_h = 134_000_000 * MOVQGAN_ENCODE_FLOPS / (A100_FP32_PEAK_FLOPS * ASSUMED_ENCODE_UTILIZATION) / 3600
    assert "13,400 units" in line and "134.0M images" in line and f"{gpu_h:,.0f} GPU-h" in line
    assert "assumed" in line and "8 unit(s) at once" in line
    demo = to_run_config(compose_config([]))
    assert pretokenize_lines([("demo", demo)]) == []  # synthetic data: prepare is one job, nothing to say
