"""Gradients summed over ranks while the last micro-batch's backward is still running.

Each optimizer step accumulates gradients over a rank's micro-batches. Only the last backward needs to
communicate (as DDP's ``no_sync`` on the others), and its gradients become ready layer by layer, from the
output layer back to the embeddings. ``GradSync`` groups the trainable parameters into flat buckets in
that order (about ``bucket_bytes`` each, as DDP's 25 MB buckets) and starts an asynchronous all-reduce of
a bucket as soon as its last gradient has been accumulated, so the reduction of the upper layers overlaps
the backward of the lower ones. ``finish()`` starts what is left, waits, and writes the sums back.

The reduction is a SUM, not DDP's mean: each rank already scaled its loss by its share of the *global*
count of targets (ablate.train.loop), so the sum is the token-weighted mean over the whole global batch
and two ranks equal one process whatever the (uneven) split. Buckets are started strictly in order, on
every rank, whatever order the hooks fire in, so the collectives always match across ranks; a parameter
that got no gradient contributes zeros. Each rank may run a different number of micro-batches (868
sequences over 64 ranks): only its own last one is armed.

Why not DDP itself: it averages where the weighting needs a sum, and reduces during every backward unless
each accumulation runs under ``no_sync``; what it adds beyond the overlap built here (graph-static
bucket re-ordering, unused-parameter search) the fixed open_lm graph does not need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch import nn

from ablate.errors import ConfigError
from ablate.train import distributed as dist

BUCKET_BYTES = 25 << 20  # DDP's default: large enough to amortise a call, small enough to overlap
REDUCE_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class _Bucket:
    params: list[nn.Parameter]
    ready: set[int] = field(default_factory=set)  # indices into params whose gradient is final
    flat: torch.Tensor | None = None  # the buffer in flight
    work: object | None = None  # its async handle

    @property
    def complete(self) -> bool:
        return len(self.ready) == len(self.params)


class GradSync:
    """Sum the gradients of ``params`` over ranks, overlapped with the armed backward (no-op in one process).

    Use: ``arm()`` before a rank's last micro-batch backward of a step, ``finish()`` after it; then the
    ``.grad`` of every parameter is the sum over ranks. ``close()`` removes the hooks.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        *,
        bucket_bytes: int = BUCKET_BYTES,
        reduce_dtype: str = "float32",
    ) -> None:
        if reduce_dtype not in REDUCE_DTYPES:
            raise ConfigError("train.grad_reduce_dtype", reduce_dtype, ", ".join(REDUCE_DTYPES))
        self.enabled = dist.current().distributed
        self.reduce_dtype = REDUCE_DTYPES[reduce_dtype]
        self.buckets: list[_Bucket] = []
        self._where: dict[int, tuple[int, int]] = {}  # id(param) -> (bucket, index in bucket)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._armed = False
        self._next = 0  # the next bucket to start: buckets start in order on every rank
        self.started_in_backward = 0
        """Buckets of the last armed step whose reduction started during backward, before finish()."""
        if not self.enabled:
            return
        size = 0
        # Backward produces the last parameters' gradients first: bucket in reverse registration order.
        for p in reversed(list(params)):
            last = self.buckets[-1] if self.buckets else None
            if last is None or p.dtype != last.params[0].dtype or size + p.nbytes > bucket_bytes:
                last = _Bucket([])
                self.buckets.append(last)
                size = 0
            self._where[id(p)] = (len(self.buckets) - 1, len(last.params))
            last.params.append(p)
            size += p.nbytes
            self._hooks.append(p.register_post_accumulate_grad_hook(self._on_grad))

    def arm(self) -> None:
        """The next backward is this rank's last of the step: start each bucket as soon as it is ready."""
        self._armed = self.enabled
        self.started_in_backward = 0

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self._armed:
            return
        b, i = self._where[id(p)]
        self.buckets[b].ready.add(i)
        while self._next < len(self.buckets) and self.buckets[self._next].complete:
            self._start(self.buckets[self._next])
            self._next += 1
            self.started_in_backward += 1

    def _start(self, bucket: _Bucket) -> None:
        grads = []
        for p in bucket.params:
            if p.grad is None:  # unused in this step's graph: contributes zeros, like every rank
                p.grad = torch.zeros_like(p)
            grads.append(p.grad.reshape(-1))
        flat = torch.cat(grads).to(self.reduce_dtype)  # (sum of numels,)
        if flat.device != dist.collective_device():
            flat = flat.to(dist.collective_device())
        bucket.flat = flat
        bucket.work = tdist.all_reduce(flat, async_op=True)

    def finish(self) -> None:
        """Start the buckets not yet started (in order), wait for all, write the sums into ``.grad``."""
        self._armed = False
        if not self.enabled:
            return
        while self._next < len(self.buckets):
            self._start(self.buckets[self._next])
            self._next += 1
        for bucket in self.buckets:
            flat, work = bucket.flat, bucket.work
            if flat is None or work is None:  # pragma: no cover (every bucket was started above)
                raise RuntimeError("a gradient bucket was never started")
            work.wait()  # type: ignore[attr-defined]
            offset = 0
            for p in bucket.params:
                g = p.grad
                if g is None:  # pragma: no cover (_start gave every parameter a gradient)
                    raise RuntimeError("a reduced parameter lost its gradient")
                n = g.numel()
                g.copy_(flat[offset : offset + n].view_as(g))  # back to the gradient's dtype and device
                offset += n
            bucket.flat = bucket.work = None
            bucket.ready.clear()
        self._next = 0

    def close(self) -> None:
        """Remove the hooks (the model trains on as it was)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
