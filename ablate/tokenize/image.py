"""Image tokenizers: the interface every one implements, and a small VQ-VAE for the demo.

At paper scale the tokenizer is MoVQGAN (256x256 -> 32x32 codes of 16,384); here a VQ-VAE trained in about
a minute on the synthetic images plays its part (32x32 -> 16x16 codes of 256). Anything that implements
`ImageTokenizer` and can be loaded by `load_image_tokenizer` can replace it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ablate.atomic import atomic_path, atomic_write_text
from ablate.errors import AssetMissingError, ConfigError, DataError
from ablate.tokenize.pixels import to_input, to_uint8

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


@runtime_checkable
class ImageTokenizer(Protocol):
    """Maps uint8 RGB images (N, H, W, 3) to code grids (N, h*w) in [0, codebook_size) and back."""

    codebook_size: int
    grid: tuple[int, int]

    @property
    def tokens_per_image(self) -> int:
        """h * w."""
        ...

    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> LongTensor (N, h*w), row-major over the code grid."""
        ...

    def decode(self, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N, h*w) codes -> (N, H, W, 3) uint8."""
        ...

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write everything load_image_tokenizer needs into a directory."""
        ...


# --- the VQ-VAE ---


class _PixelNorm(nn.Module):
    """LayerNorm over the channels of each position alone (GroupNorm also averages over the image)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (N, C, H, W) normalised over C


def _norm(ch: int, local: bool = False) -> nn.Module:
    return _PixelNorm(ch) if local else nn.GroupNorm(min(8, ch), ch)


class _ResBlock(nn.Module):
    def __init__(self, ch: int, kernel: int = 1, local: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(ch, local),
            nn.SiLU(),
            nn.Conv2d(ch, ch, kernel, padding=kernel // 2),
            _norm(ch, local),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer; the codebook follows its assignments by EMA, dead codes restart on data."""

    # Buffers (register_buffer), declared so that type checkers see tensors, not nn.Module's __getattr__.
    embed: torch.Tensor  # (codebook_size, dim)
    cluster_size: torch.Tensor  # (codebook_size,) EMA of assignment counts
    embed_sum: torch.Tensor  # (codebook_size, dim) EMA of assigned vectors' sums
    initialised: torch.Tensor  # bool scalar

    def __init__(
        self, codebook_size: int, dim: int, decay: float = 0.95, eps: float = 1e-5, dead_below: float = 0.02
    ) -> None:
        super().__init__()
        self.codebook_size, self.dim, self.decay, self.eps = codebook_size, dim, decay, eps
        self.dead_below = dead_below
        self.register_buffer("embed", torch.randn(codebook_size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of flat (M, dim)."""
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return d.argmin(1)

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor, gen: torch.Generator) -> None:
        # Start the codebook on encoder outputs so no code begins far from the data.
        self.embed.copy_(flat[torch.randint(len(flat), (self.codebook_size,), generator=gen)])
        self.embed_sum.copy_(self.embed)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> None:
        err = (flat - self.embed[idx]).pow(2).sum(1)
        onehot = F.one_hot(idx, self.codebook_size).type(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        # Codes that (almost) no vector picks waste capacity. Move them onto the worst-represented encoder
        # outputs: random ones would mostly be background, which already has plenty of codes.
        # "Dead" is absolute (about one hit in 50 steps): a threshold relative to the mean count would keep
        # killing the codes of rare patches (a triangle's apex), which are exactly the ones worth keeping.
        dead = self.cluster_size < self.dead_below
        n_dead = int(dead.sum())
        if n_dead:
            pool = err.topk(min(len(flat), 4 * n_dead)).indices
            new = flat[pool[torch.randperm(len(pool), generator=gen)[:n_dead]]]
            if len(new) < n_dead:  # pragma: no cover - a batch smaller than the dead codes
                new = flat[torch.randint(len(flat), (n_dead,), generator=gen)]
            self.embed[dead] = new
            self.embed_sum[dead] = new
            self.cluster_size[dead] = 1.0

    def forward(
        self, z: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (N, D, h, w) -> (straight-through quantized z, codes (N, h, w), commitment loss)."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        train_gen = gen if self.training else None  # the codebook learns only in training, given a generator
        if train_gen is not None and not bool(self.initialised):
            self._init_from(flat.detach(), train_gen)
        idx = self.codes(flat)
        if train_gen is not None:
            self._ema_update(flat.detach(), idx, train_gen)
        zq = self.embed[idx].view(n, h, w, d).permute(0, 3, 1, 2)
        commit = F.mse_loss(z, zq.detach())
        # Straight-through: the decoder sees codes, the encoder gets the decoder's gradient unchanged.
        return z + (zq - z).detach(), idx.view(n, h, w), commit


class VQVAE(nn.Module):
    """Conv encoder (downsample 2 or 4) -> vector quantizer -> conv decoder."""

    def __init__(
        self,
        codebook_size: int = 256,
        downsample: int = 2,
        hidden: int = 32,
        embed_dim: int = 16,
        patch_local: bool = False,
    ) -> None:
        super().__init__()
        if downsample not in (1, 2, 4, 8):
            raise ConfigError("tokenizer.downsample", downsample, "1, 2, 4 or 8")
        # The encoder sees its patch (a patchify conv) after one 3x3 conv, and its GroupNorms average over
        # the whole image. patch_local makes a code a function of its patch alone (1x1 first conv, norms
        # per position), so equal patches get equal codes wherever they are: on the demo scenes the other
        # encoder spread the black patch over 42 codes (2.2 nats of code per patch that the language model
        # had to infer from the context), this one gives each of the scenes' ~90 distinct patches one.
        # The decoder's 3x3 convs smooth across patch borders.
        # GroupNorm + SiLU: in a few hundred steps this converges several times faster than plain ReLU.
        k = 1 if patch_local else 3
        enc: list[nn.Module] = [
            nn.Conv2d(3, hidden, k, padding=k // 2),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, downsample, stride=downsample),
            _ResBlock(hidden, local=patch_local),
            _norm(hidden, patch_local),
            nn.SiLU(),
            nn.Conv2d(hidden, embed_dim, 1),
        ]
        dec: list[nn.Module] = [
            nn.Conv2d(embed_dim, hidden, 1),
            _ResBlock(hidden),
            _norm(hidden),
            nn.SiLU(),
            nn.ConvTranspose2d(hidden, hidden, downsample, stride=downsample),
            _ResBlock(hidden, 3),
            _norm(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, 3, 3, padding=1),
        ]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.quantizer = VectorQuantizer(codebook_size, embed_dim)

    def forward(
        self, x: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x in [-1, 1] (N, 3, H, W) -> (reconstruction, codes, commitment loss)."""
        zq, idx, commit = self.quantizer(self.encoder(x), gen)
        return self.decoder(zq), idx, commit


class VQVAETokenizer:
    """ImageTokenizer backed by a trained VQVAE."""

    kind = "vqvae"

    def __init__(self, model: VQVAE, image_size: int, config: dict[str, Any]) -> None:
        self.model = model.eval()
        self.image_size = image_size
        self.config = dict(config)
        self.codebook_size = model.quantizer.codebook_size
        side = image_size // int(config["downsample"])
        self.grid = (side, side)

    @property
    def tokens_per_image(self) -> int:
        """h * w."""
        return self.grid[0] * self.grid[1]

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> LongTensor (N, h*w)."""
        x = to_input(images)
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise DataError(
                f"this tokenizer takes {self.image_size}x{self.image_size} images, got {tuple(x.shape[2:])}"
            )
        out = [
            self.model.quantizer(self.model.encoder(x[i : i + batch_size]))[1].flatten(1)
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.tokens_per_image, dtype=torch.long)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, h*w) codes -> (N, H, W, 3) uint8."""
        c = torch.as_tensor(np.asarray(codes) if isinstance(codes, np.ndarray) else codes).long()
        if c.ndim != 2 or c.shape[1] != self.tokens_per_image:
            raise DataError(f"codes must be (N, {self.tokens_per_image}), got shape {tuple(c.shape)}")
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
            raise DataError(f"codes must lie in [0, {self.codebook_size})")
        q = self.model.quantizer
        out = []
        for i in range(0, len(c), batch_size):
            z = q.embed[c[i : i + batch_size]].view(-1, *self.grid, q.dim).permute(0, 3, 1, 2)
            out.append(to_uint8(self.model.decoder(z)))
        return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write config.json and model.pt."""
        d = Path(directory)
        with atomic_path(d / WEIGHTS_FILE) as tmp:
            torch.save(self.model.state_dict(), tmp)
        cfg = {"type": self.kind, "image_size": self.image_size, **self.config}
        atomic_write_text(d / CONFIG_FILE, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


_HOW_TO_PROVIDE = (
    "Give a directory saved by an image tokenizer (config.json + weights) with "
    "tokenizer.image=path tokenizer.image_path=/path/to/dir, or use tokenizer.image=vqvae to train the demo "
    "VQ-VAE. MoVQGAN weights for scale=paper are not shipped: download them as a diffusers VQModel directory "
    "and use tokenizer.image=diffusers tokenizer.image_path=/path/to/dir (see the README)."
)


def load_image_tokenizer(directory: str | os.PathLike[str], image_size: int | None = None) -> ImageTokenizer:
    """Load a saved image tokenizer or a diffusers VQModel directory (which needs image_size).

    AssetMissingError names the missing file and how to provide it.
    """
    d = Path(directory)
    cfg_path = d / CONFIG_FILE
    if not cfg_path.is_file():
        raise AssetMissingError(f"image tokenizer config not found: {cfg_path}. {_HOW_TO_PROVIDE}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{cfg_path} is not valid JSON: {e}") from e
    if isinstance(cfg, dict) and cfg.get("_class_name") == "VQModel":
        from ablate.tokenize.diffusers_vq import load_diffusers_tokenizer

        if image_size is None:
            # A VQModel is fully convolutional: its config does not say which image size it is used at.
            raise ConfigError("image_size", None, "the image side in pixels (data.image_size) for a VQModel")
        return load_diffusers_tokenizer(d, image_size)
    kind = cfg.get("type")
    if kind != VQVAETokenizer.kind:
        raise ConfigError(f"{cfg_path}: type", kind, "'vqvae'", hint=_HOW_TO_PROVIDE)
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise AssetMissingError(f"image tokenizer weights not found: {weights}. {_HOW_TO_PROVIDE}")
    image_size = int(cfg.pop("image_size"))
    cfg.pop("type")
    # Tokenizers saved before patch_local existed have the image-wide encoder.
    model = VQVAE(
        **{k: cfg[k] for k in ("codebook_size", "downsample", "hidden", "embed_dim")},
        patch_local=bool(cfg.get("patch_local", False)),
    )
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return VQVAETokenizer(model, image_size, cfg)


def train_vqvae(
    images: np.ndarray,
    codebook_size: int = 256,
    downsample: int = 2,
    hidden: int = 32,
    steps: int = 500,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    embed_dim: int = 16,
    beta: float = 0.25,
    patch_local: bool = False,
) -> VQVAETokenizer:
    """Train a VQ-VAE on uint8 images (N, H, W, 3); on_step(step, metrics) gets loss, recon_mse, codebook_usage.

    recon_mse is on the [0, 1] pixel scale; codebook_usage is the fraction of codes used in the batch.
    Deterministic for a seed and a thread count. Threads are the caller's (torch.set_num_threads).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"images must be square (N, H, W, 3) uint8, got shape {images.shape}")
    size = images.shape[1]
    if size % downsample:
        raise ConfigError("tokenizer.downsample", downsample, f"a divisor of the image size {size}")
    for key, val in (("codebook_size", codebook_size), ("steps", steps), ("batch_size", batch_size)):
        if val < 1:
            raise ConfigError(f"tokenizer.{key}", val, ">= 1")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = VQVAE(codebook_size, downsample, hidden, embed_dim, patch_local)
    data = to_input(torch.from_numpy(images))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        # Short warm-up, then cosine to 10%: the last steps settle the codebook-decoder pairing.
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))

    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = data[torch.randint(len(data), (min(batch_size, len(data)),), generator=gen)]
        recon, idx, commit = model(x, gen)
        mse = F.mse_loss(recon, x)
        loss = mse + beta * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            used = torch.unique(idx).numel()
            on_step(
                step,
                {
                    "loss": loss.item(),
                    "recon_mse": mse.item() / 4.0,  # [-1, 1] -> [0, 1] pixel scale
                    "commit_loss": commit.item(),
                    "codebook_usage": used / codebook_size,
                    "lr": lr_at(step),
                    "elapsed_s": time.perf_counter() - t0,
                },
            )
    config = {
        "codebook_size": codebook_size,
        "downsample": downsample,
        "hidden": hidden,
        "embed_dim": embed_dim,
        "patch_local": patch_local,
    }
    return VQVAETokenizer(model, size, config)
