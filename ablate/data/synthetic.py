"""Synthetic image-caption pairs: coloured shapes on black, compositional captions, and their exact inverse.

A scene holds one shape with a coarse position ("a large red circle on the left") or two shapes with a
spatial relation ("a small red circle above a large blue square"). Every scene is drawn from a numpy
Generator, so a seed fixes the data. Some (colour, kind) pairs (HELDOUT_COMBOS) never occur in the train
and val splits and occur in every scene of the heldout split, to probe compositional generalisation.

`parse_image` reads every drawn blob back from pixels and `matches_caption` checks an image against a scene
or its caption: exact on clean renders, tolerant of stray pixels of a decoded VQ image, and strict about
anything else drawn (a second shape of a colour, an extra blob, a fragment).
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ablate.errors import ConfigError, DataError
from ablate.splits import HELDOUT, SPLITS

# Saturated colours, pairwise at least 255 apart in one RGB channel, so snapping a noisy pixel to the
# nearest palette entry is robust.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")

# One held-out pair per kind, with distinct colours: each colour and each kind is still seen in training,
# only these combinations are not.
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "square"), ("blue", "circle")}
)

# Least overlap with its best-matching template for a blob to count as a drawn shape in matches_caption.
MIN_IOU = 0.5

_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Fractions of the image side; at 32 px: small 8 px, large 14 px.
_EXTENT = {"small": 0.25, "large": 0.4375}


def grammar_words() -> tuple[str, ...]:
    """Every word a caption of this grammar can contain, sorted (a text tokenizer's vocabulary can then
    hold each as one token, as a tokenizer trained on web text does)."""
    phrases = ["a", *SIZES, *COLOURS, *KINDS, *RELATIONS, *_POSITION_PHRASES.values()]
    return tuple(sorted({w for p in phrases for w in p.split()}))


@dataclass
class Shape:
    """One shape: attributes plus the integer pixel centre it is drawn at."""

    kind: str
    colour: str
    size: str
    cx: int
    cy: int

    def phrase(self) -> str:
        """Noun phrase, e.g. 'a small red circle'."""
        return f"a {self.size} {self.colour} {self.kind}"


@dataclass
class Scene:
    """A rendered scene: 1 shape with `position`, or 2 shapes with `relation` (shape 0 <relation> shape 1)."""

    size: int
    shapes: list[Shape] = field(default_factory=list)
    position: str | None = None
    relation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Inverse of to_dict."""
        return cls(
            size=int(d["size"]),
            shapes=[Shape(**s) for s in d["shapes"]],
            position=d.get("position"),
            relation=d.get("relation"),
        )


@dataclass
class DetectedShape:
    """A shape read back from pixels."""

    colour: str
    kind: str
    size: str
    cx: int
    cy: int
    area: int
    iou: float
    """Overlap with the best-matching rendered shape (1.0 on a clean render)."""
    fragment: bool = False
    """Smaller than any shape (a sliver or a piece): drawn, but not a shape of the grammar."""


def extent_px(size_label: str, image_size: int) -> int:
    """Side of a shape's bounding box in pixels (even, so integer centres align the square to pixels)."""
    return max(4, 2 * round(_EXTENT[size_label] * image_size / 2))


@functools.lru_cache(maxsize=8)
def _pixel_centres(image_size: int) -> np.ndarray:
    return np.mgrid[0:image_size, 0:image_size] + 0.5


def _shape_mask(kind: str, cx: float, cy: float, s: int, image_size: int) -> np.ndarray:
    """Boolean mask of a shape, tested at pixel centres."""
    ys, xs = _pixel_centres(image_size)
    h = s / 2
    if kind == "square":
        return (np.abs(xs - cx) < h) & (np.abs(ys - cy) < h)
    if kind == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= h * h
    if kind == "triangle":
        # Apex up, base at the bottom; half-width grows linearly from the apex.
        depth = ys - (cy - h)
        return (depth >= 0) & (ys < cy + h) & (np.abs(xs - cx) <= depth / 2 + 0.25)
    raise ConfigError("shape.kind", kind, ", ".join(KINDS))


def render(scene: Scene) -> np.ndarray:
    """Draw a scene: (size, size, 3) uint8, black background."""
    img = np.zeros((scene.size, scene.size, 3), dtype=np.uint8)
    for sh in scene.shapes:
        mask = _shape_mask(sh.kind, sh.cx, sh.cy, extent_px(sh.size, scene.size), scene.size)
        img[mask] = PALETTE[sh.colour]
    return img


def caption(scene: Scene) -> str:
    """The scene's caption."""
    if len(scene.shapes) == 1:
        return f"{scene.shapes[0].phrase()} {_POSITION_PHRASES[scene.position or 'center']}"
    a, b = scene.shapes
    return f"{a.phrase()} {scene.relation} {b.phrase()}"


# --- geometry shared by sampling and parsing, so a clean render always parses to its own caption ---


def classify_position(cx: float, cy: float, image_size: int) -> str:
    """Coarse position of a centre: center if near the middle, else the side along the dominant axis."""
    dx, dy = cx - image_size / 2, cy - image_size / 2
    if max(abs(dx), abs(dy)) < image_size / 8:
        return "center"
    if abs(dx) > abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def classify_relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Relation of centre a to centre b along the dominant axis of their displacement (y grows down)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


def _allowed_combos(split: str) -> list[tuple[str, str]]:
    if split not in SPLITS:
        raise ConfigError("data.split", split, ", ".join(SPLITS))
    all_combos = [(c, k) for c in COLOURS for k in KINDS]
    if split == HELDOUT:
        return sorted(HELDOUT_COMBOS)
    return [ck for ck in all_combos if ck not in HELDOUT_COMBOS]


def _pick(rng: np.random.Generator, items: list[Any] | tuple[Any, ...]) -> Any:
    return items[int(rng.integers(len(items)))]


def _sample_attributes(rng: np.random.Generator, split: str, n_shapes: int) -> list[tuple[str, str, str]]:
    """(colour, kind, size) per shape; colours distinct within a scene so shapes segment by colour."""
    seen = [ck for ck in ((c, k) for c in COLOURS for k in KINDS) if ck not in HELDOUT_COMBOS]
    # In the heldout split one slot (chosen at random) carries a held-out pair; the other is any pair.
    special = int(rng.integers(n_shapes)) if split == HELDOUT else -1
    attrs: list[tuple[str, str, str]] = []
    for i in range(n_shapes):
        pool = _allowed_combos(split) if i == special else seen
        pool = [ck for ck in pool if ck[0] not in {a[0] for a in attrs}]
        colour, kind = _pick(rng, pool)
        attrs.append((colour, kind, _pick(rng, SIZES)))
    return attrs


def _centre_range(s: int, image_size: int) -> tuple[int, int]:
    """Inclusive range of integer centres keeping a shape of extent s inside the image."""
    return s // 2, image_size - s // 2


def sample_scene(
    rng: np.random.Generator, split: str = "train", image_size: int = 32, max_shapes: int = 2
) -> Scene:
    """Draw one scene for a split; positions are drawn with margins so the caption is unambiguous."""
    if max_shapes not in (1, 2):
        raise ConfigError("data.max_shapes", max_shapes, "1 or 2")
    if image_size < 24:
        raise ConfigError("data.image_size", image_size, ">= 24 (two large shapes must fit side by side)")
    n_shapes = 1 if max_shapes == 1 else int(rng.integers(1, 3))
    attrs = _sample_attributes(rng, split, n_shapes)
    unit = image_size / 32  # margins below are stated for 32 px and scale with the image
    if n_shapes == 1:
        colour, kind, size = attrs[0]
        position = _pick(rng, POSITIONS)
        lo, hi = _centre_range(extent_px(size, image_size), image_size)
        mid = image_size // 2
        while True:
            # Off-axis jitter stays well inside the decision regions of classify_position.
            if position == "center":
                cx, cy = mid + rng.integers(-1, 2, size=2) * max(1, round(unit))
            else:
                along = int(rng.integers(round(6 * unit), round(10 * unit) + 1))
                across = int(rng.integers(-round(2 * unit), round(2 * unit) + 1))
                sign = -1 if position in ("left", "top") else 1
                if position in ("left", "right"):
                    cx, cy = mid + sign * along, mid + across
                else:
                    cx, cy = mid + across, mid + sign * along
            cx, cy = int(np.clip(cx, lo, hi)), int(np.clip(cy, lo, hi))
            # parse_image recovers (cx, cy) exactly from a clean render; the margin absorbs a decoded
            # image's pixel of drift.
            if (
                classify_position(cx, cy, image_size) == position
                and _position_margin(cx, cy, image_size) >= unit
            ):
                break
        return Scene(image_size, [Shape(kind, colour, size, cx, cy)], position=position)

    relation = _pick(rng, RELATIONS)
    exts = [extent_px(a[2], image_size) for a in attrs]
    gap = max(2, round(2 * unit))
    for _ in range(10_000):
        centres = []
        for s in exts:
            lo, hi = _centre_range(s, image_size)
            centres.append((int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))))
        (ax, ay), (bx, by) = centres
        dx, dy = bx - ax, by - ay
        separated = max(abs(dx), abs(dy)) >= (exts[0] + exts[1]) / 2 + gap
        # A clear dominant axis keeps the relation stable under a pixel or two of decoding noise.
        if separated and abs(abs(dx) - abs(dy)) >= 3 * unit and classify_relation(*centres) == relation:
            shapes = [Shape(k, c, sz, x, y) for (c, k, sz), (x, y) in zip(attrs, centres, strict=True)]
            return Scene(image_size, shapes, relation=relation)
    raise DataError(f"could not place two shapes '{relation}' in a {image_size}px image")  # pragma: no cover


def _position_margin(cx: float, cy: float, image_size: int) -> float:
    """Distance (px) of a centre from the nearest decision boundary of classify_position."""
    dx, dy = abs(cx - image_size / 2), abs(cy - image_size / 2)
    r = image_size / 8
    if max(dx, dy) < r:
        return r - max(dx, dy)
    return min(max(dx, dy) - r, abs(dx - dy))


def _split_seed(seed: int, split: str) -> list[int]:
    # Distinct streams per split: the same seed never yields the same scenes in train and val.
    return [seed, SPLITS.index(split) if split in SPLITS else len(SPLITS)]


def generate(
    n: int, seed: int, split: str = "train", size: int = 32, max_shapes: int = 2
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n scenes of a split: images (n, size, size, 3) uint8, captions, scenes. Deterministic in (seed, split)."""
    _allowed_combos(split)
    rng = np.random.default_rng(_split_seed(seed, split))
    scenes = [sample_scene(rng, split, size, max_shapes) for _ in range(n)]
    images = np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, size, size, 3), np.uint8)
    return images, [caption(s) for s in scenes], scenes


# --- the inverse: pixels -> shapes -> caption semantics ---


def snap_to_palette(img: np.ndarray) -> np.ndarray:
    """Index per pixel into (background, *COLOURS): 0 is black, i+1 is COLOURS[i]."""
    ref = np.array([(0, 0, 0), *PALETTE.values()], dtype=np.int32)
    d = ((img.astype(np.int32)[..., None, :] - ref) ** 2).sum(-1)
    return d.argmin(-1)


def noise_max_px(image_size: int) -> int:
    """Largest blob (pixels) that is decoding noise rather than something drawn: 2 at 32 px, scaled by area."""
    return max(2, round(2 * (image_size / 32) ** 2))


def min_shape_px(image_size: int) -> int:
    """Smallest blob (pixels) that can be a shape: ~a third of a small triangle's area."""
    small = extent_px("small", image_size)
    return max(3, int(0.35 * small * small / 2))


def _components(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(label, mask) of every 8-connected component of equal non-zero labels, largest first.

    8-connectivity, so a diagonal sliver counts as one fragment, not as many stray pixels.
    """
    h, w = labels.shape
    seen = labels == 0
    comps: list[tuple[int, np.ndarray]] = []
    for y0, x0 in zip(*np.nonzero(~seen), strict=True):
        if seen[y0, x0]:
            continue
        lab = int(labels[y0, x0])
        mask = np.zeros(labels.shape, dtype=bool)
        queue = deque([(int(y0), int(x0))])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            mask[y, x] = True
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and labels[ny, nx] == lab:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        comps.append((lab, mask))
    comps.sort(key=lambda c: -int(c[1].sum()))
    return comps


@functools.lru_cache(maxsize=64)
def _template(kind: str, size: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (dy, dx) of a shape drawn at integer centre (0, 0); a shift of it draws it anywhere."""
    c = image_size // 2
    ys, xs = np.nonzero(_shape_mask(kind, c, c, extent_px(size, image_size), image_size))
    return ys - c, xs - c


def _match_template(comp: np.ndarray) -> tuple[str, str, int, int, float]:
    """(kind, size, cx, cy, IoU) of the rendered shape that best overlaps a component.

    Trying every kind and size at centres near the component's bounding-box centre and keeping the best
    IoU is exact on clean renders (IoU 1 at the true centre) and degrades gracefully: a blunted apex or a
    stray pixel lowers every IoU a little but rarely changes which template wins.
    """
    n = comp.shape[0]
    ys, xs = np.nonzero(comp)
    area = len(ys)
    bx, by = round((xs.min() + xs.max() + 1) / 2), round((ys.min() + ys.max() + 1) / 2)
    best: tuple[str, str, int, int, float] = ("", "", 0, 0, -1.0)
    for size in SIZES:
        for kind in KINDS:
            dy, dx = _template(kind, size, n)
            for cy in (by - 1, by, by + 1):
                for cx in (bx - 1, bx, bx + 1):
                    ty, tx = dy + cy, dx + cx
                    inside = (ty >= 0) & (ty < n) & (tx >= 0) & (tx < n)
                    inter = int(comp[ty[inside], tx[inside]].sum())
                    iou = inter / (len(dy) + area - inter)
                    if iou > best[4]:
                        best = (kind, size, cx, cy, iou)
    return best


def parse_image(img: np.ndarray) -> list[DetectedShape]:
    """Everything drawn in an image: one DetectedShape per blob of one palette colour, largest first.

    Blobs of at most `noise_max_px` pixels are decoding noise and left out; every other blob is reported,
    a second blob of a colour and a sliver included (those below `min_shape_px` as fragments), so that a
    caption check can require that nothing is drawn beyond what the caption says.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise DataError(f"parse_image expects a square (H, W, 3) image, got shape {img.shape}")
    n = img.shape[0]
    noise, min_area = noise_max_px(n), min_shape_px(n)
    found = []
    for label, comp in _components(snap_to_palette(img)):
        area = int(comp.sum())
        if area <= noise:
            continue
        kind, size, cx, cy, iou = _match_template(comp)
        found.append(DetectedShape(COLOURS[label - 1], kind, size, cx, cy, area, iou, area < min_area))
    return found


def parse_caption(text: str) -> tuple[list[tuple[str, str, str]], str | None, str | None]:
    """A caption's semantics: ([(colour, kind, size), ...], position, relation); DataError if not grammatical."""
    words = text.strip().split()

    def phrase(ws: list[str]) -> tuple[str, str, str]:
        if len(ws) != 4 or ws[0] != "a" or ws[1] not in SIZES or ws[2] not in COLOURS or ws[3] not in KINDS:
            raise DataError(f"not a caption of the synthetic grammar: {text!r}")
        return ws[2], ws[3], ws[1]

    for pos, p in _POSITION_PHRASES.items():
        tail = p.split()
        if words[-len(tail) :] == tail and len(words) == 4 + len(tail):
            return [phrase(words[:4])], pos, None
    for rel in RELATIONS:
        r = rel.split()
        if len(words) == 8 + len(r) and words[4 : 4 + len(r)] == r:
            return [phrase(words[:4]), phrase(words[4 + len(r) :])], None, rel
    raise DataError(f"not a caption of the synthetic grammar: {text!r}")


def matches_caption(img: np.ndarray, scene: Scene | str) -> bool:
    """Whether an image shows exactly what a scene's caption says and nothing else.

    Every blob beyond decoding noise must be one of the caption's shapes: one blob per named colour, of
    the named kind and size (overlapping its template by at least MIN_IOU) at the named position or
    relation; a second blob of a colour, a blob of another colour or a fragment fails the match.
    """
    if isinstance(scene, Scene):
        attrs = [(s.colour, s.kind, s.size) for s in scene.shapes]
        position, relation = scene.position, scene.relation
    else:
        attrs, position, relation = parse_caption(scene)
    drawn = parse_image(img)
    if sorted(d.colour for d in drawn) != sorted(a[0] for a in attrs):
        return False
    found = {d.colour: d for d in drawn}
    if any((found[c].kind, found[c].size) != (k, s) or found[c].iou < MIN_IOU for c, k, s in attrs):
        return False
    n = np.asarray(img).shape[0]
    if len(attrs) == 1:
        d = found[attrs[0][0]]
        return classify_position(d.cx, d.cy, n) == position
    a, b = found[attrs[0][0]], found[attrs[1][0]]
    return classify_relation((a.cx, a.cy), (b.cx, b.cy)) == relation
