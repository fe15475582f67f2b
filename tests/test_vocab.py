"""Vocabulary widening: pretrained rows bit-exact, new rows by mode, tying kept."""

from __future__ import annotations

import math

import pytest
import torch

from ablate.errors import ConfigError
from ablate.model.transformer import ModelArgs, Transformer
from ablate.model.vocab import expand_rows, expand_vocab


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(hidden_dim=64, n_layers=1, n_heads=4, seq_len=16, vocab_size=40, **kw))


def test_expand_rows_random_follows_open_lm_init() -> None:
    w = torch.randn(10, 64)
    out = expand_rows(w, 4010, "random", torch.Generator().manual_seed(0))
    assert out.shape == (4010, 64)
    assert torch.equal(out[:10], w)
    std = 1 / math.sqrt(64)
    new = out[10:]
    assert abs(new.std().item() - std * 0.9866) < 0.002  # +-3 std truncation
    assert abs(new.mean().item()) < 0.002
    assert new.abs().max().item() <= 3 * std
    # Deterministic given the generator.
    again = expand_rows(w, 4010, "random", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_expand_rows_mean_is_exact_and_pure() -> None:
    w = torch.randn(10, 8, dtype=torch.float64)
    before = w.clone()
    state = torch.random.get_rng_state()
    out = expand_rows(w, 13, "mean")
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing random drawn
    assert torch.equal(out[:10], w) and torch.equal(w, before)
    assert out.dtype == torch.float64
    for row in out[10:]:
        assert torch.equal(row, w.mean(dim=0))


def test_expand_rows_errors() -> None:
    w = torch.zeros(5, 4)
    with pytest.raises(ConfigError, match="random, mean"):
        expand_rows(w, 8, "zeros")
    with pytest.raises(ConfigError, match=">= the current vocabulary size"):
        expand_rows(w, 4, "mean")
    assert torch.equal(expand_rows(w, 5, "random"), w)


@pytest.mark.parametrize("mode", ["random", "mean"])
def test_expand_vocab_untied(mode: str) -> None:
    model = tiny()
    emb, out = model.tok_embeddings.weight.detach().clone(), model.output.weight.detach().clone()
    expand_vocab(model, 55, mode, generator=torch.Generator().manual_seed(1))
    assert model.args.vocab_size == 55
    assert model.tok_embeddings.num_embeddings == 55 and model.output.out_features == 55
    assert torch.equal(model.tok_embeddings.weight[:40], emb)
    assert torch.equal(model.output.weight[:40], out)
    names = {n for n, _ in model.named_parameters()}
    assert "tok_embeddings.weight" in names and "output.weight" in names
    if mode == "mean":
        assert torch.equal(model.tok_embeddings.weight[40:], emb.mean(0).expand(15, -1))
        assert torch.equal(model.output.weight[40:], out.mean(0).expand(15, -1))
    else:
        assert not torch.equal(model.tok_embeddings.weight[40:], model.output.weight[40:])
    logits = model(torch.tensor([[0, 54, 41]]))
    assert logits.shape == (1, 3, 55)


def test_expand_vocab_tied_stays_tied_and_rows_overwrite() -> None:
    model = tiny(weight_tying=True)
    emb = model.tok_embeddings.weight.detach().clone()
    block = torch.full((5, 64), 0.5)
    expand_vocab(model, 60, "random", rows={50: block})
    assert model.tok_embeddings.weight is model.output.weight
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})
    assert torch.equal(model.tok_embeddings.weight[:40], emb)
    assert torch.equal(model.output.weight[50:55], block)
    assert not torch.equal(model.tok_embeddings.weight[40:50], torch.full((10, 64), 0.5))


def test_expand_vocab_keeps_requires_grad_and_validates() -> None:
    model = tiny()
    model.output.weight.requires_grad_(False)
    expand_vocab(model, 45, "mean")
    assert not model.output.weight.requires_grad and model.tok_embeddings.weight.requires_grad
    with pytest.raises(ConfigError):
        expand_vocab(model, 44, "mean")
    with pytest.raises(ConfigError, match="rows"):
        expand_vocab(model, 50, "mean", rows={48: torch.zeros(5, 64)})  # runs past the end
    with pytest.raises(ConfigError, match="rows"):
        expand_vocab(model, 50, "mean", rows={45: torch.zeros(2, 63)})  # wrong width
