"""Schema composition and validation: every bad input names the arm, the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from ablate.config.compose import compose_config, flatten, run_key, to_run_config
from ablate.config.validate import image_tokens, validate
from ablate.data.sequence import min_seq_len
from ablate.errors import ConfigError
from ablate.schema import CHOICES


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
        # Once a traceback deep in a job, or silently more than asked (issue 24):
        (["evaluate.slice_size=0"], "evaluate.slice_size", "> 0"),
        (
            ["pretrain.total_tokens=4608", "pretrain.batch_tokens=9216"],
            "pretrain.batch_tokens",
            "<= pretrain",
        ),
        (["tracking.flush_interval_s=1e308"], "tracking.flush_interval_s", "86400"),
        (["tracking.close_timeout_s=inf"], "tracking.close_timeout_s", "86400"),
    ],
)
def test_bad_input_is_a_config_error_naming_arm_key_value(overrides, key, needle):
    with pytest.raises(ConfigError) as info:
        validate(to_run_config(compose_config(overrides, arm="init=random")), arm="init=random")
    err = info.value
    assert err.key == key
    assert "arm 'init=random'" in str(err) and key in str(err) and needle in str(err)


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_closed_choice_refuses_a_value_outside_its_literal(key):
    cfg = config()
    *sections, name = key.split(".")
    owner = cfg
    for section in sections:
        owner = getattr(owner, section)
    setattr(owner, name, "nope")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == key and str(list(CHOICES[key])) in str(info.value)


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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("optm.lr=1e-3", "unknown key 'optm.lr'; did you mean 'optim.lr'?"),  # the section misspelt
        ("+optim.lrr=1e-3", "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("modle=tiny", "unknown key 'modle'; did you mean 'model'?"),
        ("model.n_head=4", "unknown key 'model.n_head'; did you mean 'model.n_heads'?"),
        ("train.sed=1", "unknown key 'train.sed'; did you mean 'train.seed'?"),  # not pretrain.seed
        # A right name in a wrong section: where it exists.
        ("train.lr=1", "unknown key 'train.lr'; did you mean 'pretrain.lr', 'align.lr' or 'optim.lr'?"),
        ("optim.lr.x=1", "unknown key 'optim.lr.x'; did you mean 'optim.lr'? ('lr' is a value"),
        # No close match: the section's keys, or the sections.
        ("optim.wd=0.1", "unknown key 'optim.wd'; the keys of optim are: lr, min_lr_ratio, warmup_tokens,"),
        ("optm.foo=1", "unknown key 'optm.foo'; the sections are: scale, model, data, tokenizer,"),
    ],
)
def test_unknown_key_names_the_key_and_the_nearest_existing_one(override, message):
    from ablate.config.keys import UnknownKeyError

    with pytest.raises(UnknownKeyError) as info:
        compose_config([override])
    assert str(info.value).startswith(message)
    assert "invalid value" not in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)  # callers catching ConfigError still do


def test_known_keys_and_free_form_fields_pass_the_key_check():
    from ablate.config.keys import schema_keys, unknown_key_fix

    assert {"optim", "optim.lr", "cluster.additional_parameters", "scale"} <= set(schema_keys())
    for key in ("optim.lr", "optim", "scale", "cluster.additional_parameters.x", "evaluate.prompts.0"):
        assert unknown_key_fix(key) is None, key
    assert config("optim.lr=0.002").optim.lr == 0.002


def test_ablate_config_says_an_unknown_key_in_one_line(capsys):
    from ablate.cli import main

    assert main(["config", "optim.lrr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown key 'optim.lrr'; did you mean 'optim.lr'?\n"


@pytest.mark.parametrize("dry_run", [True, False])
def test_launch_blames_an_unknown_command_line_key_on_the_command_line(tmp_path, capsys, dry_run):
    from ablate.cli import main

    argv = ["--results", str(tmp_path), "launch", "sweeps/demo.yaml", "optim.lrr=1e-3"]
    assert main([*argv, "--dry-run"] if dry_run else argv) == 2
    err = capsys.readouterr().err
    assert err == "error: command line: unknown key 'optim.lrr'; did you mean 'optim.lr'?\n"
    assert not (tmp_path / "sweeps").exists()  # refused before any manifest or lock is written


@pytest.mark.parametrize(
    ("files", "where", "arm"),
    [
        (
            {"s.yaml": "name: s\nbase: [optim.lrr=1e-3]\narms:\n  - {data.task: t2i}\n"},
            "s.yaml:2",
            "task=t2i",
        ),
        (
            {"s.yaml": "name: s\ngrid:\n  model.init: [random]\n  optim.lrr: [1e-3]\n"},
            "s.yaml:4",
            "init=random lrr=0.001",
        ),
        (
            {
                "s.yaml": "name: s\ninclude: [inner.yaml]\narms:\n  - {data.task: uncond}\n",
                "inner.yaml": "name: inner\narms:\n  - {data.task: t2i}\n  - {data.task: t2i, optim.lrr: 1e-3}\n",
            },
            "inner.yaml:4",
            "task=t2i lrr=0.001",
        ),
    ],
)
def test_launch_names_the_sweep_file_and_line_of_an_unknown_key(tmp_path, capsys, files, where, arm):
    from ablate.cli import main

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for dry in (["--dry-run"], []):
        assert main(["--results", str(tmp_path / "results"), "launch", str(tmp_path / "s.yaml"), *dry]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: {tmp_path / where}: arm '{arm}': unknown key 'optim.lrr'; did you mean 'optim.lr'?\n"
        )
    assert not (tmp_path / "results").exists()
