"""GradSync: the gradient sum over 2 real gloo ranks starts during backward and equals the sum of each
rank's gradients, with a different number of micro-batches on each rank (an uneven split)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import get_args

import pytest
import torch
import torch.multiprocessing as mp
from test_distributed import free_ports

from ablate.errors import ConfigError
from ablate.model.transformer import ModelArgs, Transformer
from ablate.schema import GradReduceDtype
from ablate.train import distributed as dist
from ablate.train.grad_sync import REDUCE_DTYPES, GradSync

VOCAB, SEQ = 48, 16
MICRO_BATCHES = {0: 2, 1: 1}  # rank 0 accumulates over two backward passes, rank 1 over one
BUCKET_BYTES = 16 << 10  # small buckets, so the tiny model has many and the overlap is visible


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(hidden_dim=32, n_layers=3, n_heads=2, seq_len=SEQ, vocab_size=VOCAB))


def batch(rank: int, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * rank + i)
    return torch.randint(0, VOCAB, (2, SEQ), generator=g)  # (b, T)


def backward(m: Transformer, ids: torch.Tensor) -> None:
    logits = m(ids[:, :-1])  # (b, T-1, V)
    torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).backward()


def _worker(rank: int, port: int, dtype: str, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    with dist.init_distributed(timeout_s=120):
        m = model()
        first = next(m.parameters())  # tok_embeddings: the last gradient backward produces
        seen: dict[str, int] = {}

        def record(_: torch.Tensor) -> None:
            seen["started"] = sync._next

        # Registered before GradSync's hooks, so it runs first: how many buckets had started by then.
        first.register_post_accumulate_grad_hook(record)
        sync = GradSync(list(m.parameters()), bucket_bytes=BUCKET_BYTES, reduce_dtype=dtype)
        for i in range(MICRO_BATCHES[rank]):
            if i == MICRO_BATCHES[rank] - 1:
                sync.arm()
            backward(m, batch(rank, i))
        sync.finish()
        sync.close()
        torch.save({k: p.grad for k, p in m.named_parameters()}, Path(root) / f"grads_{dtype}_{rank}.pt")
        info = {"buckets": len(sync.buckets), "in_backward": sync.started_in_backward, **seen}
        (Path(root) / f"info_{dtype}_{rank}.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def reduced(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grad_sync")
    for dtype, port in zip(("float32", "bf16"), free_ports(2), strict=True):
        mp.spawn(_worker, args=(port, dtype, str(root)), nprocs=2, join=True)
    return root


def expected_sum() -> dict[str, torch.Tensor]:
    """Both ranks' accumulated gradients added up, in one process."""
    m = model()
    for rank, n in MICRO_BATCHES.items():
        for i in range(n):
            backward(m, batch(rank, i))
    return {k: p.grad for k, p in m.named_parameters() if p.grad is not None}


@pytest.mark.slow  # two spawns of 2 processes (~10 s on 2 cores)
def test_the_sum_over_ranks_equals_the_sum_of_their_gradients(reduced):
    want = expected_sum()
    r0 = torch.load(reduced / "grads_float32_0.pt", weights_only=True)
    r1 = torch.load(reduced / "grads_float32_1.pt", weights_only=True)
    assert r0.keys() == r1.keys() == want.keys()
    for k in want:
        assert torch.equal(r0[k], r1[k]), k  # the same sum on every rank
        torch.testing.assert_close(r0[k], want[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.slow
def test_buckets_start_while_backward_still_runs(reduced):
    for rank in (0, 1):
        info = json.loads((reduced / f"info_float32_{rank}.json").read_text())
        assert info["buckets"] > 3
        # Every bucket started from a hook, and some before the embedding's gradient even existed.
        assert info["in_backward"] == info["buckets"]
        assert 0 < info["started"] < info["buckets"]


@pytest.mark.slow
def test_bf16_reduction_is_close_and_lands_in_float32(reduced):
    want = expected_sum()
    got = torch.load(reduced / "grads_bf16_0.pt", weights_only=True)
    for k in want:
        assert got[k].dtype == torch.float32
        # bf16 keeps 8 mantissa bits: each rank's part (and the sum) is rounded by up to 0.4%, so a
        # tensor's error is a fraction of its norm; an element whose parts cancel can be off by more.
        err = float((got[k] - want[k]).norm() / want[k].norm().clamp(min=1e-12))
        assert err < 1e-2, (k, err)
    assert any(not torch.equal(got[k], want[k]) for k in want)  # it did travel in bf16


def test_one_process_is_a_no_op():
    m = model()
    sync = GradSync(list(m.parameters()), bucket_bytes=BUCKET_BYTES)
    assert not sync.enabled and sync.buckets == []
    sync.arm()
    backward(m, batch(0, 0))
    before = {k: p.grad.clone() for k, p in m.named_parameters()}
    sync.finish()
    assert all(torch.equal(before[k], p.grad) for k, p in m.named_parameters())


def test_an_unknown_reduce_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="train.grad_reduce_dtype"):
        GradSync(list(model().parameters()), reduce_dtype="fp8")


def test_every_reduce_dtype_the_schema_offers_is_implemented_and_no_other():
    assert set(REDUCE_DTYPES) == set(get_args(GradReduceDtype))
