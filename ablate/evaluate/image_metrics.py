"""Image metrics: caption-match accuracy on the synthetic grammar and sample grids (Figure 5).

Caption-match accuracy is the demo's image metric: ``ablate.data.synthetic.matches_caption`` parses the
shapes back from pixels and checks colours, kinds, sizes and position/relation exactly, so it needs no
learned network. FID (real data) is ablate.evaluate.fid.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.atomic import atomic_path
from ablate.data.synthetic import MIN_IOU, Scene, matches_caption, parse_caption, parse_image
from ablate.errors import ConfigError, DataError

# --- caption match -----------------------------------------------------------------------------------


def _as_images(images: Any) -> np.ndarray:
    """(N, H, W, 3) uint8 array from a numpy array or tensor; DataError on another shape or dtype."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"expected images of shape (N, H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise DataError(f"expected uint8 images (as ImageTokenizer.decode returns), got {arr.dtype}")
    return arr


def caption_matches(images: Any, scenes: Sequence[Scene | str]) -> np.ndarray:
    """Per image: does it show exactly what its scene / caption says? ``(N,)`` bool."""
    arr = _as_images(images)
    if len(arr) != len(scenes):
        raise DataError(f"{len(arr)} images but {len(scenes)} scenes/captions; they must pair one to one")
    return np.array([matches_caption(img, sc) for img, sc in zip(arr, scenes, strict=True)], dtype=bool)


def caption_match_accuracy(images: Any, scenes: Sequence[Scene | str]) -> float:
    """Fraction of images ``(N, H, W, 3) uint8`` that match their scene or caption string (exact parser).

    Caption strings must follow the synthetic grammar (DataError otherwise); ``Scene`` objects skip the
    parsing. DataError when N is 0, since an accuracy over no images is undefined.
    """
    matches = caption_matches(images, scenes)
    if matches.size == 0:
        raise DataError("caption_match_accuracy needs at least one image")
    return float(matches.mean())


def colours_present(images: Any, scenes: Sequence[Scene | str]) -> np.ndarray:
    """Per image: does every colour its scene or caption names appear as a shape? ``(N,)`` bool.

    A partial credit below caption_matches (which also needs nothing else drawn, the right kinds, sizes and
    position): undertrained models (the demo's) draw the right colours long before the exact scene.
    Compare it with the same measure against shuffled captions, its chance level for these images.
    """
    arr = _as_images(images)
    if len(arr) != len(scenes):
        raise DataError(f"{len(arr)} images but {len(scenes)} scenes/captions; they must pair one to one")
    out = []
    for img, sc in zip(arr, scenes, strict=True):
        want = (
            {s.colour for s in sc.shapes} if isinstance(sc, Scene) else {a[0] for a in parse_caption(sc)[0]}
        )
        out.append(want <= {d.colour for d in parse_image(img) if not d.fragment})
    return np.array(out, dtype=bool)


def scene_valid(images: Any, max_shapes: int) -> np.ndarray:
    """Per image: does it read as a scene of the grammar (1..max_shapes clean shapes)? ``(N,)`` bool.

    The unconditional counterpart of caption matching: no caption to match, but a sample that is noise,
    a smear, a half-drawn shape, a fragment or two shapes of one colour is not a scene the data could
    contain.
    """
    arr = _as_images(images)
    out = []
    for img in arr:
        found = parse_image(img)
        colours = {d.colour for d in found}
        out.append(
            1 <= len(found) <= max_shapes
            and len(colours) == len(found)
            and all(d.iou >= MIN_IOU and not d.fragment for d in found)
        )
    return np.array(out, dtype=bool)


# --- sample grid (Figure 5) ---------------------------------------------------------------------------


def sample_grid(
    images: Any,
    captions: Sequence[str],
    path: str | os.PathLike[str],
    ncols: int = 4,
    marks: Sequence[bool] | None = None,
    title: str | None = None,
    references: Any = None,
) -> Path:
    """Save a grid of images ``(N, H, W, 3) uint8`` with their captions as titles; returns the path.

    The format follows the suffix (``.png``, ``.pdf``). ``marks`` (optional, one bool per image, e.g.
    ``caption_matches``) colours each title green (match) or red (no match). ``references`` (optional,
    ``(N, H, W, 3)``: what each caption describes, e.g. the synthetic scene rendered) are drawn left of
    their sample in the same cell. Written to a temporary file and renamed, so a reader never sees a
    half-written figure.
    """
    # Figure + Agg canvas directly, not pyplot: no global state, no backend switch, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arr = _as_images(images)
    n = len(arr)
    if n == 0:
        raise DataError("sample_grid needs at least one image")
    if references is not None:
        refs = _as_images(references)
        if refs.shape != arr.shape:
            raise DataError(f"references {refs.shape} must match the samples {arr.shape}")
        gap = np.full((n, arr.shape[1], max(1, arr.shape[2] // 16), 3), 255, np.uint8)  # a white seam
        arr = np.concatenate([refs, gap, arr], axis=2)  # (N, H, 2W + gap, 3): reference | sample
    if len(captions) != n or (marks is not None and len(marks) != n):
        raise DataError(f"{n} images need {n} captions (and marks, if given)")
    if ncols < 1:
        raise ConfigError("ncols", ncols, "an integer >= 1")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    cell = 2.2 * (2.1 if references is not None else 1.0)
    fig = Figure(figsize=(cell * ncols, 2.8 * nrows + (0.5 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        # nearest: 32 px images must stay crisp, smoothing would blur the shapes being judged.
        ax.imshow(arr[i], interpolation="nearest")
        colour = "black" if marks is None else ("tab:green" if marks[i] else "tab:red")
        width = 24 if references is None else 48
        ax.set_title("\n".join(textwrap.wrap(captions[i], width)), fontsize=8, color=colour)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        # The format is given explicitly: the temporary name's .tmp suffix would not tell savefig.
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=150)
    return path
