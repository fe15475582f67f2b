"""A diffusers `VQModel` directory (e.g. MoVQGAN, the paper's image tokenizer) behind `ImageTokenizer`.

MoVQGAN-270M has Kandinsky 3's `movq` architecture: block_out_channels (256, 512, 512, 1024), so 8x
downsampling (256x256 -> 32x32 = 1,024 codes), num_vq_embeddings 16,384, vq_embed_dim 4, spatial norm.

Only the standard library is imported at module level: validation reads config.json at launch
(`check_vq_config`) without paying for torch, and diffusers is imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.errors import AssetMissingError, ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    import torch

CONFIG_FILE = "config.json"
VQ_CLASS = "VQModel"
KIND = "diffusers"
# The files VQModel.from_pretrained reads, in the order it prefers them: (single file, shard index).
_WEIGHTS = (
    ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
    ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json"),
)

WHERE_FROM = (
    "tokenizer.image=diffusers needs a diffusers VQModel directory: config.json (with "
    f'"_class_name": "{VQ_CLASS}") and diffusion_pytorch_model.safetensors (or .bin). MoVQGAN comes as one: '
    "Kandinsky 3's `movq` subfolder (huggingface-cli download kandinsky-community/kandinsky-3 "
    "--include 'movq/*', on a machine with internet, then tokenizer.image_path=.../movq), or ai-forever's "
    "SBER-MoVQGAN checkpoint converted to diffusers' VQModel layout and written with save_pretrained"
)


def _missing_what(d: Path) -> str:
    """Why d is not a VQModel directory, or '' when it has a config.json."""
    if not d.is_dir():
        return f"directory not found: {d}"
    if not (d / CONFIG_FILE).is_file():
        sub = [p.parent.name for p in sorted(d.glob(f"*/{CONFIG_FILE}"))]
        # A whole pipeline (Kandinsky 3) keeps its VQModel in a subfolder: name it.
        hint = f" (it has subfolders with one: {', '.join(sub)}; point at the VQModel's)" if sub else ""
        return f"no {CONFIG_FILE} in {d}{hint}"
    return ""


def read_vq_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """A VQModel directory's config.json; AssetMissingError if absent, ConfigError if not a VQModel."""
    d = Path(directory)
    if problem := _missing_what(d):
        raise AssetMissingError(f"{problem}. {WHERE_FROM}")
    path = d / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("_class_name") != VQ_CLASS:
        found = cfg.get("_class_name") if isinstance(cfg, dict) else cfg
        raise ConfigError(f"{path}: _class_name", found, f"'{VQ_CLASS}'", hint=WHERE_FROM)
    return cfg


def vq_geometry(cfg: dict[str, Any]) -> tuple[int, int]:
    """(codebook size, downsampling factor) of a VQModel config."""
    # diffusers' defaults for keys a config.json may leave out.
    codes = int(cfg.get("num_vq_embeddings", 256))
    blocks = cfg.get("block_out_channels", [64])
    # Every encoder block but the last halves the resolution.
    return codes, 2 ** (len(blocks) - 1)


def check_vq_config(
    directory: str | os.PathLike[str] | None,
    codebook_size: int,
    downsample: int,
    arm: str | None = None,
) -> None:
    """ConfigError unless directory holds a VQModel with this codebook size and downsampling (json only)."""
    d = Path(directory or "")
    if problem := _missing_what(d):
        raise ConfigError(
            "tokenizer.image_path", str(directory), "a diffusers VQModel directory", arm, problem
        )
    try:
        cfg = read_vq_config(d)
    except (AssetMissingError, DataError) as e:  # pragma: no cover - raced with a deletion, or bad JSON
        raise ConfigError("tokenizer.image_path", str(d), "a diffusers VQModel directory", arm, str(e)) from e
    except ConfigError as e:
        raise ConfigError(e.key, e.value, e.allowed, arm, WHERE_FROM) from e
    codes, factor = vq_geometry(cfg)
    if codes != codebook_size:
        raise ConfigError(
            "tokenizer.codebook_size",
            codebook_size,
            f"{codes} (num_vq_embeddings of {d / CONFIG_FILE})",
            arm,
            f"set tokenizer.codebook_size={codes}",
        )
    if factor != downsample:
        raise ConfigError(
            "tokenizer.downsample",
            downsample,
            f"{factor} (2 ** (len(block_out_channels) - 1) of {d / CONFIG_FILE})",
            arm,
            f"set tokenizer.downsample={factor}",
        )


def weight_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The weights files from_pretrained loads (an index and its shards, or one file); [] if none."""
    d = Path(directory)
    for single, index in _WEIGHTS:
        if (d / single).is_file():
            return [d / single]
        if (d / index).is_file():
            shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            return [d / index, *(d / s for s in shards)]
    return []


def fingerprint(directory: str | os.PathLike[str]) -> str:
    """sha256 over config.json and the weights files (names and bytes), 16 hex digits."""
    d = Path(directory)
    h = hashlib.sha256()
    for path in [d / CONFIG_FILE, *weight_files(d)]:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


class DiffusersVQTokenizer:
    """ImageTokenizer backed by a diffusers VQModel; runs in float32 on CUDA when available."""

    kind = KIND

    def __init__(
        self, model: Any, image_size: int, path: str | os.PathLike[str] | None = None, fp: str = ""
    ) -> None:
        import torch

        # float32 always: in bf16 the nearest of 16,384 codes flips between near-ties, so the same image
        # would get different codes on different hardware or batch sizes.
        if next(model.parameters()).dtype != torch.float32:
            model = model.to(torch.float32)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.codebook_size, factor = vq_geometry(dict(model.config))
        if image_size % factor:
            raise ConfigError(
                "data.image_size", image_size, f"a multiple of the VQModel's downsampling {factor}"
            )
        self.image_size = image_size
        self.grid = (image_size // factor, image_size // factor)
        self.embed_dim = int(model.quantize.vq_embed_dim)
        self.path = str(path) if path is not None else None
        self.fingerprint = fp

    @property
    def tokens_per_image(self) -> int:
        """h * w."""
        return self.grid[0] * self.grid[1]

    def encode(self, images: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> LongTensor (N, h*w), row-major over the latent grid (on the CPU)."""
        import torch

        from ablate.tokenize.pixels import to_input

        x = to_input(images)
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise DataError(
                f"this tokenizer takes {self.image_size}x{self.image_size} images, got {tuple(x.shape[2:])}"
            )
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                chunk = x[i : i + batch_size].to(self.device, torch.float32)
                latents = self.model.encode(chunk).latents
                if tuple(latents.shape[2:]) != self.grid:
                    raise DataError(
                        f"the VQModel gave a {tuple(latents.shape[2:])} latent grid, not {self.grid}"
                    )
                # quantize -> (z_q, loss, (perplexity, min_encodings, indices)); the indices are flat over
                # (N, h, w) in that order, i.e. row-major per image.
                indices = self.model.quantize(latents)[2][2]
                out.append(indices.reshape(len(chunk), -1).long().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.tokens_per_image, dtype=torch.long)

    def decode(self, codes: torch.Tensor | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, h*w) codes -> (N, H, W, 3) uint8."""
        import numpy as np
        import torch

        from ablate.tokenize.pixels import to_uint8

        c = torch.as_tensor(np.asarray(codes) if isinstance(codes, np.ndarray) else codes).long()
        if c.ndim != 2 or c.shape[1] != self.tokens_per_image:
            raise DataError(f"codes must be (N, {self.tokens_per_image}), got shape {tuple(c.shape)}")
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
            raise DataError(f"codes must lie in [0, {self.codebook_size})")
        out = []
        with torch.no_grad():
            for i in range(0, len(c), batch_size):
                flat = c[i : i + batch_size].to(self.device).reshape(-1)
                shape = (len(flat) // self.tokens_per_image, *self.grid, self.embed_dim)
                if self.model.config.get("lookup_from_codebook", False):
                    # This VQModel looks codes up itself when given indices and not told to quantize.
                    sample = self.model.decode(flat, force_not_quantize=True, shape=shape).sample
                else:
                    zq = self.model.quantize.get_codebook_entry(flat, shape)  # (n, embed_dim, h, w)
                    sample = self.model.decode(zq, force_not_quantize=True).sample
                out.append(to_uint8(sample.float().cpu()))
        return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the VQModel directory (config.json + safetensors) with save_pretrained."""
        self.model.save_pretrained(directory)


def load_diffusers_tokenizer(
    directory: str | os.PathLike[str],
    image_size: int,
    codebook_size: int | None = None,
    device: str | None = None,
) -> DiffusersVQTokenizer:
    """Load a VQModel directory offline; ConfigError if its codebook is not codebook_size (when given)."""
    d = Path(directory)
    cfg = read_vq_config(d)
    codes, _ = vq_geometry(cfg)
    if codebook_size is not None and codes != codebook_size:
        raise ConfigError(
            "tokenizer.codebook_size",
            codebook_size,
            f"{codes} (num_vq_embeddings of {d / CONFIG_FILE})",
            hint=f"set tokenizer.codebook_size={codes}",
        )
    if not weight_files(d):
        raise AssetMissingError(f"no VQModel weights (diffusion_pytorch_model.*) in {d}. {WHERE_FROM}")
    import torch
    from diffusers import VQModel

    fp = fingerprint(d)
    # low_cpu_mem_usage=False: the fast path needs `accelerate`, which a model this size does not need.
    model = VQModel.from_pretrained(
        d, local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
    )
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return DiffusersVQTokenizer(model, image_size, d.resolve(), fp)
