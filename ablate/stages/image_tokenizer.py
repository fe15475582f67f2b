"""`image_tokenizer`: a VQ-VAE trained on the demo images, or a given tokenizer (e.g. MoVQGAN) from disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.atomic import atomic_write_json
from ablate.errors import ConfigError
from ablate.rundir import RunDir
from ablate.schema import RunConfig
from ablate.splits import TRAIN, VAL
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.inputs import load_split
from ablate.stages.stage import Stage
from ablate.tokenize.diffusers_vq import KIND as DIFFUSERS
from ablate.tokenize.diffusers_vq import load_diffusers_tokenizer

if TYPE_CHECKING:  # torch and the code that needs it load when the stage runs (ablate.stages.common)
    pass


def run(ctx: StageContext) -> None:
    import torch

    from ablate.tokenize.image import load_image_tokenizer, train_vqvae

    t = ctx.cfg.tokenizer
    refs: dict[str, object] = {}
    extra: dict[str, object] = {}
    if t.image == "path" and t.image_path:  # validation requires image_path for image=path
        tok = load_image_tokenizer(t.image_path)
        refs["image_path"] = str(Path(t.image_path).resolve())
    elif t.image == DIFFUSERS and t.image_path:  # and for image=diffusers
        size = ctx.cfg.data.image_size
        dtok = load_diffusers_tokenizer(t.image_path, size, codebook_size=t.codebook_size)
        if dtok.grid != (size // t.downsample, size // t.downsample):
            raise ConfigError(
                "tokenizer.downsample", t.downsample, f"{size // dtok.grid[0]} (the VQModel's downsampling)"
            )
        refs = {
            "kind": DIFFUSERS,
            "image_path": dtok.path,
            "image_size": size,
            "fingerprint": dtok.fingerprint,
        }
        extra = {"image_path": dtok.path, "fingerprint": dtok.fingerprint}
        ctx.log(f"VQModel {dtok.path} fingerprint {dtok.fingerprint} on {dtok.device}")
        tok = dtok
    else:
        images, _, _ = load_split(ctx.inputs[names.SYNTH], TRAIN)

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if step % 25 == 0:
                ctx.log_metrics({f"vq_{k}": float(v) for k, v in metrics.items()}, step)
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
            patch_local=t.vq_patch_local,
        )
        tok.save(ctx.out_dir / "vqvae")
    atomic_write_json(ctx.out_dir / "refs.json", refs)

    summary: dict[str, float] = {"codebook_size": tok.codebook_size, "image_tokens": tok.tokens_per_image}
    if names.SYNTH in ctx.inputs:  # reconstruction error on validation images (never trained on)
        from ablate.evaluate.image_metrics import caption_match_accuracy

        val_images, val_captions, _ = load_split(ctx.inputs[names.SYNTH], VAL)
        sample = np.array(val_images[:256])
        with torch.no_grad():
            recon = tok.decode(tok.encode(sample))
        summary["recon_mse"] = float(
            np.mean((recon.astype(np.float32) - sample.astype(np.float32)) ** 2) / 255**2
        )
        # The ceiling of every arm's caption match: a sample can only match if its codes can draw it.
        summary["recon_caption_match"] = caption_match_accuracy(recon, val_captions[: len(sample)])
    atomic_write_json(ctx.out_dir / "summary.json", {**summary, **extra})
    ctx.log_metrics({k: float(v) for k, v in summary.items()}, step=t.vq_steps)
    ctx.log("validation " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the image tokenizer's settings (the images come in through `synth`'s key)."""
    t = cfg.tokenizer
    fields = (
        *("image", "image_path", "codebook_size", "downsample"),
        *("vq_hidden", "vq_steps", "vq_batch_size", "vq_lr", "vq_patch_local"),
    )
    out = {k: getattr(t, k) for k in fields}
    if t.image == "diffusers":  # a VQModel's code grid depends on the image size it is used at
        out["image_size"] = cfg.data.image_size
    return out


STAGE = Stage(
    names.IMAGE_TOKENIZER,
    # 2: image=diffusers loads the VQModel (before, it fell through to training the demo VQ-VAE).
    # 3: tokenizer.vq_patch_local.
    version=3,
    config=config,
    run=run,
    inputs=(names.SYNTH,),
    params=("tokenizer", "data"),
)
