"""Data-parallel training over torch.distributed, set up from the standard torchrun environment variables.

The SLURM job wrapper (ablate/launch) turns submitit's JobEnvironment into ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; torchrun sets the same ones. This module reads only
those, so training never depends on the launcher. Without them (or with ``WORLD_SIZE=1``) everything here
is a no-op and the trainer runs as one process.

The reductions keep a data-parallel step equal to a one-process step over the same global batch: each
rank weights its loss by its targets over the *global* count of targets and the gradients are summed, so
the result is the token-weighted mean over the whole batch whatever the split between ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ablate.train.loss import LossParts

DEFAULT_TIMEOUT_S = 1800.0  # a rank may wait this long for rank 0 to save a checkpoint or run its probe


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: rank, world size and the rank within its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """From RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1") or 1)
        rank = int(env.get("RANK", "0") or 0)
        local = int(env.get("LOCAL_RANK", str(rank)) or 0)
        if world < 1 or not 0 <= rank < world:
            raise RuntimeError(f"invalid torch.distributed environment: RANK={rank}, WORLD_SIZE={world}")
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current() -> DistEnv:
    """The initialised process group's rank and size, else a single process (whatever the environment says)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), DistEnv.from_env().local_rank)
    return DistEnv()


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return current().is_main


def require_group_if_launched() -> DistEnv:
    """current(), but an error if the environment names several ranks and no process group exists.

    Several processes each training alone on the full batch would silently write the same outputs.
    """
    env = current()
    launched = DistEnv.from_env()
    if launched.distributed and not env.distributed:
        raise RuntimeError(
            f"WORLD_SIZE={launched.world_size} in the environment but torch.distributed is not initialised: "
            "train inside ablate.train.distributed.init_distributed()"
        )
    return env


def training_device(env: DistEnv | None = None) -> torch.device:
    """This rank's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
    env = env or DistEnv.from_env()
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextmanager
def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistEnv]:
    """Join the process group named by the environment (WORLD_SIZE > 1), yield this rank's DistEnv, leave it.

    NCCL when CUDA is available (each rank on cuda:LOCAL_RANK), gloo on the CPU; rendezvous through
    MASTER_ADDR / MASTER_PORT (``env://``). A group that already exists is used as it is and left alone.
    """
    env = DistEnv.from_env()
    if not env.distributed or dist.is_initialized():
        yield current() if dist.is_initialized() else env
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(training_device(env))
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        yield env
    finally:
        dist.destroy_process_group()


def collective_device() -> torch.device:
    """Where collective buffers live: NCCL needs them on this rank's GPU, gloo on the CPU."""
    return training_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if current().distributed:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (e.g. a stop request seen by one rank only)."""
    if not current().distributed:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def main_says(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. whether the output is already complete)."""
    if not current().distributed:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=collective_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def global_sum(value: int) -> int:
    """The sum of an integer over ranks (e.g. the targets of the whole global batch)."""
    if not current().distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=collective_device())
    dist.all_reduce(t)
    return int(t.item())


def broadcast_model(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (a guard: each rank builds the same init anyway)."""
    if not current().distributed:
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            buf = t if t.device == collective_device() else t.to(collective_device())
            dist.broadcast(buf, src=0)
            if buf is not t:
                t.copy_(buf)


def reduce_loss_parts(parts: LossParts) -> LossParts:
    """The global batch's LossParts from each rank's merged one: sums and counts added over ranks.

    Sums travel in float64 so that the logged loss equals a single process's up to rounding.
    """
    if not current().distributed:
        return parts
    dev = parts.loss.device
    stats = torch.stack(
        [
            parts.text_loss.detach().double() * parts.n_text,
            parts.image_loss.detach().double() * parts.n_image,
            parts.n_text.double(),
            parts.n_image.double(),
            parts.n_ignored.double(),
        ]
    ).to(collective_device())  # (5,)
    dist.all_reduce(stats)
    text_sum, image_sum, n_text, n_image, n_ignored = stats.to(dev).unbind()
    dtype = parts.loss.dtype
    return LossParts(
        loss=((text_sum + image_sum) / (n_text + n_image).clamp(min=1)).to(dtype),
        text_loss=(text_sum / n_text.clamp(min=1)).to(dtype),
        image_loss=(image_sum / n_image.clamp(min=1)).to(dtype),
        n_text=n_text.long(),
        n_image=n_image.long(),
        n_ignored=n_ignored.long(),
    )
