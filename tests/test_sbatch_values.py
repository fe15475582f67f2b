"""No value becomes a shell line or an extra directive of an sbatch script: control characters are refused
in every value that reaches one, and an additional sbatch option is matched to the options ablate owns by
SLURM's own abbreviation rules. All of it before anything is created or submitted (validate, dry run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ablate.config.compose import compose_config, to_run_config
from ablate.config.sbatch import SBATCH_OPTIONS, SBATCH_OWNED, owned_option
from ablate.config.validate import validate
from ablate.errors import ConfigError
from ablate.launch import slurm
from ablate.launch.graph import Graph

GOLDEN = Path(__file__).parent / "golden" / "sbatch_hostile_values.txt"
PWNED = "gpu\ntouch /tmp/pwned #"


def config(*overrides: str):
    return to_run_config(compose_config(["cluster=slurm", *overrides]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cluster.partition", "cluster.partition"),
        ("cluster.account", "cluster.account"),
        ("cluster.qos", "cluster.qos"),
        ("cluster.constraint", "cluster.constraint"),
        ("+cluster.additional_parameters.mail-type", "cluster.additional_parameters.mail-type"),
    ],
)
@pytest.mark.parametrize(
    "value", [PWNED, "gpu\n#SBATCH --uid=0 #", "gpu\rx", "gpu\x00", "a\tb", "gpu\u2028x", "gpu\\"]
)
def test_a_value_that_would_break_its_sbatch_line_is_a_config_error(override, key, value):
    cfg = config()
    if override.startswith("+"):
        cfg.cluster.additional_parameters = {"mail-type": value}
    else:
        setattr(cfg.cluster, key.split(".")[1], value)
    with pytest.raises(ConfigError) as info:
        validate(cfg, arm="a")
    assert info.value.key == key and info.value.value == value
    assert "arm 'a'" in str(info.value) and "remove it" in str(info.value)


def test_the_reproduction_from_the_command_line_is_refused_by_compose_and_validate():
    # What a shell passes for cluster.partition=$'gpu\ntouch /tmp/pwned #' (Hydra keeps the newline).
    cfg = config(f"cluster.partition='{PWNED}'")
    assert cfg.cluster.partition == PWNED
    with pytest.raises(ConfigError, match=r"cluster\.partition.*'\\n' at position 3"):
        validate(cfg)


def test_the_dry_run_reports_a_hostile_value_before_anything(tmp_path):
    from ablate.launch.launcher import launch

    lines: list[str] = []
    with pytest.raises(ConfigError, match="cluster.partition"):
        launch(
            "sweeps/demo.yaml",
            ["cluster=slurm", f"cluster.partition='{PWNED}'"],
            tmp_path,
            dry_run=True,
            echo=lines.append,
        )
    assert not lines and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "owned"),
    [
        ("part", "partition"),
        ("parti", "partition"),
        ("p", "partition"),  # ambiguous for sbatch (parsable, power, ...): refused before it fails there
        ("n", "nodes"),
        ("node", "nodes"),
        ("tasks", "tasks-per-node"),  # unique prefix of sbatch's alias of --ntasks-per-node
        ("ntasks-per-n", "ntasks-per-node"),
        ("cpus", "cpus-per-task"),
        ("gpus-per-n", "gpus-per-node"),
        ("job", "job-name"),
        ("ti", "time"),
        ("dep", "dependency"),
        ("kill", "kill-on-invalid-dep"),
        ("ntasks_per_node", "ntasks-per-node"),
        ("--part", "partition"),
    ],
)
def test_an_abbreviation_of_an_owned_option_is_refused_as_that_option(name, owned):
    cfg = config()
    cfg.cluster.additional_parameters = {name: "evil"}
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == f"cluster.additional_parameters.{name}"
    assert f"--{owned}" in str(info.value) or owned == name.lstrip("-").replace("_", "-")
    field = SBATCH_OWNED[owned]
    assert (f"set {field} instead" if field else "the launcher sets it") in str(info.value)


def test_the_issues_override_is_refused_naming_partition():
    with pytest.raises(ConfigError, match=r"reads --part as --partition; set cluster\.partition instead"):
        validate(config("+cluster.additional_parameters.part=evil"))


@pytest.mark.parametrize(
    "name", ["gpus", "ntasks", "mem-per-cpu", "time-min", "mail-type", "exclusive", "gres"]
)
def test_options_that_are_exact_names_stay_allowed(name):
    assert owned_option(name) is None
    cfg = config()
    cfg.cluster.additional_parameters = {name: "1"}
    validate(cfg)


@pytest.mark.parametrize("name", ["a=b", "mail type", "x\ny", "é"])
def test_an_option_name_that_is_not_one_is_refused(name):
    cfg = config()
    cfg.cluster.additional_parameters = {name: "1"}
    with pytest.raises(ConfigError, match="letters, digits and '-'"):
        validate(cfg)


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="sbatch is not installed here")
def test_the_option_list_is_the_installed_sbatchs():
    # getopt_long lists every option starting with an ambiguous prefix; a letter with one option runs on.
    found: set[str] = set()
    for letter in "abcdefghijklmnopqrstuvwxyz":
        out = subprocess.run(
            ["sbatch", f"--{letter}=1", "--version"], capture_output=True, text=True, timeout=30
        )
        found |= set(re.findall(r"'--([a-z0-9-]+)'", out.stderr))
        if "is ambiguous" not in out.stderr and "unrecognized" not in out.stderr:
            found |= {o for o in SBATCH_OPTIONS if o.startswith(letter)}  # one option: ours must be it
            assert len({o for o in SBATCH_OPTIONS if o.startswith(letter)}) == 1, letter
    assert found == SBATCH_OPTIONS


def test_hostile_values_golden(tmp_path):
    """The golden file: the directives rendered for values that quoting alone makes safe (quotes, spaces,
    `#`, `$(...)`: submitit shlex-quotes them and sbatch honours the quotes), one line each; then the
    error a newline gets."""
    c = config("cluster.partition=gpu").cluster
    c.additional_parameters = {"comment": "it's $(touch /tmp/pwned) # x", "mail-user": '"a b"@example.org'}
    text = slurm.render_sbatch(c, "train", tmp_path / "jobs")
    directives = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert len(text.splitlines()) == len(directives) + 7  # shebang, blanks, comments, export, srun
    c.partition = PWNED
    with pytest.raises(ConfigError) as info:
        slurm.render_sbatch(c, "train", tmp_path / "jobs")
    got = "\n".join(directives).replace(str(tmp_path / "jobs"), "<jobs>") + f"\n---\n{info.value}\n"
    if os.environ.get("ABLATE_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "review the diff, then regenerate with ABLATE_UPDATE_GOLDEN=1"


def test_render_and_submit_refuse_hostile_names_and_paths_before_sbatch(tmp_path):
    c = config().cluster
    with pytest.raises(ConfigError, match="results folder"):
        slurm.render_sbatch(c, "train", tmp_path / "jo\nbs")
    c.partition = PWNED
    with pytest.raises(ConfigError, match="cluster.partition"):
        slurm.render_sbatch(c, "train", tmp_path / "jobs")
    c.partition = None
    # Refused before max_array_size asks scontrol or anything is submitted.
    with pytest.raises(ConfigError, match="sweep name.*names the SLURM jobs"):
        slurm.submit_graph(Graph({}, {}), c, tmp_path, "s\ntouch x", active={}, on_submitted=lambda s: None)


def test_a_results_folder_with_a_newline_is_refused_before_anything_is_written(tmp_path):
    from ablate.launch.launcher import launch

    results = tmp_path / "res\nults"
    with pytest.raises(ConfigError, match="results folder"):  # before SLURM is asked, or the store made
        launch(Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml", ["cluster=slurm"], results)
    assert not results.exists()
