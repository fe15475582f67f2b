"""Sweep files and overrides a careless or hostile user may write: each is refused with one clear
AblateError line (never a traceback, a hang or silently ignored), and the fast composition of many arms
gives exactly Hydra's configs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from scales import PAPER_SCALE

from ablate.cli import main, parse_args
from ablate.config.compose import (
    _compose_plain,
    compose_arm,
    compose_with_hydra,
    finish,
    run_key,
    to_run_config,
)
from ablate.config.compose import _container as container
from ablate.errors import AblateError, ConfigError, SweepError
from ablate.launch.launcher import launch
from ablate.sweep import DEFAULT_MAX_ARMS, load_sweep
from ablate.sweep_yaml import MAX_DEPTH

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"


def hydra_reference(overrides: list[str]) -> tuple[dict, object]:
    """Every override composed by Hydra at once (the way compose_config worked before the cache)."""
    cfg = finish(compose_with_hydra(overrides), overrides)
    return container(cfg), to_run_config(cfg)


@pytest.mark.parametrize("cli", [[], PAPER_SCALE, ["cluster=slurm", "tokenizer.text_vocab_size=300"]])
@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_fast_composition_equals_hydra_for_every_shipped_sweep(path, cli):
    for arm in load_sweep(path, cli).arms:
        assert _compose_plain(arm.overrides, arm.label) is not None, "the fast path was not taken"
        fast_cfg, fast_config = compose_arm(arm.overrides, arm.label)
        ref_cfg, ref_config = hydra_reference(arm.overrides)
        assert fast_cfg == ref_cfg
        assert fast_config == ref_config
        assert run_key(fast_cfg) == run_key(ref_cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["tokenizer.text_vocab_size=123"],  # the target of model.text_vocab_size's ${...}
        ["model.text_vocab_size=77", "tokenizer.text_vocab_size=123"],
        ["optim.lr=1", "optim.lr=2e-4"],  # the last wins
        ["+cluster.additional_parameters.mail-type=END"],  # + takes Hydra's path
        ["evaluate.prompts=[a,b]", "model.name=${model.init}"],
        ["model=open_lm_1b", "train=paper", "data.seq_len=64"],
    ],
)
def test_fast_composition_equals_hydra_for_other_overrides(overrides):
    fast_cfg, fast_config = compose_arm(overrides)
    ref_cfg, ref_config = hydra_reference(overrides)
    assert fast_cfg == ref_cfg and fast_config == ref_config


def write(tmp_path: Path, text: str | bytes, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)),
        "name: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]",
    ]
)

# (sweep file text, a fragment the error must contain): every one a named class of the issue.
BAD_FILES = {
    "glob": ("name: g\ngrid: {model.init: 'glob(*)'}\n", "is not a list"),
    "range_zero_step": ("name: r\ngrid: {train.seed: 'range(0,10,0)'}\n", "non-zero step"),
    "range_inf": ("name: r\ngrid: {train.seed: 'range(0,inf)'}\n", "finite bounds"),
    "range_nan": ("name: r\ngrid: {train.seed: 'range(0,nan)'}\n", "finite bounds"),
    "duplicate_key": ("name: d\narms:\n  - {model.init: random, model.init: pretrained}\n", "given twice"),
    "duplicate_top_key": ("name: d\narms: [{model.init: random}]\nname: e\n", "'name' is given twice"),
    "duplicate_label": (
        "name: d\narms:\n  - {label: X, model.init: random, train.seed: 11}\n"
        "  - {label: X, model.init: random, train.seed: 12}\n",
        "two different arms are labelled 'X'",
    ),
    "interval": ("name: r\ngrid: {optim.lr: 'interval(0,1)'}\n", "interval()"),
    "hydra_key_nan": ("name: n\narms: [{hydra: nan}]\n", "hydra.* settings"),
    "arms_not_a_list": ("name: a\narms: 5\n", "'arms' is a list"),
    "int_grid_key": ("name: g\ngrid: {1: [1]}\n", "is not a config key"),
    "non_utf8": (b"name: u\ngrid: {model.init: [\xff\xfe]}\n", "not UTF-8"),
    "deep_nesting": ("name: d\ngrid: {train.seed: " + "[" * 1000 + "]" * 1000 + "}\n", "nested more than"),
    "recursive_alias": ("name: &r {name: a, grid: *r}\n", "recursive YAML alias"),
    "alias_bomb": (BOMB, "expands to more than"),
    "huge_range": ("name: h\ngrid: {train.seed: 'range(0,1000000)'}\n", "1,000,000 values"),
    "huge_product": (
        "name: h\ngrid: {train.seed: 'range(0,100)', optim.lr: 'range(1,101)'}\n",
        "expands to 10,000 arms",
    ),
    "exclude_typo": (
        "name: e\ngrid: {model.init: [pretrained, random]}\nexclude: [{model.int: random}]\n",
        "'model.int' is not a key of 'grid' or 'arms'",
    ),
    "unknown_arm_key": ("name: e\narms: [{model.int: random}]\n", "model.int"),
    "added_unknown_key": ("name: e\narms: [{+foo: 1}]\n", "'foo'"),
    "oc_env": ("name: e\nbase: ['model.name=${oc.env:PATH}']\narms: [{model.init: random}]\n", "resolvers"),
    "nested_resolver": ("name: e\narms: [{model.name: '${now:%Y}'}]\n", "resolvers"),
    "missing_interpolation": ("name: e\narms: [{model.name: '${nope}'}]\n", "'model.name'"),
    "long_name": ("name: " + "a" * 300 + "\narms: [{model.init: random}]\n", "1 to 64"),
    "name_with_slash": ("name: ../x\narms: [{model.init: random}]\n", "1 to 64"),
    "unicode_name": ("name: ünï\narms: [{model.init: random}]\n", "1 to 64"),
    "group_typo": ("name: g\narms: [{model: tinyy}]\n", "one of open_lm_1b, tiny"),
    "group_removed": ("name: g\nbase: ['~model']\narms: [{model.init: random}]\n", "exactly one option"),
    "group_path": ("name: g\nbase: ['model/x=tiny']\narms: [{model.init: random}]\n", "config group"),
    "group_list": ("name: g\narms: [{data: [a]}]\n", "files of config group 'data'"),
    "include_outside": ("name: s\ninclude: [/etc/passwd]\n", "is not a .yaml file under"),
    "include_missing": ("name: s\ninclude: [nope.yaml]\n", "does not exist"),
    "bad_max_arms": ("name: s\nmax_arms: -1\narms: [{model.init: random}]\n", "'max_arms' is a positive"),
    "description_mapping": ("name: s\ndescription: {a: 1}\narms: [{model.init: random}]\n", "description"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_sweep_file_is_one_clear_error_on_the_launch_path(tmp_path, name):
    text, needle = BAD_FILES[name]
    p = write(tmp_path, text)
    with pytest.raises(AblateError) as info:
        launch(p, [], tmp_path / "results", dry_run=True, echo=lambda s: None)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg and len(msg) < 700
    assert not (tmp_path / "results").exists()  # refused before anything is written


def test_include_error_never_quotes_the_file(tmp_path):
    secret = tmp_path / "outside" / "secret.yaml"
    secret.parent.mkdir()
    secret.write_text("token-1234: x\n")
    (tmp_path / "sweep").mkdir()
    p = write(tmp_path / "sweep", f"name: s\ninclude: [{secret}]\n")
    link = tmp_path / "sweep" / "link.yaml"
    link.symlink_to(secret)  # a .yaml inside the folder that points outside it
    q = write(tmp_path / "sweep", "name: s\ninclude: [link.yaml]\n", "q.yaml")
    for sweep in (p, q):
        with pytest.raises(SweepError, match="is not a .yaml file under") as info:
            load_sweep(sweep)
        assert "token-1234" not in str(info.value)


def test_include_of_a_project_sweep_from_another_folder_and_a_self_symlink(tmp_path):
    p = write(tmp_path, f"name: s\ninclude: [{SWEEPS / 'lr.yaml'}]\n")
    assert len(load_sweep(p).arms) == 8
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    q = write(tmp_path, "name: s\ninclude: [loop.yaml]\n", "q.yaml")
    with pytest.raises(SweepError, match="cannot be resolved"):
        load_sweep(q)


def test_max_arms_key_raises_the_limit(tmp_path):
    grid = f"grid: {{train.seed: 'range(0,{DEFAULT_MAX_ARMS + 1})'}}\n"
    with pytest.raises(SweepError, match="max_arms"):
        load_sweep(write(tmp_path, "name: s\n" + grid))
    sweep = load_sweep(write(tmp_path, f"name: s\nmax_arms: {DEFAULT_MAX_ARMS + 1}\n" + grid))
    assert len(sweep.arms) == DEFAULT_MAX_ARMS + 1
    # The top file's limit counts the arms of its includes too.
    write(tmp_path, "name: a\ngrid: {train.seed: 'range(0,2)'}\n", "a.yaml")
    top = "name: s\nmax_arms: 2\ninclude: [a.yaml]\narms: [{model.init: random}]\n"
    with pytest.raises(SweepError, match="the sweep has 3 arms"):
        load_sweep(write(tmp_path, top, "top.yaml"))


def test_depth_limit_leaves_room_for_real_files(tmp_path):
    nested = "[" * (MAX_DEPTH - 4) + "1" + "]" * (MAX_DEPTH - 4)
    p = write(tmp_path, f"name: d\narms: [{{evaluate.prompts: {nested}}}]\n")
    assert len(load_sweep(p).arms) == 1  # parsed; the nested list is the composer's to refuse


def test_overrides_after_the_options(capsys, tmp_path):
    args = parse_args(["launch", "sweeps/demo.yaml", "a=1", "--dry-run", "optim.lr=3e-4", "b=2"])
    assert args.dry_run and args.overrides == ["a=1", "optim.lr=3e-4", "b=2"]
    with pytest.raises(SystemExit):
        parse_args(["launch", "sweeps/demo.yaml", "--dry-run", "--bogus", "optim.lr=3e-4"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    code = main(
        ["--results", str(tmp_path), "launch", str(SWEEPS / "t2i_init.yaml"), "--dry-run", "optim.lr=-1"]
    )
    assert code == 2 and "invalid value for 'optim.lr': -1.0" in capsys.readouterr().err


def test_environment_is_never_resolved_into_a_config(monkeypatch):
    monkeypatch.setenv("ABLATE_TEST_TOKEN", "secret-token")
    for text in (
        "${oc.env:ABLATE_TEST_TOKEN}",
        "x${oc.env:ABLATE_TEST_TOKEN}",
        "[${oc.env:ABLATE_TEST_TOKEN}]",
    ):
        key = "evaluate.prompts" if text.startswith("[") else "model.name"
        with pytest.raises(ConfigError, match="resolvers") as info:
            compose_arm([f"{key}={text}"])
        assert "secret-token" not in str(info.value)
    assert os.environ["ABLATE_TEST_TOKEN"] == "secret-token"


def test_config_group_errors_name_the_group_and_its_options():
    with pytest.raises(ConfigError) as info:
        compose_arm(["train=nope"])
    assert str(info.value) == (
        "invalid value for 'train': 'nope'; allowed: one of demo, paper (the files of config group 'train')"
    )
    with pytest.raises(ConfigError, match=r"'cluster.additional_parameters.x'.*\+cluster"):
        compose_arm(["cluster.additional_parameters.x=1"])


def test_dataclass_config_is_plain_data():
    _, config = compose_arm([])
    assert dataclasses.is_dataclass(config) and type(config.evaluate.prompts) is list


@pytest.mark.parametrize(
    ("override", "ok"),
    [
        ("tracking.uri=bogus://x", False),
        ("tracking.flush_interval_s=0", False),
        ("tracking.close_timeout_s=-1", False),
        ("tracking.uri=sqlite:////tmp/x.db", True),
        ("tracking.uri=postgresql+psycopg2://u@h/db", True),
        ("tracking.uri=/tmp/mlruns", True),
    ],
)
def test_tracking_settings_are_checked_before_the_store_is_opened(tmp_path, override, ok):
    def run() -> None:
        launch(SWEEPS / "t2i_init.yaml", [override], tmp_path, dry_run=True, echo=lambda s: None)

    if ok:
        run()
    else:
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            run()


def test_sweep_paths_that_are_no_sweep_file(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer came
    big = write(tmp_path, "name: b\n#" + "x" * (1 << 20), "big.yaml")
    cases = {
        Path("/dev/zero"): "not a regular file",
        fifo: "not a regular file",
        tmp_path: "not a regular file",
    }
    cases |= {big: "more than 1,048,576 bytes", tmp_path / "nope.yaml": "No such file"}
    for path, needle in cases.items():
        with pytest.raises(SweepError, match=needle):
            launch(path, [], tmp_path / "results", dry_run=True, echo=lambda s: None)
