"""VQ-VAE image tokenizer: shapes, code range, save/load, a short training run learns, missing assets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.data.synthetic import generate
from ablate.errors import AssetMissingError, ConfigError, DataError
from ablate.tokenize.image import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ImageTokenizer,
    VQVAETokenizer,
    load_image_tokenizer,
    train_vqvae,
)

IMAGES = generate(64, seed=0, split="train")[0]


@pytest.fixture(scope="module")
def trained() -> tuple[VQVAETokenizer, list[dict[str, float]]]:
    log: list[dict[str, float]] = []
    tok = train_vqvae(
        IMAGES, codebook_size=64, downsample=2, hidden=16, steps=60, batch_size=8, lr=3e-3, seed=0,
        on_step=lambda step, m: log.append({"step": step, **m}),
    )  # fmt: skip
    return tok, log


def test_interface_shapes_and_range(trained: tuple[VQVAETokenizer, list]) -> None:
    tok, _ = trained
    assert isinstance(tok, ImageTokenizer)
    assert tok.grid == (16, 16) and tok.tokens_per_image == 256 and tok.codebook_size == 64
    codes = tok.encode(IMAGES[:5])
    assert codes.dtype == torch.long and codes.shape == (5, 256)
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    assert torch.equal(tok.encode(torch.from_numpy(IMAGES[:5])), codes)  # tensors work too
    out = tok.decode(codes)
    assert out.dtype == np.uint8 and out.shape == (5, 32, 32, 3)
    assert np.array_equal(tok.decode(codes.numpy()), out)


def test_training_lowers_reconstruction_error(trained: tuple[VQVAETokenizer, list]) -> None:
    _, log = trained
    assert [m["step"] for m in log] == list(range(60))
    first = np.mean([m["recon_mse"] for m in log[:5]])
    last = np.mean([m["recon_mse"] for m in log[-5:]])
    assert last < 0.5 * first
    assert all(0 < m["codebook_usage"] <= 1 for m in log)
    assert log[-1]["codebook_usage"] > 0.2  # restarts keep the codebook in use


def test_training_is_seeded() -> None:
    kw = dict(codebook_size=16, downsample=4, hidden=8, steps=5, batch_size=4, lr=3e-3)
    a = train_vqvae(IMAGES[:16], seed=1, **kw)
    b = train_vqvae(IMAGES[:16], seed=1, **kw)
    assert a.grid == (8, 8) and a.tokens_per_image == 64
    assert torch.equal(a.encode(IMAGES[:8]), b.encode(IMAGES[:8]))


def test_save_load_round_trip(trained: tuple[VQVAETokenizer, list], tmp_path: Path) -> None:
    tok, _ = trained
    tok.save(tmp_path / "vq")
    again = load_image_tokenizer(tmp_path / "vq")
    assert again.grid == tok.grid and again.codebook_size == tok.codebook_size
    codes = tok.encode(IMAGES[:8])
    assert torch.equal(again.encode(IMAGES[:8]), codes)
    assert np.array_equal(again.decode(codes), tok.decode(codes))


def test_missing_assets_name_the_file_and_the_fix(
    trained: tuple[VQVAETokenizer, list], tmp_path: Path
) -> None:
    with pytest.raises(AssetMissingError) as err:
        load_image_tokenizer(tmp_path / "movqgan")
    msg = str(err.value)
    assert (
        str(tmp_path / "movqgan" / CONFIG_FILE) in msg and "tokenizer.image_path=" in msg and "MoVQGAN" in msg
    )
    trained[0].save(tmp_path / "vq")
    (tmp_path / "vq" / WEIGHTS_FILE).unlink()
    with pytest.raises(AssetMissingError, match=WEIGHTS_FILE):
        load_image_tokenizer(tmp_path / "vq")
    (tmp_path / "vq" / CONFIG_FILE).write_text(json.dumps({"type": "movqgan"}))
    with pytest.raises(ConfigError):
        load_image_tokenizer(tmp_path / "vq")


def test_bad_inputs(trained: tuple[VQVAETokenizer, list]) -> None:
    tok, _ = trained
    with pytest.raises(DataError):
        tok.encode(np.zeros((2, 48, 48, 3), np.uint8))
    with pytest.raises(DataError):
        tok.encode(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(DataError):
        tok.decode(torch.full((1, 256), 64))
    with pytest.raises(DataError):
        tok.decode(torch.zeros(1, 100, dtype=torch.long))
    with pytest.raises(ConfigError):
        train_vqvae(IMAGES[:4], downsample=3, steps=1)


def test_patch_local_encoder_gives_equal_patches_equal_codes(tmp_path: Path) -> None:
    tok = train_vqvae(IMAGES, codebook_size=64, downsample=2, hidden=16, steps=30, batch_size=8, seed=0,
                      patch_local=True)  # fmt: skip
    codes = tok.encode(IMAGES).numpy()  # (N, 256)
    # The black background: every all-black 2x2 patch of every image maps to one code, whatever is
    # around it (shapes, or other images' statistics); the image-wide encoder spreads it over several.
    patches = (
        IMAGES.reshape(len(IMAGES), 16, 2, 16, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(len(IMAGES), 256, -1)
    )
    black = (patches == 0).all(-1)
    assert black.sum() > 1000 and len(np.unique(codes[black])) == 1
    wide = train_vqvae(IMAGES, codebook_size=64, downsample=2, hidden=16, steps=30, batch_size=8, seed=0)
    assert len(np.unique(wide.encode(IMAGES).numpy()[black])) > 1
    # The setting is saved with the weights and survives a reload.
    tok.save(tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["patch_local"] is True
    assert torch.equal(load_image_tokenizer(tmp_path).encode(IMAGES), tok.encode(IMAGES))


def test_tokenizers_saved_before_patch_local_load_as_image_wide(
    trained: tuple[VQVAETokenizer, list], tmp_path: Path
) -> None:
    tok, _ = trained
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    del cfg["patch_local"]  # as an older version wrote it
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    assert torch.equal(load_image_tokenizer(tmp_path).encode(IMAGES[:4]), tok.encode(IMAGES[:4]))
