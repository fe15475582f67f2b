"""The open_lm-architecture transformer: config, names, shapes, causality, rotary, init, FLOPs."""

from __future__ import annotations

import json
import math

import open_lm_configs
import pytest
import torch

from ablate.errors import AssetMissingError, ConfigError
from ablate.model.args import ffn_hidden_dim, flops_per_token, non_embedding_parameters
from ablate.model.transformer import ModelArgs, Rotary, Transformer, count_parameters, make_norm
from ablate.schema import NORMS

# The 1B config plus a key open_lm has that ablate does not read (MoE), which loading ignores.
OPEN_LM_1B = {**open_lm_configs.OPEN_LM_1B, "moe_freq": 0}


def tiny(**kw) -> ModelArgs:
    base = dict(hidden_dim=32, n_layers=2, n_heads=4, seq_len=16, vocab_size=50)
    return ModelArgs(**{**base, **kw})


def test_open_lm_1b_numbers_without_building() -> None:
    args = ModelArgs.from_dict(OPEN_LM_1B)
    assert ffn_hidden_dim(args) == 5632
    assert args.head_dim == 128
    # 24 * (4 D^2 + 3 D * 5632 + 4 D) + 2 D (final norm) + D * V (output)
    n = non_embedding_parameters(args)
    assert n == 24 * (4 * 2048**2 + 3 * 2048 * 5632 + 4 * 2048) + 2 * 2048 + 2048 * 50432
    assert flops_per_token(args) == 6 * n + 12 * 24 * 2048 * 2048
    assert ffn_hidden_dim(ModelArgs.from_dict({**OPEN_LM_1B, "ffn_type": "gelu"})) == 4 * 2048


def test_from_json_ignores_unknown_keys(tmp_path) -> None:
    p = tmp_path / "open_lm_1b.json"
    p.write_text(json.dumps(OPEN_LM_1B))
    args = ModelArgs.from_json(p)
    assert args.positional_embedding_type == "head_rotary"
    assert ModelArgs.from_dict(args.to_dict()) == args
    with pytest.raises(AssetMissingError, match="open_lm model config not found"):
        ModelArgs.from_json(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"hidden_dim": 30}, "model.hidden_dim"),  # not divisible by 4 heads
        ({"ffn_type": "moe"}, "model.ffn_type"),
        ({"model_norm": "lp_rms_norm"}, "model.model_norm"),  # open_lm has no such norm
        ({"positional_embedding_type": "alibi"}, "model.positional_embedding_type"),
        ({"n_layers": 0}, "model.n_layers"),
        ({"weight_tying": "yes"}, "model.weight_tying"),
        ({"hidden_dim": 36, "n_heads": 12}, "model.hidden_dim"),  # head_dim 3: rotary needs it even
    ],
)
def test_bad_config_values_raise_config_error(change: dict, key: str) -> None:
    d = {**tiny().to_dict(), **change}
    with pytest.raises(ConfigError) as e:
        ModelArgs.from_dict(d)
    assert e.value.key == key


def test_missing_required_key() -> None:
    d = tiny().to_dict()
    del d["n_heads"]
    with pytest.raises(ConfigError, match="n_heads"):
        ModelArgs.from_dict(d)


def test_parameter_names_match_open_lm() -> None:
    expected = {"tok_embeddings.weight", "norm.weight", "norm.bias", "output.weight"}
    for i in range(2):
        expected |= {
            f"layers.{i}.attention.in_proj.weight",
            f"layers.{i}.attention.out_proj.weight",
            f"layers.{i}.feed_forward.w12.weight",
            f"layers.{i}.feed_forward.w3.weight",
            f"layers.{i}.attention_norm.weight",
            f"layers.{i}.attention_norm.bias",
            f"layers.{i}.ffn_norm.weight",
            f"layers.{i}.ffn_norm.bias",
        }
    model = Transformer(tiny())
    assert set(model.state_dict()) == expected
    assert {n for n, _ in model.named_parameters()} == expected
    sd = model.state_dict()
    assert sd["layers.0.attention.in_proj.weight"].shape == (96, 32)
    assert sd["layers.0.feed_forward.w12.weight"].shape == (2 * 256, 32)  # ffn hidden rounds up to 256
    assert sd["layers.0.feed_forward.w3.weight"].shape == (32, 256)


def test_parameter_names_gelu_qk_norm_post_embed_gain_only() -> None:
    args = tiny(ffn_type="gelu", qk_norm=True, post_embed_norm=True, model_norm="gain_only_layer_norm")
    expected = {"post_embed_norm.weight", "tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(2):
        for name in ("attention.in_proj", "attention.out_proj", "attention.q_norm", "attention.k_norm"):
            expected.add(f"layers.{i}.{name}.weight")
        # open_lm registers the GELU FFN linears twice: as _ff_w1/_ff_w2 and inside feed_forward.
        for name in ("_ff_w1", "_ff_w2", "feed_forward.0", "feed_forward.2", "attention_norm", "ffn_norm"):
            expected.add(f"layers.{i}.{name}.weight")
    assert set(Transformer(args).state_dict()) == expected


def test_forward_shape_and_float_logits() -> None:
    model = Transformer(tiny())
    logits = model(torch.randint(0, 50, (3, 7)))
    assert logits.shape == (3, 7, 50)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("pe", ["rotary", "head_rotary", "none"])
def test_causal(pe: str) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny(positional_embedding_type=pe, qk_norm=True)).eval()
    ids = torch.randint(0, 50, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rotary_scores_depend_on_relative_position_only() -> None:
    rot = Rotary(head_dim=8, by_head=False)
    q = torch.randn(1, 1, 1, 8).expand(1, 12, 1, 8)  # the same vector at every position
    k = torch.randn(1, 1, 1, 8).expand(1, 12, 1, 8)
    rq, rk = rot(q, k)
    scores = (rq[0, :, 0] @ rk[0, :, 0].T).tril()  # (T, T), [m, n] = <q_m, k_n>
    for offset in range(4):
        diag = torch.diagonal(scores, -offset)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-5)
    assert not torch.allclose(scores[5, 5], scores[5, 2])  # and it does depend on the offset


def test_head_rotary_acts_as_no_position() -> None:
    # open_lm's head_rotary rotates by head index, equally for q and k: scores are unchanged.
    torch.manual_seed(0)
    head = Transformer(tiny(positional_embedding_type="head_rotary"))
    none = Transformer(tiny(positional_embedding_type="none"))
    none.load_state_dict(head.state_dict())
    rot = Transformer(tiny(positional_embedding_type="rotary"))
    rot.load_state_dict(head.state_dict())
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.allclose(head(ids), none(ids), atol=1e-5)
        assert not torch.allclose(rot(ids), none(ids), atol=1e-3)
    # ...but q and k themselves are rotated, by head: head 0 is untouched, head 1 is not.
    q = torch.randn(1, 3, 4, 8)
    rq, _ = Rotary(8, by_head=True)(q, q)
    assert torch.allclose(rq[:, :, 0], q[:, :, 0]) and not torch.allclose(rq[:, :, 1], q[:, :, 1])


def test_init_scheme() -> None:
    torch.manual_seed(0)
    args = ModelArgs(hidden_dim=64, n_layers=4, n_heads=4, seq_len=16, vocab_size=2000)
    model = Transformer(args)
    std = 1 / math.sqrt(64)
    emb = model.tok_embeddings.weight
    # Truncating a normal at +-3 std shrinks its std by a factor 0.9866.
    assert abs(emb.std().item() - std * 0.9866) < 0.003
    assert emb.abs().max() <= 3 * std
    for i, layer in enumerate(model.layers):
        out_std = std / math.sqrt(2 * (i + 1))
        assert layer.attention.out_proj.weight.abs().max() <= 3 * out_std + 1e-7
        w3_std = 1 / math.sqrt(ffn_hidden_dim(args)) / math.sqrt(2 * (i + 1))
        assert layer.feed_forward.w3.weight.abs().max() <= 3 * w3_std + 1e-7
    assert torch.equal(model.norm.weight, torch.ones(64)) and torch.equal(model.norm.bias, torch.zeros(64))


def test_parameter_counts_and_tying() -> None:
    for kw in ({}, {"weight_tying": True}, {"ffn_type": "gelu", "qk_norm": True, "model_norm": "rms_norm"}):
        args = tiny(**kw)
        model = Transformer(args)
        embedding = 0 if args.weight_tying else args.vocab_size * args.hidden_dim
        assert count_parameters(model) == non_embedding_parameters(args) + embedding
    tied = Transformer(tiny(weight_tying=True))
    assert tied.tok_embeddings.weight is tied.output.weight
    tied.tok_embeddings.weight.requires_grad_(False)
    assert count_parameters(tied, trainable_only=True) == count_parameters(tied) - 50 * 32


def test_rotary_buffer_not_in_state_dict_but_moves_with_model() -> None:
    model = Transformer(tiny())
    assert "layers.0.attention.pos_embed.inv_freq" in dict(model.named_buffers())
    assert not any("inv_freq" in k for k in model.state_dict())


# The parameters of each open_lm norm (open_lm/norms.py get_norm_class): torch's LayerNorm for
# default_layer_norm, its own LayerNorm/LPLayerNorm with elementwise_gain/elementwise_bias for the others
# (absent ones registered as None, so not in the state dict), RmsNorm with a weight.
OPEN_LM_NORM_PARAMS = {
    "default_layer_norm": {"weight", "bias"},
    "lp_layer_norm": {"weight", "bias"},
    "gain_only_layer_norm": {"weight"},
    "gain_only_lp_layer_norm": {"weight"},
    "no_wb_layer_norm": set(),
    "rms_norm": {"weight"},
}
LP_TWINS = {"lp_layer_norm": "default_layer_norm", "gain_only_lp_layer_norm": "gain_only_layer_norm"}


def test_every_open_lm_norm_is_a_choice() -> None:
    assert set(NORMS) == set(OPEN_LM_NORM_PARAMS)


@pytest.mark.parametrize("norm", NORMS)
def test_each_norm_builds_with_open_lm_parameter_names(norm: str) -> None:
    args = tiny(model_norm=norm, qk_norm=True, post_embed_norm=True)
    assert set(make_norm(args).state_dict()) == OPEN_LM_NORM_PARAMS[norm]
    model = Transformer(args)
    names = set(model.state_dict())
    for prefix in ("post_embed_norm", "norm", "layers.1.attention_norm", "layers.0.attention.q_norm"):
        assert {n.removeprefix(prefix + ".") for n in names if n.startswith(prefix + ".")} == (
            OPEN_LM_NORM_PARAMS[norm]
        )
    assert count_parameters(model) == non_embedding_parameters(args) + 50 * 32
    out = model(torch.randint(0, 50, (2, 5)))
    assert out.shape == (2, 5, 50) and torch.isfinite(out).all()


@pytest.mark.parametrize(("lp", "twin"), sorted(LP_TWINS.items()))
def test_lp_norm_is_its_twin(lp: str, twin: str) -> None:
    torch.manual_seed(0)
    a = Transformer(tiny(model_norm=lp, qk_norm=True))
    b = Transformer(tiny(model_norm=twin, qk_norm=True))
    assert list(a.state_dict()) == list(b.state_dict())
    # Non-trivial norm parameters, so a norm that ignored them would show.
    with torch.no_grad():
        for name, p in a.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    b.load_state_dict(a.state_dict())  # strict: the same names and shapes
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(a(ids), b(ids))


def test_no_wb_layer_norm_has_no_parameters_and_normalises() -> None:
    norm = make_norm(tiny(model_norm="no_wb_layer_norm"))
    assert not list(norm.parameters())
    y = norm(torch.randn(3, 32) * 5 + 2)
    assert torch.allclose(y.mean(-1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(-1, unbiased=False), torch.ones(3), atol=1e-3)
