"""Cluster config group: the slurm kinds, their validation, and that they stay out of the run key."""

from __future__ import annotations

import pytest

from ablate.config.compose import compose_config, run_key, to_run_config
from ablate.config.validate import validate
from ablate.errors import ConfigError
from ablate.schema import CLUSTER_KINDS


def config(*overrides: str):
    return to_run_config(compose_config(list(overrides)))


def test_slurm_is_a_kind_and_both_options_use_it():
    assert "slurm" in CLUSTER_KINDS
    assert config("cluster=slurm").cluster.kind == "slurm"
    assert config("cluster=slurm_a100").cluster.kind == "slurm"


def test_generic_slurm_is_one_cpu_task():
    cfg = config("cluster=slurm")
    validate(cfg)
    c = cfg.cluster
    assert (c.nodes, c.gpus_per_node, c.tasks_per_node) == (1, 0, 1)
    assert c.partition is None and c.account is None and c.qos is None and c.constraint is None
    assert c.additional_parameters == {}
    assert (c.training_world_size(), c.job_gpus()) == (1, 0)


# 64 ranks need at least 64 sequences per step; the demo's batch holds 8 (see test_demo_batch_on_64_ranks).
BATCH_FOR_64_RANKS = ("train.batch_tokens=18432", "pretrain.batch_tokens=18432")


def test_slurm_a100_is_the_papers_64_gpus():
    cfg = config("cluster=slurm_a100", *BATCH_FOR_64_RANKS)
    validate(cfg)
    c = cfg.cluster
    assert (c.nodes, c.gpus_per_node, c.tasks_per_node) == (8, 8, 8)
    assert c.partition is None and c.constraint is None  # site-specific: set by override
    assert c.timeout_min == 72 * 60 and c.signal_delay_s == 120
    assert (c.training_world_size(), c.job_gpus()) == (64, 64)
    # Inherits the generic slurm settings it does not set itself.
    assert c.qos is None and c.account is None


def test_site_settings_by_override():
    cfg = config(
        "cluster=slurm_a100",
        *BATCH_FOR_64_RANKS,
        "cluster.partition=gpu",
        "cluster.constraint=a100-80gb",
        "cluster.account=proj",
        "cluster.qos=high",
        "+cluster.additional_parameters.mail-type=END",
        "+cluster.additional_parameters.exclusive=1",  # a number arrives as a string
    )
    validate(cfg)
    c = cfg.cluster
    assert (c.partition, c.constraint, c.account, c.qos) == ("gpu", "a100-80gb", "proj", "high")
    assert c.additional_parameters == {"mail-type": "END", "exclusive": "1"}
    whole = config("cluster=slurm", '++cluster.additional_parameters={exclusive:user,gres:"gpu:2"}')
    assert whole.cluster.additional_parameters == {"exclusive": "user", "gres": "gpu:2"}


def test_demo_batch_on_64_ranks():
    """4 sequences per step cannot feed 64 ranks: the error names the key, the ranks and the fix."""
    with pytest.raises(ConfigError, match=r"train\.batch_tokens.*>= 18432.*64 ranks.*tasks_per_node=8"):
        validate(config("cluster=slurm_a100"), arm="demo")
    with pytest.raises(ConfigError, match=r"pretrain\.batch_tokens"):
        validate(config("cluster=slurm_a100", "train.batch_tokens=18432"))
    validate(config("cluster=slurm", "cluster.tasks_per_node=4"))  # 4 sequences, 4 ranks: one each
    with pytest.raises(ConfigError, match=r"train\.batch_tokens.*>= 1440.*5 ranks"):
        validate(config("cluster=slurm", "cluster.tasks_per_node=5"))


def test_cluster_settings_are_not_part_of_the_run_key():
    base = run_key(compose_config([]))
    assert run_key(compose_config(["cluster=slurm_a100", "cluster.partition=gpu"])) == base
    assert run_key(compose_config(["cluster=slurm", "+cluster.additional_parameters.x=y"])) == base
    assert run_key(compose_config(["train.seed=1"])) != base


def test_local_and_debug_are_one_cpu_process_whatever_the_slurm_fields():
    c = config("cluster=local", "cluster.nodes=4", "cluster.tasks_per_node=2").cluster
    assert (c.training_world_size(), c.job_gpus()) == (1, 0)
    c = config("cluster=debug").cluster
    assert (c.training_world_size(), c.job_gpus()) == (1, 0)


@pytest.mark.parametrize(
    ("overrides", "key", "needle"),
    [
        (["cluster.kind=k8s"], "cluster.kind", "slurm"),
        (["cluster=slurm", "cluster.nodes=0"], "cluster.nodes", ">= 1"),
        (["cluster=slurm", "cluster.cpus_per_task=0"], "cluster.cpus_per_task", ">= 1"),
        (["cluster=slurm", "cluster.timeout_min=0"], "cluster.timeout_min", ">= 1"),
        (["cluster=slurm", "cluster.array_parallelism=0"], "cluster.array_parallelism", ">= 1"),
        (["cluster=slurm", "cluster.gpus_per_node=-1"], "cluster.gpus_per_node", ">= 0"),
        (["cluster=slurm", "cluster.mem_gb=-1"], "cluster.mem_gb", "null"),
        (["cluster.max_concurrent=0"], "cluster.max_concurrent", ">= 1"),
        (["cluster.poll_s=0"], "cluster.poll_s", "> 0"),
        (["cluster=slurm_a100", "cluster.tasks_per_node=1"], "cluster.tasks_per_node", "one task per GPU"),
        (["cluster=slurm", "cluster.signal_delay_s=14400"], "cluster.signal_delay_s", "time limit"),
        (["cluster=slurm", "cluster.signal_delay_s=-5"], "cluster.signal_delay_s", ">= 0"),
        (
            ["cluster=slurm", "+cluster.additional_parameters.partition=gpu"],
            "cluster.additional_parameters.partition",
            "cluster.partition instead",
        ),
        (
            ["cluster=slurm", "+cluster.additional_parameters.ntasks_per_node=4"],
            "cluster.additional_parameters.ntasks_per_node",
            "cluster.tasks_per_node instead",
        ),
    ],
)
def test_bad_cluster_settings_are_config_errors(overrides, key, needle):
    with pytest.raises(ConfigError) as info:
        validate(config(*overrides), arm="a")
    err = info.value
    assert err.key == key
    assert "arm 'a'" in str(err) and key in str(err) and needle in str(err)


def test_unknown_cluster_option_lists_the_choices():
    with pytest.raises(ConfigError, match="slurm_a100"):
        config("cluster=slurm_h100")
