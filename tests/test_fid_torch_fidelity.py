"""ablate's FID equals torch-fidelity's own on the same two image folders and the same weights file.

Needs the fid extra (torch-fidelity, which needs torchvision): `make test` runs this file in the second
venv .venv-fid (torch 2.14.1 + torchvision 0.29.1) and deselects it in the main one. Both sides load
the same weights file: torch-fidelity's network with random weights (tests/fidweights.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fidweights import save_pngs, torch_fidelity_fid, write_random_inception

from ablate.data.synthetic import generate
from ablate.evaluate.fid import (
    FID_WEIGHTS_FILE,
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_features,
    load_inception,
)

pytestmark = pytest.mark.fid


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("inception") / FID_WEIGHTS_FILE)


def write_folder(out: Path, n: int, seed: int, split: str) -> np.ndarray:
    images, _, _ = generate(n, seed=seed, split=split, size=64)  # (n, 64, 64, 3) uint8 scenes
    save_pngs(images, out)
    return images


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("folders")
    a = write_folder(root / "a", 14, seed=1, split="train")
    b = write_folder(root / "b", 12, seed=2, split="val")
    return root / "a", root / "b", a, b


def test_ablate_fid_equals_torch_fidelity_calculate_metrics(weights, folders):
    dir_a, dir_b, images_a, images_b = folders
    theirs = torch_fidelity_fid(dir_a, dir_b, weights)
    net = load_inception(weights)
    # The images as the folders hold them (PNG is lossless), in ablate's (N, H, W, 3) layout.
    fa = inception_features(net, images_a, batch_size=5)
    fb = inception_features(net, images_b, batch_size=5)
    assert fa.shape == (14, 2048) and fb.shape == (12, 2048)
    ours = fid_from_features(fa, fb)
    assert ours > 0.1  # different scenes: a distance well above rounding, so the comparison means something
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_features_do_not_depend_on_the_batch(weights, folders):
    _, _, images, _ = folders
    net = load_inception(weights)
    one = inception_features(net, images[:6], batch_size=1)
    six = inception_features(net, images[:6], batch_size=6)
    np.testing.assert_allclose(one, six, rtol=1e-4, atol=1e-6)
    mu, sigma = feature_stats(six)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
