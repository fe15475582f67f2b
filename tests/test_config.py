"""Schema composition and validation: every bad input names the arm, the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from ablate.config.compose import compose_config, flatten, run_key, to_run_config
from ablate.config.validate import image_tokens, validate
from ablate.data.sequence import min_seq_len
from ablate.errors import ConfigError


def config(*overrides: str):
    return to_run_config(compose_config(list(overrides)))


def test_demo_defaults_compose_and_validate():
    cfg = config()
    validate(cfg)
    assert cfg.scale == "demo" and cfg.model.name == "tiny"
    assert cfg.model.text_vocab_size == cfg.tokenizer.text_vocab_size  # interpolation resolved


def test_paper_scale_expresses_the_paper():
    cfg = config(
        "scale=paper",
        "model.checkpoint=/ckpt/epoch_1.pt",
        "tokenizer.text_path=t.json",
        "tokenizer.image_path=m",
    )
    validate(cfg)
    m = cfg.model
    assert (m.hidden_dim, m.n_layers, m.n_heads, m.text_vocab_size) == (2048, 24, 16, 50432)
    assert m.positional_embedding_type == "head_rotary" and not m.weight_tying
    assert cfg.data.seq_len == 1152 and cfg.tokenizer.codebook_size == 16384
    assert (cfg.data.image_size // cfg.tokenizer.downsample) ** 2 == 1024
    assert cfg.train.total_tokens == 100_000_000_000 and cfg.train.batch_tokens == 1_000_000
    assert cfg.optim.lr == 3e-4 and cfg.optim.warmup_tokens == 2000 * 1_000_000
    assert min_seq_len(cfg.data.caption_tokens, image_tokens(cfg), cfg.data.task) <= 1152


def test_command_line_group_choice_beats_scale_default():
    assert config("scale=paper", "model=tiny").model.name == "tiny"


@pytest.mark.parametrize(
    ("overrides", "key", "needle"),
    [
        (["model.foo=1"], "model.foo", "hidden_dim"),  # unknown key: lists the allowed keys
        (["optim.lr=0"], "optim.lr", "> 0"),
        (["optim.lr=-1e-4"], "optim.lr", "> 0"),
        (["train.trainable=half"], "train.trainable", "emb_out_norm_ffn"),
        (["data.seq_len=200"], "data.seq_len", ">= 288"),
        (["train.batch_tokens=100"], "train.batch_tokens", "one sequence"),
        (
            ["scale=paper", "tokenizer.text_path=t", "tokenizer.image_path=i"],
            "model.checkpoint",
            "open_lm checkpoint",
        ),
        (["model=nope"], "model", "open_lm_1b"),
        (["optim.lr=fast"], "optim.lr", "type"),
        (["model.n_heads=3"], "model.n_heads", "divisor"),
    ],
)
def test_bad_input_is_a_config_error_naming_arm_key_value(overrides, key, needle):
    with pytest.raises(ConfigError) as info:
        validate(to_run_config(compose_config(overrides, arm="init=random")), arm="init=random")
    err = info.value
    assert err.key == key
    assert "arm 'init=random'" in str(err) and key in str(err) and needle in str(err)


def test_uncond_needs_room_for_the_image_only():
    cfg = config("data.task=uncond", "data.seq_len=260")
    validate(cfg)
    with pytest.raises(ConfigError, match="one image"):
        validate(config("data.task=uncond", "data.seq_len=259"))


def test_paper_scale_probes_the_papers_table1_prompts_verbatim():
    from ablate.paper import TABLE1_COMPLETIONS, TABLE1_PROMPTS

    prompts = to_run_config(compose_config(["scale=paper", "model.checkpoint=x.pt"])).evaluate.prompts
    assert tuple(prompts) == TABLE1_PROMPTS
    assert prompts[0] == "Simply put, the theory of relativity states that"
    assert prompts[1].endswith("girafe peluche cheese =>") and "menthe poivrée" in prompts[1]
    assert set(TABLE1_COMPLETIONS) == set(TABLE1_PROMPTS)
    demo = to_run_config(compose_config([])).evaluate.prompts
    assert demo and not set(demo) & set(TABLE1_PROMPTS)


def test_run_key_ignores_where_a_run_executes_but_not_what_it_computes():
    base = run_key(compose_config([]))
    assert run_key(compose_config(["cluster=debug", "tracking.uri=sqlite:///x.db"])) == base
    assert run_key(compose_config(["model.init=random"])) != base
    assert run_key(compose_config(["optim.lr=0.002"])) != base


def test_flatten_gives_dotted_params():
    flat = flatten(compose_config([]))
    assert flat["model.init"] == "pretrained" and flat["optim.lr"] == 1e-3 and "cluster.kind" in flat
