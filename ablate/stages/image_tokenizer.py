"""`image_tokenizer`: a VQ-VAE trained on the demo images, or a given tokenizer (e.g. MoVQGAN) from disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ablate.atomic import atomic_write_json, read_json
from ablate.config.schema import RunConfig
from ablate.rundir import RunDir
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.stage import Stage
from ablate.stages.synth import load_split
from ablate.tokenize.image import ImageTokenizer, load_image_tokenizer, train_vqvae


def open_image_tokenizer(tok_dir: Path) -> ImageTokenizer:
    """The image tokenizer an `image_tokenizer` output refers to."""
    ref = read_json(Path(tok_dir) / "refs.json", {})
    return load_image_tokenizer(ref.get("image_path") or Path(tok_dir) / "vqvae")


def run(ctx: StageContext) -> None:
    t = ctx.cfg.tokenizer
    refs = {}
    if t.image == "path" and t.image_path:  # validation requires image_path for image=path
        tok = load_image_tokenizer(t.image_path)
        refs["image_path"] = str(Path(t.image_path).resolve())
    else:
        images, _, _ = load_split(ctx.inputs["synth"], "train")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if step % 25 == 0:
                ctx.tracker.log_metrics({f"vq_{k}": float(v) for k, v in metrics.items()}, step)
                elapsed = metrics.get("elapsed_s", 0.0)
                RunDir(ctx.out_dir).write_progress(
                    {
                        "step": step,
                        "total_steps": t.vq_steps,
                        "loss": metrics["recon_mse"],
                        "eta_s": elapsed / max(step, 1) * (t.vq_steps - step),
                    },
                )
            if step % 200 == 0:
                ctx.log(
                    f"vq-vae step {step}/{t.vq_steps} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                )

        tok = train_vqvae(
            np.array(images),
            codebook_size=t.codebook_size,
            downsample=t.downsample,
            hidden=t.vq_hidden,
            steps=t.vq_steps,
            batch_size=t.vq_batch_size,
            lr=t.vq_lr,
            seed=ctx.cfg.data.seed,
            on_step=on_step,
        )
        tok.save(ctx.out_dir / "vqvae")
    atomic_write_json(ctx.out_dir / "refs.json", refs)

    # Reconstruction error on validation images (never trained on).
    val_images, _, _ = load_split(ctx.inputs["synth"], "val")
    sample = np.array(val_images[:256])
    with torch.no_grad():
        recon = tok.decode(tok.encode(sample))
    mse = float(np.mean((recon.astype(np.float32) - sample.astype(np.float32)) ** 2) / 255**2)
    summary = {"recon_mse": mse, "codebook_size": tok.codebook_size, "image_tokens": tok.tokens_per_image}
    atomic_write_json(ctx.out_dir / "summary.json", summary)
    ctx.tracker.log_metrics({k: float(v) for k, v in summary.items()}, step=t.vq_steps)
    ctx.log("validation " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the image tokenizer's settings (the images come in through `synth`'s key)."""
    t = cfg.tokenizer
    fields = (
        *("image", "image_path", "codebook_size", "downsample"),
        *("vq_hidden", "vq_steps", "vq_batch_size", "vq_lr"),
    )
    return {k: getattr(t, k) for k in fields}


STAGE = Stage(
    names.IMAGE_TOKENIZER,
    version=1,
    config=config,
    run=run,
    inputs=(names.SYNTH,),
    params=("tokenizer", "data"),
)
