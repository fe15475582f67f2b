"""Synthetic scenes: determinism, held-out combinations, captions, and the exact pixel -> caption inverse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ablate.data.synthetic import (
    COLOURS,
    HELDOUT_COMBOS,
    PALETTE,
    POSITIONS,
    RELATIONS,
    Scene,
    Shape,
    caption,
    generate,
    matches_caption,
    parse_caption,
    parse_image,
    render,
    sample_scene,
)
from ablate.errors import ConfigError, DataError


def _combos(scenes: list[Scene]) -> set[tuple[str, str]]:
    return {(s.colour, s.kind) for sc in scenes for s in sc.shapes}


def test_generate_is_deterministic_per_seed_and_split() -> None:
    a_img, a_cap, a_sc = generate(40, seed=3, split="train")
    b_img, b_cap, b_sc = generate(40, seed=3, split="train")
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert [s.to_dict() for s in a_sc] == [s.to_dict() for s in b_sc]
    assert generate(40, seed=4, split="train")[1] != a_cap
    assert generate(40, seed=3, split="val")[1] != a_cap  # splits draw from distinct streams


def test_images_shape_dtype_and_palette_only() -> None:
    imgs, caps, scenes = generate(30, seed=0, size=32)
    assert imgs.shape == (30, 32, 32, 3) and imgs.dtype == np.uint8 and len(caps) == len(scenes) == 30
    allowed = {(0, 0, 0), *PALETTE.values()}
    assert {tuple(p) for p in imgs.reshape(-1, 3)} <= allowed
    assert generate(5, seed=0, size=48)[0].shape == (5, 48, 48, 3)


def test_scene_json_round_trip() -> None:
    _, _, scenes = generate(20, seed=1)
    for sc in scenes:
        back = Scene.from_dict(json.loads(json.dumps(sc.to_dict())))
        assert back == sc and np.array_equal(render(back), render(sc))


def test_captions_are_compositional() -> None:
    _, caps, scenes = generate(200, seed=2)
    for cap, sc in zip(caps, scenes, strict=True):
        assert cap == caption(sc)
        if len(sc.shapes) == 1:
            assert sc.position in POSITIONS and sc.relation is None
        else:
            assert sc.relation in RELATIONS and f" {sc.relation} a " in cap
            assert sc.shapes[0].colour != sc.shapes[1].colour  # shapes segment by colour
        attrs, position, relation = parse_caption(cap)
        assert attrs == [(s.colour, s.kind, s.size) for s in sc.shapes]
        assert (position, relation) == (sc.position, sc.relation)
    assert {len(sc.shapes) for sc in scenes} == {1, 2}
    assert all(len(sc.shapes) == 1 for sc in generate(20, seed=2, max_shapes=1)[2])


def test_heldout_combos_absent_from_train_and_val_present_in_heldout() -> None:
    for split in ("train", "val"):
        assert not _combos(generate(1500, seed=0, split=split)[2]) & HELDOUT_COMBOS
    _, _, held = generate(300, seed=0, split="heldout")
    assert all(_combos([sc]) & HELDOUT_COMBOS for sc in held)
    assert _combos(held) >= HELDOUT_COMBOS
    # Each colour and kind of a held-out pair is still seen in training, only the pairing is new.
    train = _combos(generate(1500, seed=0, split="train")[2])
    assert {c for c, _ in train} == set(COLOURS)


@pytest.mark.parametrize(("split", "size"), [("train", 32), ("val", 32), ("heldout", 32), ("train", 48)])
def test_parse_is_exact_on_clean_renders(split: str, size: int) -> None:
    imgs, caps, scenes = generate(300 if size == 32 else 60, seed=5, split=split, size=size)
    for i, (img, cap, sc) in enumerate(zip(imgs, caps, scenes, strict=True)):
        assert matches_caption(img, sc), cap
        if i % 10 == 0:  # the caption text parses to the same check
            assert matches_caption(img, cap), cap
        found = parse_image(img)
        assert sorted((d.colour, d.kind, d.size, d.cx, d.cy) for d in found) == sorted(
            (s.colour, s.kind, s.size, s.cx, s.cy) for s in sc.shapes
        )


def test_shuffled_pairs_score_near_chance() -> None:
    imgs, _, scenes = generate(300, seed=6)
    perm = np.random.default_rng(0).permutation(len(imgs))
    acc = np.mean([matches_caption(imgs[p], sc) for p, sc in zip(perm, scenes, strict=True)])
    assert acc < 0.3


def test_tolerates_mild_noise() -> None:
    imgs, _, scenes = generate(150, seed=7)
    noisy = np.clip(imgs + np.random.default_rng(0).normal(0, 40, imgs.shape), 0, 255).astype(np.uint8)
    assert np.mean([matches_caption(i, sc) for i, sc in zip(noisy, scenes, strict=True)]) >= 0.98


def test_blunted_shape_and_stray_pixels_still_parse() -> None:
    sc = Scene.from_dict(
        {"size": 32, "shapes": [{"kind": "triangle", "colour": "red", "size": "small", "cx": 16, "cy": 16}]}
        | {"position": "center", "relation": None}
    )
    img = render(sc)
    ys, _ = np.nonzero(img[..., 0])
    img[ys.min() : ys.min() + 2] = 0  # decoders often blunt the apex
    img[3, 3] = PALETTE["red"]  # and leave a stray pixel
    img[28, 28] = PALETTE["blue"]
    assert matches_caption(img, sc)


def test_wrong_attribute_fails() -> None:
    imgs, caps, scenes = generate(1, seed=8, max_shapes=1)
    sc = scenes[0]
    for field, value in (("kind", "square" if sc.shapes[0].kind != "square" else "circle"),):
        other = Scene.from_dict(sc.to_dict())
        setattr(other.shapes[0], field, value)
        assert not matches_caption(imgs[0], other)
    other = Scene.from_dict(sc.to_dict())
    other.shapes[0].size = "large" if sc.shapes[0].size == "small" else "small"
    assert not matches_caption(imgs[0], other)
    other = Scene.from_dict(sc.to_dict())
    other.position = next(p for p in POSITIONS if p != sc.position)
    assert not matches_caption(imgs[0], other)
    assert not matches_caption(np.zeros_like(imgs[0]), sc)


def test_errors() -> None:
    with pytest.raises(ConfigError):
        generate(1, seed=0, split="test")
    with pytest.raises(ConfigError):
        sample_scene(np.random.default_rng(0), max_shapes=3)
    with pytest.raises(DataError):
        parse_caption("a purple hexagon")
    with pytest.raises(DataError):
        parse_image(np.zeros((32, 16, 3), np.uint8))


# --- the strict check: everything drawn must be accounted for by the caption ---


def _one(kind: str, colour: str, size: str, cx: int, cy: int, position: str) -> Scene:
    return Scene(32, [Shape(kind, colour, size, cx, cy)], position=position)


def _paint(img: np.ndarray, colour: str, ys: slice, xs: slice) -> np.ndarray:
    out = img.copy()
    out[ys, xs] = PALETTE[colour]
    return out


def test_a_second_shape_of_the_same_colour_fails() -> None:
    sc = _one("circle", "cyan", "large", 16, 25, "bottom")
    img = render(sc)
    assert matches_caption(img, sc)
    twin = render(_one("circle", "cyan", "large", 16, 7, "top"))
    both = np.maximum(img, twin)  # "a large cyan circle at the bottom", drawn twice
    assert not matches_caption(both, sc)
    assert not matches_caption(both, caption(sc))
    assert [d.colour for d in parse_image(both)] == ["cyan", "cyan"]


def test_a_sliver_of_the_same_colour_at_the_edge_fails() -> None:
    sc = _one("square", "magenta", "large", 8, 16, "left")
    img = _paint(render(sc), "magenta", slice(10, 20), slice(31, 32))  # a 1 px wide, 10 px tall sliver
    assert not matches_caption(img, sc)
    sliver = [d for d in parse_image(img) if d.fragment]
    assert len(sliver) == 1 and sliver[0].area == 10


def test_an_extra_blob_of_another_colour_fails() -> None:
    sc = _one("triangle", "yellow", "small", 16, 8, "top")
    img = render(sc)
    extra = np.maximum(img, render(_one("square", "white", "small", 16, 25, "bottom")))
    assert not matches_caption(extra, sc)
    fragment = _paint(img, "green", slice(26, 28), slice(26, 28))  # one 2x2 patch: a drawn fragment
    assert not matches_caption(fragment, sc)


def test_stray_pixels_are_noise_not_fragments() -> None:
    sc = _one("circle", "blue", "large", 24, 16, "right")
    img = _paint(_paint(render(sc), "red", slice(2, 3), slice(2, 4)), "blue", slice(30, 31), slice(3, 4))
    assert matches_caption(img, sc)  # two isolated specks (2 px and 1 px) are decoding noise
    assert [d.colour for d in parse_image(img)] == ["blue"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", "square"), ("size", "small"), ("position", "left"), ("colour", "red")],
)
def test_each_wrong_attribute_fails(field: str, value: str) -> None:
    sc = _one("circle", "green", "large", 24, 16, "right")
    img = render(sc)
    assert matches_caption(img, sc)
    other = Scene.from_dict(sc.to_dict())
    if field == "position":
        other.position = value
    else:
        setattr(other.shapes[0], field, value)
    assert not matches_caption(img, other)


def test_two_shape_scene_with_wrong_relation_or_extra_shape_fails() -> None:
    a, b = Shape("circle", "red", "small", 8, 8), Shape("square", "blue", "small", 24, 24)
    sc = Scene(32, [a, b], relation="above")
    img = render(sc)
    assert matches_caption(img, sc)
    assert not matches_caption(img, Scene(32, [a, b], relation="below"))
    assert not matches_caption(img, Scene(32, [a], position="top"))  # the blue square is unaccounted for
    third = np.maximum(img, render(_one("triangle", "white", "small", 24, 8, "right")))
    assert not matches_caption(third, sc)
