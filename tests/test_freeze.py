"""Freeze presets (paper Fig. 6): exactly the intended parameters get gradients."""

from __future__ import annotations

import re

import pytest
import torch

from ablate.errors import ConfigError
from ablate.model.freeze import apply_trainable, positional_parameter_names, trainable_parameter_names
from ablate.model.transformer import ModelArgs, Transformer, count_parameters
from ablate.schema import TRAINABLE_PRESETS as PRESETS

NORM = re.compile(r"(^post_embed_norm\.|^norm\.|\.attention_norm\.|\.ffn_norm\.|\.q_norm\.|\.k_norm\.)")


def expected_names(names: list[str], preset: str, ffn: str = "swiglu") -> set[str]:
    """The preset's parameters by name pattern: an independent statement of the paper's
    settings (docs/PAPER.md, "The experiments")."""
    emb_out = {n for n in names if n.split(".")[0] in ("tok_embeddings", "output")}
    norms = {n for n in names if NORM.search(n)}
    half = {n for n in names if re.match(r"layers\.[01]\.", n)}  # 4 layers -> [0, 2)
    ffn_pat = r"\.feed_forward\." if ffn == "swiglu" else r"\.(_ff_w1|_ff_w2|feed_forward)\."
    ffns = {n for n in names if re.search(ffn_pat, n)}
    return {
        "all": set(names),
        "emb_out": emb_out,
        "emb_out_norm": emb_out | norms,
        "emb_out_norm_half": emb_out | norms | half,
        "emb_out_norm_ffn": emb_out | norms | ffns,
    }[preset]


def make(ffn: str = "swiglu", **kw) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs(
        hidden_dim=32,
        n_layers=4,
        n_heads=4,
        seq_len=16,
        vocab_size=30,
        qk_norm=True,
        post_embed_norm=True,
        ffn_type=ffn,
        **kw,
    )
    return Transformer(args)


@pytest.mark.parametrize("ffn", ["swiglu", "gelu"])
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_gradients(preset: str, ffn: str) -> None:
    model = make(ffn)
    names = [n for n, _ in model.named_parameters()]
    expected = expected_names(names, preset, ffn)
    assert set(trainable_parameter_names(model, preset)) == expected

    trainable, total = apply_trainable(model, preset)
    assert total == count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    ids = torch.randint(0, 30, (2, 8))
    model(ids).logsumexp(-1).mean().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == expected
    frozen = [p for n, p in model.named_parameters() if n not in expected]
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_tied_weights_counted_once() -> None:
    model = make(weight_tying=True)
    trainable, total = apply_trainable(model, "emb_out")
    assert trainable == 30 * 32
    assert total == count_parameters(model)
    assert trainable_parameter_names(model, "emb_out") == ["tok_embeddings.weight"]


def test_presets_are_cumulative_and_rotary_has_no_positional_parameters() -> None:
    model = make()
    sets = {p: set(trainable_parameter_names(model, p)) for p in PRESETS}
    assert sets["emb_out"] < sets["emb_out_norm"] < sets["emb_out_norm_half"] < sets["all"]
    assert sets["emb_out_norm"] < sets["emb_out_norm_ffn"] < sets["all"]
    assert positional_parameter_names(model) == []


def test_apply_trainable_can_unfreeze_again() -> None:
    model = make()
    apply_trainable(model, "emb_out")
    trainable, total = apply_trainable(model, "all")
    assert trainable == total


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="emb_out_norm_half"):
        apply_trainable(make(), "embeddings")
