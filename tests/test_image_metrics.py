"""Caption-match accuracy and sample grids (ablate.evaluate.image_metrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.data.synthetic import generate
from ablate.errors import DataError
from ablate.evaluate import caption_match_accuracy, caption_matches, sample_grid
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


def test_sample_grid_draws_each_reference_beside_its_sample(data, tmp_path: Path):
    from matplotlib.image import imread

    images, captions, _ = data
    plain = imread(str(sample_grid(images[:4], captions[:4], tmp_path / "plain.png", ncols=4)))
    paired = imread(
        str(sample_grid(images[:4], captions[:4], tmp_path / "pair.png", ncols=4, references=images[4:8]))
    )
    assert paired.shape[1] > 1.8 * plain.shape[1]  # two images per cell
    with pytest.raises(DataError, match="references"):
        sample_grid(images[:4], captions[:4], tmp_path / "bad.png", references=images[:3])
