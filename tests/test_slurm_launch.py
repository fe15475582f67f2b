"""The SLURM launcher's pure parts: per-stage job parameters, the rendered sbatch script (golden file),
sacct parsing, array splitting, and the errors a user sees before anything is submitted.

The same paths against a real scheduler are in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.config.compose import compose_config, to_run_config
from ablate.errors import LaunchError
from ablate.launch import slurm

GOLDEN = Path(__file__).parent / "golden" / "sbatch_slurm_a100_train.sh"
ROOT = Path(__file__).resolve().parents[1]


def cluster(*overrides: str):
    return to_run_config(compose_config(["scale=paper", "cluster=slurm_a100", *overrides])).cluster


def test_training_stages_get_every_node_and_gpu_other_stages_one_task():
    c = cluster()
    train = slurm.job_parameters(c, "train", "paper:train")
    assert (train["nodes"], train["ntasks_per_node"], train["gpus_per_node"]) == (8, 8, 8)
    assert (train["cpus_per_task"], train["time"], train["signal_delay_s"], train["mem"]) == (
        12,
        4320,
        120,
        "0GB",
    )
    assert train["array_parallelism"] == 8
    evaluate = slurm.job_parameters(c, "evaluate", "paper:evaluate")
    assert (evaluate["nodes"], evaluate["ntasks_per_node"], evaluate["gpus_per_node"]) == (1, 1, 1)
    synth = slurm.job_parameters(cluster("cluster.gpus_per_node=0", "cluster.tasks_per_node=2"), "synth", "s")
    assert "gpus_per_node" not in synth and synth["ntasks_per_node"] == 1


def test_site_settings_and_extra_sbatch_options_reach_the_parameters():
    c = cluster(
        "cluster.partition=gpu",
        "cluster.account=proj",
        "cluster.qos=high",
        "cluster.constraint=a100",
        "+cluster.additional_parameters.mail-type=END",
        "cluster.mem_gb=512",
    )
    p = slurm.job_parameters(c, "train", "x")
    assert (p["partition"], p["account"], p["qos"], p["constraint"]) == ("gpu", "proj", "high", "a100")
    assert p["additional_parameters"] == {"kill-on-invalid-dep": "yes", "mail-type": "END"}
    assert p["mem"] == "512GB"
    # A one-task stage asks for its task's share of a node's memory.
    assert slurm.job_parameters(c, "prepare", "x")["mem"] == "64GB"


def _render(tmp_path: Path) -> str:
    text = slurm.render_sbatch(
        cluster(), "train", tmp_path / "jobs", array=19, dependency="afterok:1001:1002"
    )
    # Machine-specific: where the jobs folder is and which python runs the job.
    return text.replace(str(tmp_path / "jobs"), "<jobs>").replace(sys.executable, "<python>")


def test_rendered_sbatch_for_slurm_a100_matches_the_golden_file(tmp_path):
    text = _render(tmp_path)
    if os.environ.get("ABLATE_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        "the sbatch script changed; review the diff, then regenerate with ABLATE_UPDATE_GOLDEN=1"
    )


def test_golden_sbatch_asks_for_the_paper_hardware(tmp_path):
    lines = set(_render(tmp_path).splitlines())
    for flag in (
        "#SBATCH --nodes=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --mem=0GB",
        "#SBATCH --time=4320",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --array=0-18%8",
        "#SBATCH --dependency=afterok:1001:1002",
        "#SBATCH --kill-on-invalid-dep=yes",
    ):
        assert flag in lines, flag


def test_parse_sacct_expands_pending_array_ranges_and_keeps_the_first_word_of_the_state():
    text = "\n".join(
        [
            "101_0|COMPLETED|0:0|00:00:05|node1|None",
            "101_1|CANCELLED by 0|0:15|00:00:02|node1|None",
            "101_[2-4,7%2]|PENDING|0:0|00:00:00|None assigned|Dependency",
            "102|NODE_FAIL|0:0|00:01:00|node1|None",
            "",
        ]
    )
    states = slurm.parse_sacct(text)
    assert states["101_0"].state == "COMPLETED"
    assert states["101_1"].state == "CANCELLED"
    assert [j for j in states if states[j].state == "PENDING"] == ["101_2", "101_3", "101_4", "101_7"]
    assert states["101_3"].reason == "Dependency"
    assert states["102"].state == "NODE_FAIL"


def test_a_task_row_wins_over_the_range_row_that_still_names_it():
    # What sacct printed after task 1 of an aftercorr array was dropped and task 0 ran (order varies).
    for rows in (
        ["213_0|COMPLETED|0:0", "213_[0-1%2]|CANCELLED|0:0"],
        ["213_[0-1%2]|CANCELLED|0:0", "213_0|COMPLETED|0:0"],
    ):
        states = slurm.parse_sacct("\n".join(rows))
        assert (states["213_0"].state, states["213_1"].state) == ("COMPLETED", "CANCELLED")


def test_arrays_larger_than_the_limit_are_split_in_order():
    assert slurm.chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert slurm.chunks([], 3) == []


def test_slurm_tools_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LaunchError, match="scontrol.*not installed.*local_slurm up"):
        slurm.check_reachable()


def test_launch_with_slurm_unreachable_fails_before_creating_runs(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin/nonexistent"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablate.cli",
            "--results",
            str(results),
            "launch",
            "sweeps/demo.yaml",
            "cluster=slurm",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "error: SLURM is unreachable" in proc.stderr and "Traceback" not in proc.stderr
    assert not (results / "mlflow.db").exists() and not (results / "sweeps").exists()


def _node(name: str, deps: list[str]):
    from ablate.launch.graph import Node
    from ablate.stages.runner import Job

    stage, _, key = name.partition("/")
    return Node(job=Job(stage=stage, key=key, out_dir="", inputs={}, config={}), deps=deps)


def test_evaluate_tasks_wait_for_their_own_train_task_only():
    tasks_of = {"50": ["train/a", "train/b"], "40": ["prepare/p"]}
    eb = _node("evaluate/b", ["prepare/p", "train/b"])
    ea = _node("evaluate/a", ["prepare/p", "train/a"])
    groups = slurm._groups([eb, ea], tasks_of, limit=10)
    # Reordered to match the train array's tasks: evaluate task i needs train task i.
    assert groups == [("50", [ea, eb])]
    # An extra evaluate with no train task of its own: the stage stays one array, waiting with afterok.
    ec = _node("evaluate/c", ["prepare/p", "train/old"])
    assert slurm._groups([eb, ec, ea], tasks_of, limit=10) == [("", [eb, ec, ea])]
    # Train tasks fed one each by a two-task prepare array, plus others: one array, not two.
    tp = {"40": ["prepare/t2i", "prepare/uncond"]}
    t1, t2, t3 = (
        _node(f"train/{i}", [p]) for i, p in enumerate(["prepare/t2i", "prepare/uncond", "prepare/t2i"])
    )
    assert slurm._groups([t1, t2, t3], tp, limit=10) == [("", [t1, t2, t3])]
    # Two evaluates of one train: no one-to-one correspondence, so the whole array is waited for.
    ea2 = _node("evaluate/a2", ["train/a"])
    assert slurm._groups([ea, ea2], {"50": ["train/a", "train/b"]}, limit=1) == [("", [ea]), ("", [ea2])]
