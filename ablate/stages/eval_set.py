"""`eval_set`: the reference set of real data (data.eval_path), read once for every arm that samples it.

Writes `captions.jsonl` (key and caption of its first evaluate.n_samples usable samples, in file order:
the prompts of every t2i arm's `evaluate`) and, with evaluate.fid_weights, `fid_reference.npz`: the
mean and covariance of the reference images' Inception pool3 features, with the weights file's sha256.
Computed once per reference set and extractor (the stage key), so 30,000 MS-COCO images are decoded and
featurised once, not once per arm; images stream through in batches and are never held all at once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ablate.atomic import atomic_write_bytes, atomic_write_text
from ablate.data.eval_set import eval_samples, eval_set_config
from ablate.errors import DataError
from ablate.schema import RunConfig
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.inputs import CAPTIONS, FID_REFERENCE, has_eval_set
from ablate.stages.stage import Stage

PROGRESS_EVERY = 1000  # images between log lines


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    e = cfg.evaluate
    rows: list[str] = []
    net = None
    if e.fid_weights:  # imported here: the fid extra is needed only where FID is asked for
        from ablate.evaluate.fid import feature_stats, inception_features, load_inception, weights_sha256
        from ablate.train.distributed import training_device

        net = load_inception(e.fid_weights, training_device())
    feats: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if net is not None and batch:
            feats.append(inception_features(net, np.stack(batch), batch_size=e.batch_size).astype(np.float32))
        batch.clear()

    for key, caption, image in eval_samples(cfg.data, e.n_samples):
        rows.append(json.dumps({"key": key, "caption": caption}, ensure_ascii=False))
        batch.append(image)
        if len(batch) >= e.batch_size:
            flush()
        if len(rows) % PROGRESS_EVERY == 0:
            ctx.log(f"{len(rows)} of {e.n_samples} reference samples")
    flush()
    if not rows:
        raise DataError(f"data.eval_path={cfg.data.eval_path!r} holds no usable sample (image and caption)")
    if len(rows) < e.n_samples:
        ctx.log(f"warning: data.eval_path has only {len(rows)} usable samples, fewer than n_samples")
    metrics = {"eval_samples": float(len(rows))}
    if net is not None:
        mu, sigma = feature_stats(np.concatenate(feats))
        buf = io.BytesIO()
        sha = weights_sha256(str(e.fid_weights))
        np.savez(buf, mu=mu, sigma=sigma, n=np.int64(len(rows)), weights_sha256=np.array(sha))
        atomic_write_bytes(ctx.out_dir / FID_REFERENCE, buf.getvalue())
        ctx.log(f"FID reference statistics of {len(rows)} images (weights sha256 {sha[:12]})")
    atomic_write_text(ctx.out_dir / CAPTIONS, "\n".join(rows) + "\n")
    ctx.log_metrics(metrics, step=0)


def _file_identity(path: str | None) -> dict:
    """A file by path, size and modification time (hashing 100 MB at every plan would cost more)."""
    if not path:
        return {"path": None}
    p = Path(path)
    stat = p.stat() if p.is_file() else None
    return {
        "path": str(p.resolve()) if stat else str(p),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
    }


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the reference samples read and the Inception weights that featurise them."""
    return {
        "eval_set": eval_set_config(cfg.data, cfg.evaluate.n_samples),
        "fid_weights": _file_identity(cfg.evaluate.fid_weights),
        "batch_size": cfg.evaluate.batch_size,  # batched convolutions round differently
    }


STAGE = Stage(
    names.EVAL_SET,
    version=1,
    config=config,
    run=run,
    applies=has_eval_set,
    params=("data.eval_path", "evaluate.n_samples", "evaluate.fid_weights"),
)
