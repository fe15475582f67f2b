"""Sweep files: grid, Hydra grammar, explicit arms, exclusions, includes, command-line overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from scales import PAPER_SCALE

from ablate.arms import execution_settings, resolve_arms
from ablate.errors import ConfigError, SweepError
from ablate.sweep import load_sweep

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_grid_with_hydra_grammar_is_cartesian(tmp_path):
    p = write(
        tmp_path,
        "name: g\ngrid:\n  optim.lr: 1e-4,2e-4\n  train.seed: range(0,3)\n  model.init: choice(pretrained,random)\n",
    )
    sweep = load_sweep(p)
    assert len(sweep.arms) == 2 * 3 * 2
    assert sweep.arms[0].overrides == ["optim.lr=0.0001", "train.seed=0", "model.init=pretrained"]
    assert sweep.arms[0].label == "lr=0.0001 seed=0 init=pretrained"


def test_exclusion_values_compare_as_hydra_reads_them(tmp_path):
    p = write(tmp_path, "name: g\ngrid:\n  optim.lr: [1.0e-4, 2.0e-4]\nexclude:\n  - {optim.lr: 0.0001}\n")
    assert [a.label for a in load_sweep(p).arms] == ["lr=0.0002"]


def test_base_arms_exclude_and_cli_overrides(tmp_path):
    p = write(
        tmp_path,
        """name: x
base: [data.task=uncond]
grid:
  model.init: [pretrained, random]
  train.trainable: [all, emb_out]
arms:
  - {label: special, model.init: random, optim.lr: 5e-5}
exclude:
  - {model.init: random, train.trainable: emb_out}
""",
    )
    sweep = load_sweep(p, ["train.total_tokens=100000"])
    labels = [a.label for a in sweep.arms]
    assert labels == [
        "init=pretrained trainable=all",
        "init=pretrained trainable=emb_out",
        "init=random trainable=all",
        "special",
    ]
    for arm in sweep.arms:
        assert arm.overrides[0] == "data.task=uncond" and arm.overrides[-1] == "train.total_tokens=100000"


def test_identical_arms_collapse_to_one_run(tmp_path):
    p = write(tmp_path, "name: d\ngrid:\n  model.init: [pretrained, random]\n")
    # The command line pins the varied key: both arms resolve to the same config, hence one run.
    arms = resolve_arms(load_sweep(p, ["model.init=random"]))
    assert len(arms) == 1


def test_include_pulls_arms_of_other_files(tmp_path):
    write(tmp_path, "name: a\ngrid:\n  model.init: [pretrained, random]\n", "a.yaml")
    p = write(tmp_path, "name: all\ninclude: [a.yaml]\nbase: [train.seed=3]\n", "all.yaml")
    sweep = load_sweep(p)
    assert [a.label for a in sweep.arms] == ["init=pretrained", "init=random"]
    assert all(a.overrides[0] == "train.seed=3" for a in sweep.arms)


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        ("name: x\ngrid:\n  a: [1, 2\n", "YAML error", 4),
        ("name: x\nbogus: 1\ngrid:\n  model.init: [random]\n", "unknown top-level key 'bogus'", 2),
        ("name: x\ngrid: {}\n", "empty", 2),
        ("name: x\ngrid:\n  model.init: []\n", "no values", 3),
        ("name: x\ngrid:\n  model.init: [random]\nbase:\n  - 'model.init=('\n", "does not parse", 5),
        ("name: x\n", "no arms", None),
        ("grid:\n  model.init: [random]\n", "'name'", None),
    ],
)
def test_malformed_sweep_files_name_file_and_line(tmp_path, text, needle, line):
    p = write(tmp_path, text)
    with pytest.raises(SweepError) as info:
        load_sweep(p)
    msg = str(info.value)
    assert needle in msg and str(p) in msg
    if line is not None:
        assert f"{p}:{line}:" in msg


def test_bad_cli_override_is_a_sweep_error(tmp_path):
    p = write(tmp_path, "name: x\ngrid:\n  model.init: [random]\n")
    with pytest.raises(SweepError, match="command-line override"):
        load_sweep(p, ["model.init=("])


def test_invalid_value_in_an_arm_names_that_arm(tmp_path):
    p = write(tmp_path, "name: x\ngrid:\n  optim.lr: [1e-4, -1]\n")
    with pytest.raises(ConfigError, match=r"arm 'lr=-1'.*optim.lr"):
        resolve_arms(load_sweep(p))


# What each shipped sweep file promises (its comment): arm count and labels.
INITS = ("pretrained", "random")
FREEZE = [
    *(
        f"init=pretrained trainable={t}"
        for t in ("emb_out", "emb_out_norm", "emb_out_norm_half", "emb_out_norm_ffn", "all")
    ),
    "init=random trainable=all",
]
CONTRASTIVE = ["init=pretrained", "init=random", "init=pretrained image_init=contrastive"]


def seeded(labels: list[str]) -> list[str]:
    """The labels of a file with `seeds: 3`."""
    return [f"{label} seed={s}" for label in labels for s in range(3)]


# What each file's header comment promises, at demo scale (the default) and at scale=paper.
EXPECTED = {
    "demo.yaml": [
        "task=t2i init=pretrained",
        "task=t2i init=random",
        "task=t2i init=pretrained seed=1",
        "task=t2i init=random seed=1",
        "task=t2i init=pretrained image_init=contrastive",
        "task=uncond init=pretrained trainable=emb_out",
    ],
    "t2i_init.yaml": seeded(["init=pretrained", "init=random"]),
    "freeze.yaml": seeded(FREEZE),
    "lr.yaml": [f"init={i} lr={lr}" for i in INITS for lr in ("0.000167", "0.000333", "0.000667", "0.001")],
    "batch.yaml": [f"init={i} batch_tokens={b}" for i in INITS for b in (576, 1152, 2304)],
    "contrastive.yaml": seeded(CONTRASTIVE),
}
EXPECTED["paper.yaml"] = [
    label for f in ("t2i_init", "freeze", "lr", "batch", "contrastive") for label in EXPECTED[f + ".yaml"]
]
EXPECTED_PAPER = {
    "lr.yaml": [f"init={i} lr={lr}" for i in INITS for lr in ("5e-05", "0.0001", "0.0002", "0.0003")],
    "batch.yaml": [f"init={i} batch_tokens={b}" for i in INITS for b in (500000, 1000000, 2000000)],
}


def keys(name: str, cli: list[str] | None = None) -> dict[str, str]:
    return {a.label: a.key for a in resolve_arms(load_sweep(SWEEPS / name, cli))}


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_expands_to_its_promised_arms(path):
    sweep = load_sweep(path)
    assert path.name in EXPECTED, f"add {path.name}'s promised arms to EXPECTED"
    # Every arm the file lists, in order (before identical arms collapse)...
    assert [a.label for a in sweep.arms] == EXPECTED[path.name]
    arms = resolve_arms(sweep)
    # ...and, within one file, distinct runs, except where the file says arms are shared (paper.yaml).
    if path.name != "paper.yaml":
        assert len({a.key for a in arms}) == len(arms) == len(EXPECTED[path.name])


@pytest.mark.parametrize("name", sorted(EXPECTED_PAPER))
def test_scale_grid_gives_the_papers_values_at_paper_scale(name):
    arms = resolve_arms(load_sweep(SWEEPS / name, PAPER_SCALE))
    assert [a.label for a in arms] == EXPECTED_PAPER[name]
    lrs = sorted({a.config.optim.lr for a in arms})
    batches = sorted({a.config.train.batch_tokens for a in arms})
    if name == "lr.yaml":
        assert lrs == [5e-5, 1e-4, 2e-4, 3e-4]
    else:
        assert batches == [500_000, 1_000_000, 2_000_000]


@pytest.mark.parametrize("cli", [None, PAPER_SCALE], ids=["demo", "paper"])
def test_shared_arms_are_the_same_run_across_sweep_files(cli):
    t2i = keys("t2i_init.yaml", cli)
    # Seed 0 is the config's own seed (3 seeds at demo scale, one run per arm at paper scale).
    first = {v for k, v in t2i.items() if "seed=" not in k or k.endswith(" seed=0")}
    # The default LR and batch of each scale are points of the LR and batch grids: the t2i_init arms.
    assert len(first) == 2 and first < set(keys("lr.yaml", cli).values())
    assert first < set(keys("batch.yaml", cli).values())
    assert set(t2i.values()) < set(keys("contrastive.yaml", cli).values())  # every seed
    if cli is None:
        assert first < set(keys("demo.yaml").values())
        # The demo's two seeds of each init are t2i_init's seeds 0 and 1: the same runs.
        demo_t2i = {v for k, v in keys("demo.yaml").items() if "contrastive" not in k and "uncond" not in k}
        assert demo_t2i == {v for k, v in t2i.items() if not k.endswith(" seed=2")}
        assert (
            keys("demo.yaml")["task=uncond init=pretrained trainable=emb_out"]
            == keys("freeze.yaml")["init=pretrained trainable=emb_out seed=0"]
        )


def test_paper_sweep_collapses_shared_arms_and_remembers_every_sweep():
    arms = resolve_arms(load_sweep(SWEEPS / "paper.yaml"))
    # 2 x 3 seeds + 6 x 3 + (8 - 2) + (6 - 2) + (3 - 2) x 3, as its header says: seed 0 of an arm is the
    # arm of the one-seed files (lr, batch), the same run.
    assert len(arms) == 37
    files = ("t2i_init", "freeze", "lr", "batch", "contrastive")
    union = set().union(*(keys(f + ".yaml").values() for f in files))
    assert {a.key for a in arms} == union
    by_key = {a.key: a for a in arms}
    pretrained = by_key[keys("t2i_init.yaml")["init=pretrained seed=0"]]
    assert set(pretrained.sweeps) == {"t2i_init", "lr", "batch", "contrastive", "paper"}
    assert set(by_key[keys("t2i_init.yaml")["init=pretrained seed=1"]].sweeps) == {
        "t2i_init",
        "contrastive",
        "paper",
    }
    frozen = by_key[keys("freeze.yaml")["init=pretrained trainable=emb_out seed=2"]]
    assert set(frozen.sweeps) == {"freeze", "paper"}


@pytest.mark.parametrize(
    ("scale_grid", "needle"),
    [
        ("  huge: {optim.lr: [1.0]}\n", "unknown scale 'huge'"),
        ("  demo: {train.seed: [1]}\n", "not a key of 'grid'"),
        ("  demo: []\n", "give grid keys and their values"),
    ],
)
def test_scale_grid_errors_name_the_problem(tmp_path, scale_grid, needle):
    p = write(tmp_path, "name: s\ngrid:\n  optim.lr: [1.0e-3]\nscale_grid:\n" + scale_grid)
    with pytest.raises(SweepError, match=needle):
        load_sweep(p)


def test_scale_grid_follows_the_last_scale_override(tmp_path):
    p = write(tmp_path, "name: s\ngrid:\n  optim.lr: [3.0e-4]\nscale_grid:\n  demo: {optim.lr: [1.0e-3]}\n")
    assert [a.label for a in load_sweep(p).arms] == ["lr=0.001"]
    assert [a.label for a in load_sweep(p, ["scale=paper"]).arms] == ["lr=0.0003"]
    assert [a.label for a in load_sweep(p, ["scale=paper", "scale=demo"]).arms] == ["lr=0.001"]


def test_arms_that_disagree_on_cluster_or_tracking_settings_are_rejected(tmp_path):
    p = write(tmp_path, "name: d\ngrid:\n  model.init: [pretrained, random]\n  cluster.threads: [1, 2]\n")
    with pytest.raises(ConfigError) as err:
        execution_settings(resolve_arms(load_sweep(p)))
    text = str(err.value)
    assert "cluster.threads" in text and "arm 'init=pretrained threads=2'" in text
    assert "init=pretrained threads=1" in text and "sweep's base or on the command line" in text

    p = write(tmp_path, "name: d\narms:\n  - {label: a}\n  - {label: b, tracking.flush_interval_s: 9}\n")
    with pytest.raises(ConfigError, match="tracking.flush_interval_s"):
        execution_settings(resolve_arms(load_sweep(p)))


def test_sweep_level_settings_apply_to_every_arm_and_stay_out_of_the_keys(tmp_path):
    p = write(tmp_path, "name: d\ngrid:\n  model.init: [pretrained, random]\n")
    one = resolve_arms(load_sweep(p))
    four = resolve_arms(load_sweep(p, ["cluster.threads=4", "cluster=debug"]))
    cluster, tracking = execution_settings(four)
    assert (cluster.threads, cluster.kind, tracking.experiment_prefix) == (4, "debug", "ablate/")
    assert [a.key for a in one] == [a.key for a in four]  # threads and executor change no run key


def test_seeds_repeat_every_arm_with_its_seed_included_ones_too(tmp_path):
    write(tmp_path, "name: a\ngrid:\n  model.init: [pretrained, random]\n", "a.yaml")
    p = write(tmp_path, "name: all\nseeds: 3\ninclude: [a.yaml]\narms:\n  - {train.trainable: emb_out}\n")
    s = load_sweep(p)
    assert [a.label for a in s.arms] == [
        f"{arm} seed={k}" for arm in ("init=pretrained", "init=random", "trainable=emb_out") for k in range(3)
    ]
    assert all(a.overrides[-1] == f"train.seed={k % 3}" for k, a in enumerate(s.arms))
    resolved = resolve_arms(s)
    assert len(resolved) == 9 and [a.config.train.seed for a in resolved[:3]] == [0, 1, 2]
    assert len({a.key for a in resolved}) == 9  # every seed is a run of its own


def test_seeds_per_scale_apply_at_their_scale_only(tmp_path):
    p = write(tmp_path, "name: x\nseeds: {demo: 2}\ngrid:\n  model.init: [random]\n")
    assert [a.label for a in load_sweep(p).arms] == ["init=random seed=0", "init=random seed=1"]
    assert [a.label for a in load_sweep(p, ["scale=paper"]).arms] == ["init=random"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: x\nseeds: 0\ngrid:\n  model.init: [random]\n", "'seeds' is an integer from 1"),
        ("name: x\nseeds: true\ngrid:\n  model.init: [random]\n", "'seeds' is an integer from 1"),
        ("name: x\nseeds: 2\ngrid:\n  train.seed: [1, 2]\n", "sets train.seed itself"),
        ("name: x\nseeds: 100\ngrid:\n  optim.lr: range(1,20)\n", "1,900 arms|19 arms x 100 seeds"),
        (
            "name: x\nseeds: {demos: 3}\ngrid:\n  model.init: [random]\n",
            "unknown scale 'demos'; allowed: demo",
        ),
        ("name: x\nseeds: {paper: 0}\ngrid:\n  model.init: [random]\n", "s.yaml:2: 'seeds' is an integer"),
    ],
)
def test_bad_seeds_are_clear_errors(tmp_path, text, needle):
    with pytest.raises(SweepError, match=needle):
        load_sweep(write(tmp_path, text))
