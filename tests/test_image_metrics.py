"""Caption-match accuracy, sample grids and FID (ablate.evaluate.image_metrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ablate.data.synthetic import generate
from ablate.errors import AssetMissingError, DataError
from ablate.evaluate import (
    caption_match_accuracy,
    caption_matches,
    extract_features,
    fid_from_features,
    frechet_distance,
    load_feature_extractor,
    sample_grid,
)
from ablate.evaluate.image_metrics import colours_present, scene_valid


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str], list]:
    return generate(48, seed=3, split="train", size=32)


# --- caption match -----------------------------------------------------------------------------------


def test_ground_truth_renders_match_scenes_and_captions(data):
    images, captions, scenes = data
    assert caption_match_accuracy(images, scenes) == 1.0
    assert caption_match_accuracy(images, captions) == 1.0
    assert caption_match_accuracy(torch.from_numpy(images), captions) == 1.0


def test_shuffled_images_are_near_chance(data):
    images, captions, scenes = data
    # A derangement (roll by one): no image is scored against its own caption.
    assert caption_match_accuracy(np.roll(images, 1, axis=0), scenes) < 0.3
    perm = np.random.default_rng(0).permutation(len(images))
    assert caption_match_accuracy(images[perm], captions) < 0.3
    assert caption_match_accuracy(np.zeros_like(images), captions) == 0.0  # blank images match nothing


def test_colour_match_is_partial_credit_with_a_chance_level(data):
    images, captions, scenes = data
    assert colours_present(images, scenes).all() and colours_present(images, captions).all()
    shuffled = colours_present(np.roll(images, 1, axis=0), captions).mean()
    assert 0.0 < shuffled < 0.5  # some images happen to hold another caption's colours: the chance level
    # Extra shapes do not remove the credit (exact caption match would): two scenes' pixels overlaid.
    both = np.maximum(images, np.roll(images, 1, axis=0))
    assert colours_present(both, captions).mean() > 0.9
    assert not colours_present(np.zeros_like(images), captions).any()


def test_scene_valid_accepts_renders_and_rejects_blank_or_noise(data):
    images, _, _ = data
    assert scene_valid(images, max_shapes=2).all()
    assert not scene_valid(np.zeros_like(images), max_shapes=2).any()
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    assert scene_valid(noise, max_shapes=2).mean() < 0.1


def test_caption_match_input_errors(data):
    images, captions, _ = data
    with pytest.raises(DataError, match="pair one to one"):
        caption_match_accuracy(images, captions[:-1])
    with pytest.raises(DataError, match="uint8"):
        caption_match_accuracy(images.astype(np.float32), captions)
    with pytest.raises(DataError, match="at least one"):
        caption_match_accuracy(images[:0], [])
    with pytest.raises(DataError, match="grammar"):
        caption_match_accuracy(images[:1], ["a photo of a cat"])


# --- sample grid -------------------------------------------------------------------------------------


def test_sample_grid_writes_png(data, tmp_path: Path):
    images, captions, scenes = data
    marks = caption_matches(images[:6], scenes[:6]).tolist()
    out = sample_grid(
        images[:6], captions[:6], tmp_path / "fig5" / "grid.png", ncols=4, marks=marks, title="t"
    )
    assert out == tmp_path / "fig5" / "grid.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary file left behind
    with pytest.raises(DataError, match="captions"):
        sample_grid(images[:3], captions[:2], tmp_path / "bad.png")


# --- FID ---------------------------------------------------------------------------------------------


def test_fid_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(200, 16))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(torch.from_numpy(feats).float(), feats) == pytest.approx(0.0, abs=1e-4)
    few = feats[:5]  # fewer samples than dimensions: singular covariance, still finite and ~0
    assert fid_from_features(few, few) == pytest.approx(0.0, abs=1e-8)


def test_fid_grows_with_mean_shift():
    feats = np.random.default_rng(1).normal(size=(300, 8))
    fids = [fid_from_features(feats, feats + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False))
    # A translation keeps the covariance, so FID is exactly the squared mean shift: 8 dims x s^2.
    assert fids[-1] == pytest.approx(8 * 2.0**2, rel=1e-9)


def test_frechet_distance_matches_reference_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sa, sb = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)  # non-commuting SPD covariances
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    # tr sqrt(Sa Sb) from the (real, positive) eigenvalues of the non-symmetric product itself.
    tr_covmean = np.sqrt(np.linalg.eigvals(sa @ sb).real).sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_covmean
    assert frechet_distance(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-10)
    # Diagonal case in closed form: sum (sqrt(a_i) - sqrt(b_i))^2.
    da, db = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    assert frechet_distance(np.zeros(3), np.diag(da), np.zeros(3), np.diag(db)) == pytest.approx(1 + 0 + 4)


def test_fid_input_errors():
    with pytest.raises(DataError, match="N >= 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(DataError, match="one D"):
        fid_from_features(np.ones((5, 4)).cumsum(0), np.ones((5, 3)).cumsum(0))


@pytest.mark.parametrize("path", [None, "does/not/exist/pt_inception-2015-12-05.pth"])
def test_missing_fid_weights_name_the_key(path):
    with pytest.raises(
        AssetMissingError, match=r"evaluate\.fid_weights=/path/to/pt_inception-2015-12-05\.pth"
    ):
        load_feature_extractor(path)


class _MeanColour(nn.Module):
    """A stand-in feature extractor: per-channel mean and max, (N, 3, H, W) -> (N, 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1) * self.scale


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_feature_extractor_contract(data, tmp_path: Path):
    images = data[0]
    scripted = torch.jit.script(_MeanColour())
    scripted.save(str(tmp_path / "net.pt"))
    net = load_feature_extractor(tmp_path / "net.pt")  # a TorchScript archive with its weights
    feats = extract_features(net, images, batch_size=7)
    assert feats.shape == (len(images), 6)
    assert np.allclose(feats[:, :3], images.reshape(len(images), -1, 3).mean(1) / 255.0)
    # A plain state dict loads into a given module; a state dict alone is not a TorchScript archive.
    torch.save({"scale": torch.full((6,), 2.0)}, tmp_path / "weights.pth")
    net2 = load_feature_extractor(tmp_path / "weights.pth", module=tmp_path / "net.pt")
    assert np.allclose(extract_features(net2, images), 2 * feats)
    with pytest.raises(DataError, match="not a TorchScript archive"):
        load_feature_extractor(tmp_path / "weights.pth")
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
