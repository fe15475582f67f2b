"""The real training loop on CPU: it learns, logs the split, and resumes exactly after an interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ablate.data.sequence import VocabLayout, layout_t2i
from ablate.data.shards import ShardDataset, ShardWriter
from ablate.errors import StopRequested
from ablate.model.transformer import ModelArgs, Transformer
from ablate.rundir import RunDir
from ablate.schema import OptimConfig, TrainConfig
from ablate.train.loop import LogMetrics, train_loop

LAYOUT = VocabLayout(text_vocab_size=32, codebook_size=16)
SEQ = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Captions determine the image codes, so there is something to learn."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("shards")
    with ShardWriter(out, seq_len=SEQ, vocab_size=LAYOUT.size, sequences_per_shard=50) as w:
        for _ in range(160):
            caption = rng.integers(0, 32, size=rng.integers(2, 6))
            codes = (np.repeat(caption[:1], 25) + np.arange(25)) % 16
            w.add(layout_t2i(caption, codes, LAYOUT, SEQ))
        w.finish({"vocab": LAYOUT.to_dict()})
    return ShardDataset(out)


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(hidden_dim=32, n_layers=2, n_heads=2, seq_len=SEQ, vocab_size=LAYOUT.size))


def loop_config(
    lr: float = 3e-3, warmup_tokens: int = SEQ * 8 * 2, **train
) -> tuple[TrainConfig, OptimConfig]:
    """The train and optim sections the loop reads (train.* overridable by keyword)."""
    base = dict(
        total_tokens=SEQ * 8 * 12,
        batch_tokens=SEQ * 8,
        micro_batch_size=4,
        checkpoint_every_tokens=SEQ * 8 * 5,
        seed=1,
        precision="float32",
    )
    return TrainConfig(**{**base, **train}), OptimConfig(lr=lr, warmup_tokens=warmup_tokens)


def sink(out_dir) -> LogMetrics:
    """The stage's sink without a tracker: rows into out_dir/metrics.jsonl (the first value of a step)."""
    log = RunDir(out_dir).metrics_log()
    return lambda metrics, step: log.append(step, metrics)


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_loop_learns_and_logs_every_step_once(dataset, tmp_path):
    final = train_loop(model(), dataset, LAYOUT, *loop_config(), tmp_path, sink(tmp_path))
    logged = rows(tmp_path)
    assert [r["step"] for r in logged] == list(range(1, 13))
    assert logged[-1]["loss"] < logged[0]["loss"] - 0.5
    for r in logged:
        assert {"loss", "text_loss", "image_loss", "perplexity", "lr", "tokens", "tokens_per_s"} <= set(r)
        assert r["perplexity"] == pytest.approx(np.exp(r["loss"]), rel=1e-6)
        assert min(r["text_loss"], r["image_loss"]) <= r["loss"] <= max(r["text_loss"], r["image_loss"])
    assert logged[-1]["tokens"] == 12 * SEQ * 8
    assert final["loss"] == logged[-1]["loss"]
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["step"] == progress["total_steps"] == 12


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_interrupted_run_resumes_to_the_same_curve(dataset, tmp_path, dropout):
    straight = tmp_path / "straight"
    train_loop(model(), dataset, LAYOUT, *loop_config(caption_dropout=dropout), straight, sink(straight))

    broken = tmp_path / "broken"
    calls = {"n": 0}

    def stop_at_7() -> bool:
        calls["n"] += 1
        return calls["n"] == 7

    with pytest.raises(StopRequested):
        train_loop(
            model(),
            dataset,
            LAYOUT,
            *loop_config(caption_dropout=dropout),
            broken,
            sink(broken),
            should_stop=stop_at_7,
        )
    assert [r["step"] for r in rows(broken)] == list(range(1, 8))
    # A fresh process would rebuild the model from scratch; the checkpoint restores everything else.
    train_loop(model(), dataset, LAYOUT, *loop_config(caption_dropout=dropout), broken, sink(broken))
    a, b = rows(straight), rows(broken)
    assert [r["step"] for r in b] == list(range(1, 13))  # no duplicate steps
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6)
        assert rb["image_loss"] == pytest.approx(ra["image_loss"], abs=1e-6)


def test_caption_dropout_trains_that_share_of_sequences_on_the_empty_caption(dataset, tmp_path):
    """What the model is fed: about 30% of rows <doc> <text> </text> <image>..., the others as stored."""
    net, fed = model(), []
    net.register_forward_pre_hook(lambda _m, args: fed.append(args[0].clone()))
    train_loop(net, dataset, LAYOUT, *loop_config(caption_dropout=0.3), tmp_path, sink(tmp_path))
    inputs = torch.cat(fed)  # (12 steps x 8 sequences, SEQ - 1)
    empty = (inputs[:, 2] == LAYOUT.text_end) & (inputs[:, 3] == LAYOUT.image)
    assert 0.15 < float(empty.float().mean()) < 0.45
    assert bool((LAYOUT.is_text(inputs[~empty]).sum(dim=1) >= 2).all())  # kept rows keep their caption


def test_crash_between_checkpoints_drops_the_unsaved_steps(dataset, tmp_path):
    """Steps logged after the last checkpoint are recomputed, never duplicated."""
    calls = {"n": 0}

    def crash() -> bool:
        calls["n"] += 1
        if calls["n"] == 8:  # after step 8; the last checkpoint was at step 5
            raise RuntimeError("node lost")
        return False

    with pytest.raises(RuntimeError):
        train_loop(model(), dataset, LAYOUT, *loop_config(), tmp_path, sink(tmp_path), should_stop=crash)
    assert len(rows(tmp_path)) == 8
    train_loop(model(), dataset, LAYOUT, *loop_config(), tmp_path, sink(tmp_path))
    assert [r["step"] for r in rows(tmp_path)] == list(range(1, 13))


def test_frozen_parameters_do_not_move(dataset, tmp_path):
    from ablate.model.freeze import apply_trainable

    m = model()
    apply_trainable(m, "emb_out")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train_loop(m, dataset, LAYOUT, *loop_config(total_tokens=SEQ * 8 * 3), tmp_path, sink(tmp_path))
    for n, p in m.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n.startswith("tok_embeddings") or n.startswith("output")), n


def test_a_text_only_run_logs_no_image_loss(tmp_path):
    """A loss over no tokens of a type is not 0 (a perfect score): the pretrain LM logs no image_loss."""
    rng = np.random.default_rng(1)
    with ShardWriter(tmp_path / "text", seq_len=SEQ, vocab_size=LAYOUT.size, sequences_per_shard=50) as w:
        for _ in range(40):
            w.add(rng.integers(0, LAYOUT.text_vocab_size, SEQ))  # text ids only, as pretrain's shards
        w.finish({"vocab": LAYOUT.to_dict()})
    cfg = loop_config(total_tokens=SEQ * 8 * 2, checkpoint_every_tokens=0)
    train_loop(
        model(), ShardDataset(tmp_path / "text"), LAYOUT, *cfg, tmp_path / "run", sink(tmp_path / "run")
    )
    for r in rows(tmp_path / "run"):
        assert "text_loss" in r and "image_loss" not in r
