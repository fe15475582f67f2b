"""model.config_json: the architecture from an open_lm model-config JSON, in the model and in stage keys."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from open_lm_configs import OPEN_LM_1B

from ablate.config.compose import compose_config, to_run_config
from ablate.config.validate import validate
from ablate.errors import ConfigError
from ablate.model.args import open_lm_arch
from ablate.model.transformer import ModelArgs, Transformer
from ablate.schema import RunConfig
from ablate.stages import names
from ablate.stages.common import arch_config, model_args
from ablate.stages.plan import plan_stages

TINY = {
    "hidden_dim": 16,
    "n_layers": 2,
    "n_heads": 2,
    "seq_len": 16,
    "vocab_size": 300,
    "post_embed_norm": True,
    "weight_tying": False,
    "model_norm": "gain_only_lp_layer_norm",
    "ffn_type": "gelu",
    "qk_norm": True,
}
# A demo arm small enough to plan; the tokenizer's and model's text vocabularies match TINY's vocab_size.
SMALL = ["tokenizer.text_vocab_size=300", "model.text_vocab_size=300"]


def write(path: Path, d: dict[str, Any]) -> Path:
    path.write_text(json.dumps(d, indent=2))
    return path


def run_config(*overrides: str) -> RunConfig:
    return to_run_config(compose_config([*SMALL, *overrides]))


def keys(cfg: RunConfig) -> dict[str, str]:
    return {s.name: s.key for s in plan_stages(cfg)}


def test_open_lm_1b_json_gives_its_architecture(tmp_path: Path) -> None:
    arch = open_lm_arch(write(tmp_path / "open_lm_1b.json", OPEN_LM_1B))
    assert arch == {**{k: v for k, v in OPEN_LM_1B.items() if k != "seq_len"}, "norm_eps": 1e-5}
    # The file as open_lm ships it (no model_norm, ...): open_lm's defaults fill in.
    bare = {k: OPEN_LM_1B[k] for k in list(OPEN_LM_1B)[:7]}
    arch = open_lm_arch(write(tmp_path / "bare.json", bare))
    assert (arch["model_norm"], arch["ffn_type"], arch["positional_embedding_type"]) == (
        "default_layer_norm",
        "swiglu",
        "rotary",
    )
    assert arch["qk_norm"] is False


def test_tiny_json_builds_the_model_through_model_args(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.json", TINY)
    cfg = run_config(f"model.config_json={path}", "data.seq_len=300")
    validate(cfg)
    args = model_args(cfg, 300 + 7 + 256)
    expected = {k: v for k, v in TINY.items() if k not in ("seq_len", "vocab_size")}
    assert {k: getattr(args, k) for k in expected} == expected
    # seq_len is the run's, not the file's; the vocabulary is the one asked for.
    assert (args.seq_len, args.vocab_size) == (300, 300 + 7 + 256)
    # The model.* fields (model=tiny: hidden 128, 4 layers) are not used.
    assert (cfg.model.hidden_dim, cfg.model.n_layers) == (128, 4)
    model = Transformer(args)
    assert "layers.1._ff_w1.weight" in model.state_dict()
    assert "post_embed_norm.weight" in model.state_dict()
    assert "norm.bias" not in model.state_dict()  # gain-only
    defaults = {"positional_embedding_type": "rotary", "norm_eps": 1e-5}
    assert arch_config(cfg) == {"text_vocab_size": 300, **expected, **defaults}


def test_ablate_model_config_json_round_trips(tmp_path: Path) -> None:
    # What train_and_save writes next to model.pt (asdict of ModelArgs) reads back unchanged, norm_eps too.
    args = ModelArgs(hidden_dim=16, n_layers=1, n_heads=2, seq_len=300, vocab_size=300, norm_eps=1e-6)
    cfg = run_config(f"model.config_json={write(tmp_path / 'model_config.json', asdict(args))}")
    assert model_args(cfg, 300) == ModelArgs(**{**asdict(args), "seq_len": cfg.data.seq_len})


def test_changing_the_file_changes_pretrain_and_train_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.json", TINY)
    cfg = run_config(f"model.config_json={path}")
    before = keys(cfg)
    assert names.PRETRAIN in before  # the demo arm pretrains its LM
    write(path, {**TINY, "n_layers": 3})
    after = keys(cfg)
    assert after[names.PRETRAIN] != before[names.PRETRAIN]
    assert after[names.TRAIN] != before[names.TRAIN]
    # Stages that do not build the model keep their keys.
    assert after[names.SYNTH] == before[names.SYNTH]
    # A key the architecture does not read (seq_len: data.seq_len's) or the layout of the file: no change.
    write(path, {**TINY, "seq_len": 4096})
    assert keys(cfg) == before
    path.write_text(json.dumps(TINY))
    assert keys(cfg) == before


def test_the_pretrain_key_hashes_content_not_path(tmp_path: Path) -> None:
    a = run_config(f"model.config_json={write(tmp_path / 'a.json', TINY)}")
    b = run_config(f"model.config_json={write(tmp_path / 'b.json', TINY)}")
    assert keys(a)[names.PRETRAIN] == keys(b)[names.PRETRAIN]


def test_changing_the_file_changes_the_train_key_without_pretrain(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.json", TINY)
    cfg = run_config(f"model.config_json={path}", "model.init=random")
    before = keys(cfg)
    assert names.PRETRAIN not in before
    write(path, {**TINY, "n_layers": 3})
    assert keys(cfg)[names.TRAIN] != before[names.TRAIN]


def test_ignored_and_equivalent_keys(tmp_path: Path) -> None:
    base = open_lm_arch(write(tmp_path / "base.json", TINY))
    same = {
        **TINY,
        "seq_len": 99,
        "moe_freq": 0,
        "moe_num_experts": 8,  # MoE settings without MoE layers (moe_freq 0)
        "moe_top_k": 2,
        "attn_name": "torch_attn",  # a kernel of the same softmax attention
        "attn_activation": None,
    }
    assert open_lm_arch(write(tmp_path / "same.json", same)) == base
    swiglu = open_lm_arch(write(tmp_path / "s.json", {**TINY, "ffn_type": "swiglu"}))
    torch_swiglu = open_lm_arch(write(tmp_path / "st.json", {**TINY, "ffn_type": "swiglu_torch"}))
    assert torch_swiglu == swiglu
    old = {**OPEN_LM_1B, "rotary_old": True}  # old open_lm's spelling of head_rotary
    assert open_lm_arch(write(tmp_path / "old.json", old))["positional_embedding_type"] == "head_rotary"


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ["no such file"]),
        ("{not json", ["not readable JSON"]),
        ("[1, 2]", ["holds a list"]),
        ({k: v for k, v in TINY.items() if k != "n_heads"}, ["'n_heads'", "has none"]),
        ({**TINY, "n_heads": 3}, ["'hidden_dim'", "multiple of n_heads (3)"]),
        ({**TINY, "n_layers": "2"}, ["'n_layers'", "a positive integer"]),
        ({**TINY, "model_norm": "lp_rms_norm"}, ["'model_norm'", "lp_rms_norm"]),
        ({**TINY, "positional_embedding_type": "llama_rotary"}, ["'positional_embedding_type'", "llama"]),
        ({**TINY, "ffn_type": "gemma_geglu"}, ["'ffn_type'", "gemma_geglu"]),
        ({**TINY, "moe_freq": 2}, ["'moe_freq'", "dense transformer"]),
        ({**TINY, "attn_name": "custom_attn"}, ["'attn_name'", "custom_attn"]),
        ({**TINY, "attn_seq_scalar": "avg"}, ["'attn_seq_scalar'"]),
        ({**TINY, "qknorm": True}, ["sets 'qknorm'"]),  # a misspelt key is not dropped silently
        ({**TINY, "rotary_old": True}, ["rotary_old", "head_rotary"]),
        ({"d_model": 768, "n_layer": 12, "vocab_size": 50432, "seq_len": 2048}, ["Mamba"]),
    ],
)
def test_bad_files_are_config_errors_naming_file_and_key(
    tmp_path: Path, content: Any, needles: list[str]
) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    cfg = run_config(f"model.config_json={path}")
    with pytest.raises(ConfigError) as e:
        validate(cfg, arm="a1")
    assert e.value.key == "model.config_json" and e.value.value == str(path)
    for needle in [str(path), "arm 'a1'", *needles]:
        assert needle in str(e.value)
    # Planning still works (the key names the file and the error), and building refuses it the same way.
    assert arch_config(cfg)["config_json"] == str(path)
    assert keys(cfg)[names.PRETRAIN] != keys(run_config())[names.PRETRAIN]
    with pytest.raises(ConfigError, match="model.config_json"):
        model_args(cfg, 300)


def test_text_vocab_must_be_the_files_vocab_size(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.json", {**TINY, "vocab_size": 512})
    with pytest.raises(ConfigError) as e:
        validate(run_config(f"model.config_json={path}"))
    assert e.value.key == "model.text_vocab_size" and "512" in str(e.value)
    validate(run_config(f"model.config_json={path}", "model.text_vocab_size=512"))
