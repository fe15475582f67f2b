"""Training-loop overhead: ablate's train_loop vs a bare forward/backward/optimizer step.

Same model (the demo's tiny open_lm), same batch size, same number of steps, one process. The loop's time
includes everything it adds: shard reads, the loss split, metric logging to a real MLflow SQLite store
(through the background tracker), metrics.jsonl, progress writes and the final checkpoint.

    python bench/loop_overhead.py [--steps 30] [--threads 2] [--precision float32|bf16]

With --precision bf16 both the bare step and the loop run forward and loss under bf16 autocast (the
loop's train.precision=bf16); compare the two runs' bare step times for the bf16 / float32 ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ablate.data.sequence import VocabLayout, layout_t2i
from ablate.data.shards import ShardDataset, ShardWriter, read_batch
from ablate.model.transformer import ModelArgs, Transformer
from ablate.rundir import RunDir
from ablate.schema import OptimConfig, TrainConfig
from ablate.train.loop import precision_context, train_loop

SEQ, MICRO, ACCUM = 288, 8, 1
LAYOUT = VocabLayout(text_vocab_size=8192, codebook_size=256)  # the demo's vocabulary


def make_data(root: Path, n: int = 2048) -> ShardDataset:
    rng = np.random.default_rng(0)
    with ShardWriter(root / "shards", seq_len=SEQ, vocab_size=LAYOUT.size) as w:
        for _ in range(n):
            w.add(layout_t2i(rng.integers(0, 8192, 11), rng.integers(0, 256, 256), LAYOUT, SEQ))
        w.finish({"vocab": LAYOUT.to_dict()})
    return ShardDataset(root / "shards")


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(hidden_dim=128, n_layers=4, n_heads=4, seq_len=SEQ, vocab_size=LAYOUT.size))


def bare(ds: ShardDataset, steps: int, precision: str = "float32") -> float:
    """Seconds for `steps` plain steps on one fixed batch (no data loading, no logging)."""
    m = model()
    autocast = precision_context(precision, torch.device("cpu"))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    batch = read_batch(ds, np.arange(MICRO * ACCUM))
    x, y = batch[:, :-1], batch[:, 1:]
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast:
            logits = m(x)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=LAYOUT.pad
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def full(ds: ShardDataset, steps: int, root: Path, uri: str | None, precision: str = "float32") -> float:
    """Seconds for `steps` steps of train_loop (setup excluded: the timer starts at its first step)."""
    from ablate import tracking

    out = Path(tempfile.mkdtemp(dir=root))
    if uri:
        # One stage run per loop, made as a train job makes its own (ablate.tracking.stage_run).
        exp = tracking.ensure_experiment(uri, "bench")
        run = tracking.get_or_create_stage_run(
            uri, exp, run_key=out.name, stage="train", run_name="b", tags={}, params={}
        )
        assert run is not None  # create=True always returns a run
        tracker = tracking.MLflowTracker(uri, run)
    else:
        tracker = tracking.NullTracker()
    train = TrainConfig(
        total_tokens=SEQ * MICRO * ACCUM * steps,
        batch_tokens=SEQ * MICRO * ACCUM,
        micro_batch_size=MICRO,
        checkpoint_every_tokens=0,
        precision=precision,
    )
    metrics_log = RunDir(out).metrics_log()

    # As a stage's sink (StageContext.log_metrics) logs: metrics.jsonl, then the tracker.
    def log_metrics(metrics: dict[str, float], step: int) -> None:
        metrics_log.append(step, metrics)
        tracker.log_metrics(metrics, step)

    t0 = time.perf_counter()
    train_loop(
        model(),
        ds,
        LAYOUT,
        train,
        OptimConfig(lr=1e-3, warmup_tokens=0),
        out,
        log_metrics,
        log_params=tracker.log_params,
    )
    took = time.perf_counter() - t0
    tracker.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = make_data(root)
        uri = f"sqlite:///{root}/mlflow.db"
        p = args.precision
        full(ds, 2, root, uri, p)  # warm-up: store creation, first allocations
        bare(ds, 2, p)
        b, f = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            b.append(bare(ds, args.steps, p))
            f.append(full(ds, args.steps, root, uri, p))
        mb, mf = statistics.median(b), statistics.median(f)
        print(f"steps={args.steps} batch={MICRO * ACCUM}x{SEQ} threads={args.threads} precision={p}")
        print(f"bare step  {1000 * mb / args.steps:8.1f} ms   (runs: {', '.join(f'{x:.2f}s' for x in b)})")
        print(f"train_loop {1000 * mf / args.steps:8.1f} ms   (runs: {', '.join(f'{x:.2f}s' for x in f)})")
        print(f"overhead   {100 * (mf / mb - 1):+8.1f} %   (ratio {mf / mb:.3f})")


if __name__ == "__main__":
    main()
