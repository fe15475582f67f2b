"""Real-data assets for tests, built here: img2dataset-layout shards, a tiny random diffusers VQModel, a
tokenizer.json, and the overrides that point a run at them (nothing is downloaded)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ablate.data import synthetic

IMAGE_SIZE = 32
CODES = 64
TEXT_VOCAB = 300
# Bad samples write_webdataset plants in its first shard, by the reason they are skipped for.
PLANTED_BAD = {"undecodable": 1, "no_caption": 1, "too_small": 1}


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_webdataset(
    root: Path, shards: int = 3, per_shard: int = 40, seed: int = 0, planted: bool = True
) -> list[Path]:
    """`shards` tar shards of synthetic scenes as img2dataset writes them (KEY.png|jpg + KEY.txt +
    KEY.json); with `planted`, the first also holds a grayscale PNG, a CMYK JPEG and the PLANTED_BAD
    samples."""
    root.mkdir(parents=True, exist_ok=True)
    images, captions, _ = synthetic.generate(shards * per_shard, seed, "train", IMAGE_SIZE)
    paths = []
    for s in range(shards):
        members: list[tuple[str, bytes]] = []
        for i in range(s * per_shard, (s + 1) * per_shard):
            key = f"{seed:02d}{s:05d}{i:04d}"
            ext, fmt = ("png", "PNG") if i % 2 == 0 else ("jpg", "JPEG")
            members += [
                (f"{key}.{ext}", _encode(images[i], fmt)),
                (f"{key}.txt", captions[i].encode()),
                (f"{key}.json", json.dumps({"key": key}).encode()),
            ]
        if s == 0 and planted:
            gray, cmyk, small = images[0], images[1], images[2][:8, :8]
            members += [
                ("gray0001.png", _encode(gray, "PNG", "L")),
                ("gray0001.txt", captions[0].encode()),
                ("cmyk0001.jpg", _encode(cmyk, "JPEG", "CMYK")),
                ("cmyk0001.txt", captions[1].encode()),
                ("corrupt001.jpg", _encode(images[3], "JPEG")[:200]),  # truncated: undecodable
                ("corrupt001.txt", captions[3].encode()),
                ("nocapt0001.png", _encode(images[4], "PNG")),  # no .txt: no_caption
                ("small00001.png", _encode(small, "PNG")),  # 8x8: too_small
                ("small00001.txt", captions[2].encode()),
            ]
        path = root / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def tiny_vqmodel(seed: int = 0) -> Any:
    """A tiny random diffusers VQModel: 2 blocks (2x downsampling), CODES codes of dim 4, spatial norm as in
    MoVQGAN (which groups channels by 32, hence 32-channel blocks)."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    model = diffusers.VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 32),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=CODES,
        vq_embed_dim=4,
        norm_num_groups=8,
        norm_type="spatial",
    )
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()  # spread like the latents, so images use many codes
    return model


def write_vqmodel(path: Path, seed: int = 0) -> Path:
    """tiny_vqmodel(seed) saved as a VQModel directory (config.json + weights)."""
    tiny_vqmodel(seed).save_pretrained(path)
    return path


def write_tokenizer(path: Path) -> Path:
    """A tokenizer.json (byte-level BPE) trained on the synthetic captions and a little English."""
    from ablate.tokenize.text import train_bpe

    _, captions, _ = synthetic.generate(400, 1, "train", IMAGE_SIZE)
    train_bpe([*captions, "the quick brown fox jumps over the lazy dog"] * 3, TEXT_VOCAB, path)
    return path


def overrides(root: Path) -> list[str]:
    """The run-config overrides of a run on the assets under root (written here if missing)."""
    if not (root / "shards").exists():
        write_webdataset(root / "shards")
        write_vqmodel(root / "movq")
        write_tokenizer(root / "tokenizer.json")
    return [
        "data=webdataset",
        f"data.path={root / 'shards'}",
        f"data.image_size={IMAGE_SIZE}",
        "data.val_fraction=0.15",
        "data.heldout_fraction=0.15",
        "data.min_image_side=16",
        "data.max_bad_fraction=0.2",
        "tokenizer.image=diffusers",
        f"tokenizer.image_path={root / 'movq'}",
        f"tokenizer.codebook_size={CODES}",
        "tokenizer.downsample=2",
        "tokenizer.text=path",
        f"tokenizer.text_path={root / 'tokenizer.json'}",
        f"model.text_vocab_size={TEXT_VOCAB}",
    ]
