"""Data-parallel training: 2 real gloo ranks on this machine match one process training the same global batch.

One spawn of two processes runs every multi-rank scenario (starting processes costs more than the tiny
training): an uninterrupted run, a run that one rank alone asks to stop, and its resume. Rank 1 fails if it
writes anything (metrics, progress, checkpoint). The single-process runs happen in the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ablate.config.compose import compose_config, to_run_config
from ablate.config.validate import validate
from ablate.data.sequence import VocabLayout, layout_t2i
from ablate.data.shards import ShardDataset, ShardWriter
from ablate.errors import ConfigError, StopRequested
from ablate.model.transformer import ModelArgs, Transformer
from ablate.rundir import MetricsLog, RunDir
from ablate.schema import OptimConfig, TrainConfig
from ablate.stages import registry
from ablate.stages.runner import Job, run_job
from ablate.stages.stage import Stage
from ablate.train import distributed as dist
from ablate.train.distributed import DistEnv
from ablate.train.loop import LogMetrics, train_loop
from ablate.train.schedule import plan_batch

LAYOUT = VocabLayout(text_vocab_size=32, codebook_size=16)
SEQ = 40
SEQUENCES = 5  # per step: uneven over 2 ranks (3 + 2), and micro-batches of 2 leave a ragged last one
STEPS = 8
SPAWN_TIMEOUT_S = 240  # a hung collective fails the test instead of blocking the suite
STOP_AFTER = 4  # rank 1 alone asks to stop after this step (not a checkpoint step: the stop forces one)


def loop_config() -> tuple[TrainConfig, OptimConfig]:
    """The train and optim sections the loop reads."""
    train = TrainConfig(
        total_tokens=SEQ * SEQUENCES * STEPS,
        batch_tokens=SEQ * SEQUENCES,
        micro_batch_size=2,
        checkpoint_every_tokens=SEQ * SEQUENCES * 3,
        seed=1,
        precision="float32",
    )
    return train, OptimConfig(lr=3e-3, warmup_tokens=SEQ * SEQUENCES * 2)


def sink(out_dir: Path) -> LogMetrics:
    """The stage's sink without a tracker: rows into out_dir/metrics.jsonl."""
    log = RunDir(out_dir).metrics_log()
    return lambda metrics, step: log.append(step, metrics)


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(hidden_dim=32, n_layers=2, n_heads=2, seq_len=SEQ, vocab_size=LAYOUT.size))


def write_dataset(out: Path) -> None:
    """Captions determine the image codes, so there is something to learn (as in test_train_loop)."""
    rng = np.random.default_rng(0)
    with ShardWriter(out, seq_len=SEQ, vocab_size=LAYOUT.size, sequences_per_shard=50) as w:
        for _ in range(120):
            caption = rng.integers(0, 32, size=rng.integers(2, 6))
            codes = (np.repeat(caption[:1], 25) + np.arange(25)) % 16
            w.add(layout_t2i(caption, codes, LAYOUT, SEQ))
        w.finish({"vocab": LAYOUT.to_dict()})


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open while choosing, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _forbid_writes_off_rank_0() -> None:
    """Make every output the loop and the runner could write fail loudly on this rank."""
    import ablate.train.state as state_module

    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {dist.current().rank} wrote an output")

    state_module.save_checkpoint = refuse
    for name in ("write_description", "set_status", "mark_complete", "write_progress"):
        setattr(RunDir, name, refuse)
    MetricsLog.append = refuse  # type: ignore[method-assign]


def _fake_stage(name: str, out: Path) -> None:
    """A data-parallel stage `name` that records, per rank, what the runner gave it."""

    def run(ctx) -> None:
        env = dist.current()
        (out / f"{name}_rank{env.rank}.json").write_text(
            json.dumps({"world": env.world_size, "tracker": type(ctx.tracker).__name__})
        )

    # Registered for this worker process only (spawned): the runner finds stages in the registry.
    registry._BY_NAME[name] = Stage(name, version=1, config=lambda cfg: {}, run=run, data_parallel=True)


def _worker(rank: int, world: int, ports: list[int], root: str) -> None:
    """One rank: the uninterrupted run, the run stopped by rank 1 alone, its resume, then run_job twice.

    Each process group gets its own port: a group opened right after another on the same port can meet the
    old group's store, which rank 0 may not have closed yet (a job process opens one group, tests several).
    """
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(ports[0])
    torch.set_num_threads(1)
    out = Path(root)
    if rank != 0:
        _forbid_writes_off_rank_0()
    with dist.init_distributed(timeout_s=120) as env:
        assert (env.rank, env.world_size) == (rank, world) == (dist.current().rank, dist.current().world_size)
        data = ShardDataset(out / "shards")
        m = model()
        train_loop(m, data, LAYOUT, *loop_config(), out / "dp", sink(out / "dp"))
        torch.save(m.state_dict(), out / f"dp_params_rank{rank}.pt")

        calls = {"n": 0}

        def rank1_stops() -> bool:
            calls["n"] += 1
            return rank == 1 and calls["n"] == STOP_AFTER

        with pytest.raises(StopRequested):  # on every rank, though only rank 1 asked
            train_loop(
                model(),
                data,
                LAYOUT,
                *loop_config(),
                out / "stopped",
                sink(out / "stopped"),
                should_stop=rank1_stops,
            )
        assert calls["n"] == STOP_AFTER
        if rank == 0:  # a copy for a single-process resume of this 2-rank checkpoint
            shutil.copytree(out / "stopped", out / "stopped_copy")
        dist.barrier()
        m = model()  # a fresh model, as a requeued job would build
        train_loop(m, data, LAYOUT, *loop_config(), out / "stopped", sink(out / "stopped"))
        torch.save(m.state_dict(), out / f"resumed_params_rank{rank}.pt")

    # The runner opens (and closes) the process group itself for a data-parallel stage.
    _fake_stage("dp_probe", out)
    job = Job(stage="dp_probe", key="k", out_dir=str(out / "job"), inputs={}, config={})
    results = []
    for port in ports[1:]:  # the second finds the output complete, on every rank
        os.environ["MASTER_PORT"] = str(port)
        results.append(run_job(job))
    (out / f"job_rank{rank}.json").write_text(json.dumps(results))


def rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_params(a: dict, b: dict, rtol: float, atol: float) -> None:
    """Equal within (rtol, atol), and all but one element in 1,000 within (rtol, 1e-6) where atol is larger."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        close = (a[k] - b[k]).abs() <= min(atol, 1e-6) + rtol * b[k].abs()
        assert close.float().mean() >= 0.999, k


# Float sums run in another order over 2 ranks than in one process (the losses agree to ~5e-7). Adam
# divides each gradient by its own running scale, so an element whose gradient is rounding noise can move
# by a visible fraction of one step (lr = 3e-3): a few elements in 10,000 differ by ~1e-5 after 8 steps.
# Hence atol 1e-4 (lr / 30) for every element, and 1e-6 for all but a few.
TOL = {"rtol": 1e-5, "atol": 1e-4}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The 2-rank runs (spawned once) and the single-process reference run, all under one directory."""
    root = tmp_path_factory.mktemp("dp")
    write_dataset(root / "shards")
    procs = mp.spawn(_worker, args=(2, free_ports(3), str(root)), nprocs=2, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not procs.join(timeout=1):  # raises if a rank failed
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail(f"the 2-rank runs did not finish within {SPAWN_TIMEOUT_S} s")
    m = model()
    train_loop(
        m, ShardDataset(root / "shards"), LAYOUT, *loop_config(), root / "single", sink(root / "single")
    )
    torch.save(m.state_dict(), root / "single_params.pt")
    return root


def params(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.slow  # shares one spawn of 2 processes (~10-20 s on 2 cores)
def test_two_ranks_match_one_process_of_the_same_global_batch(runs):
    rank0, rank1 = params(runs / "dp_params_rank0.pt"), params(runs / "dp_params_rank1.pt")
    assert_same_params(rank0, rank1, rtol=0, atol=0)  # identical reduced gradients: identical steps
    single = params(runs / "single_params.pt")
    assert_same_params(rank0, single, **TOL)
    assert any(not torch.equal(single[k], model().state_dict()[k]) for k in single)  # it did train
    dp, one = rows(runs / "dp"), rows(runs / "single")
    assert [r["step"] for r in dp] == [r["step"] for r in one] == list(range(1, STEPS + 1))  # each once
    for a, b in zip(dp, one, strict=True):
        for key in ("loss", "text_loss", "image_loss", "grad_norm", "lr", "tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert dp[-1]["tokens"] == STEPS * SEQUENCES * SEQ  # the global batch, not a rank's share


@pytest.mark.slow  # shares one spawn of 2 processes (~10-20 s on 2 cores)
def test_only_rank_0_writes(runs):
    """Rank 1 would have failed on any write (see _forbid_writes_off_rank_0); rank 0's files are there."""
    assert (runs / "dp" / "checkpoints" / "last.pt").is_file()
    progress = json.loads((runs / "dp" / "progress.json").read_text())
    assert progress["step"] == progress["total_steps"] == STEPS
    assert torch.load(runs / "dp" / "checkpoints" / "last.pt", weights_only=False)["step"] == STEPS


@pytest.mark.slow  # shares one spawn of 2 processes (~10-20 s on 2 cores)
def test_a_stop_on_one_rank_stops_both_and_the_resume_ends_equal(runs):
    stopped = torch.load(runs / "stopped_copy" / "checkpoints" / "last.pt", weights_only=False)
    assert stopped["step"] == STOP_AFTER
    assert [r["step"] for r in rows(runs / "stopped_copy")] == list(range(1, STOP_AFTER + 1))
    resumed, straight = rows(runs / "stopped"), rows(runs / "dp")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # no duplicate steps
    for a, b in zip(resumed, straight, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    for rank in (0, 1):
        assert_same_params(
            params(runs / f"resumed_params_rank{rank}.pt"), params(runs / "dp_params_rank0.pt"), **TOL
        )


@pytest.mark.slow  # shares one spawn of 2 processes (~10-20 s on 2 cores)
def test_a_two_rank_checkpoint_resumes_in_one_process(runs):
    """Data positions are global: another world size continues the same stream."""
    m = model()
    train_loop(
        m,
        ShardDataset(runs / "shards"),
        LAYOUT,
        *loop_config(),
        runs / "stopped_copy",
        sink(runs / "stopped_copy"),
    )
    assert_same_params(m.state_dict(), params(runs / "single_params.pt"), **TOL)
    for a, b in zip(rows(runs / "stopped_copy"), rows(runs / "single"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


@pytest.mark.slow  # shares one spawn of 2 processes (~10-20 s on 2 cores)
def test_the_runner_runs_a_data_parallel_stage_on_every_rank_and_writes_on_rank_0(runs):
    for rank in (0, 1):
        assert json.loads((runs / f"job_rank{rank}.json").read_text()) == ["done", "skipped"]
        seen = json.loads((runs / f"dp_probe_rank{rank}.json").read_text())
        # rank 0 has the job's tracker (MLflow when tracking_uri is set; none here), the others NullTracker
        assert seen == {"world": 2, "tracker": "NullTracker"}
    assert (
        RunDir(runs / "job").read_status()["state"] == "done"
    )  # written by rank 0 (rank 1 would have failed)
    assert not torch.distributed.is_initialized()


# --- one process ------------------------------------------------------------------------------------------


def test_other_ranks_skip_stages_that_are_not_data_parallel(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    job = Job(stage="synth", key="k", out_dir=str(tmp_path / "out"), inputs={}, config={})
    assert run_job(job) == "skipped"
    assert not (tmp_path / "out").exists()


def test_extra_stop_is_ored_into_the_signal_stop(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    preempted = {"flag": False}
    seen = []

    def run(ctx) -> None:
        seen.append(ctx.should_stop())
        preempted["flag"] = True  # e.g. the SLURM wrapper's preemption notice arrives
        seen.append(ctx.should_stop())
        raise StopRequested("stopped at step 1 after a checkpoint")

    monkeypatch.setitem(registry._BY_NAME, "fake_stop", Stage("fake_stop", 1, config=lambda cfg: {}, run=run))
    job = Job(stage="fake_stop", key="k", out_dir=str(tmp_path), inputs={}, config={})
    with pytest.raises(StopRequested):
        run_job(job, extra_stop=lambda: preempted["flag"])
    assert seen == [False, True]
    assert RunDir(tmp_path).read_status()["state"] == "stopped"


# --- pure helpers, one process ----------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8, 64])
def test_the_global_batch_does_not_depend_on_the_ranks_or_the_micro_batch(world):
    for micro in (1, 2, 7, 64):
        p = plan_batch(1_000_000, 1152, micro, world)
        assert (p.sequences_per_step, p.tokens_per_step) == (868, 999_936)
        shares = [p.rank_sequences(r) for r in range(world)]
        assert sum(shares) == 868 and max(shares) - min(shares) <= 1
        assert p.micro_batch_size == min(micro, p.sequences_per_rank)
        assert p.accum_steps == -(-p.sequences_per_rank // p.micro_batch_size)


def test_fewer_sequences_than_ranks_is_a_config_error():
    with pytest.raises(ConfigError, match="one sequence per rank"):
        plan_batch(3 * 128, 128, 1, world_size=4)
    cfg = to_run_config(compose_config(["cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=8"]))
    with pytest.raises(ConfigError) as e:  # the demo batch: 1,152 tokens = 4 sequences of 288, 16 ranks
        validate(cfg, arm="t2i")
    msg = str(e.value)
    assert "train.batch_tokens" in msg and "1152" in msg and ">= 4608" in msg
    assert "cluster.nodes=2 x cluster.tasks_per_node=8" in msg and "fewer ranks" in msg


def test_dist_env_from_the_torchrun_variables():
    assert DistEnv.from_env({}) == DistEnv(0, 1, 0)
    env = DistEnv.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main, env.distributed) == (5, 8, 1, False, True)
    assert DistEnv.from_env({"RANK": "0", "WORLD_SIZE": "1"}).is_main
    with pytest.raises(RuntimeError, match="RANK=2, WORLD_SIZE=2"):
        DistEnv.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.current() == DistEnv() and dist.is_main()
    assert dist.any_rank(True) and not dist.any_rank(False)
    assert dist.main_says(True) and dist.global_sum(7) == 7
    with dist.init_distributed() as env:  # WORLD_SIZE absent: no process group
        assert env == DistEnv() and not torch.distributed.is_initialized()


def test_the_loop_refuses_several_ranks_without_a_process_group(monkeypatch, tmp_path):
    """Two processes each training the whole batch and writing the same files would be a silent error."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="not initialised"):
        train_loop(model(), None, LAYOUT, *loop_config(), tmp_path, sink(tmp_path))  # type: ignore[arg-type]
