"""Image metrics: caption-match accuracy on the synthetic grammar, sample grids (Figure 5) and FID.

Caption-match accuracy is the demo's image metric: ``ablate.data.synthetic.matches_caption`` parses the
shapes back from pixels and checks colours, kinds, sizes and position/relation exactly, so it needs no
learned network. FID needs Inception features; the Inception weights are not shipped and never
downloaded, so ``load_feature_extractor`` asks for a local file (``evaluate.fid_weights``).
"""

from __future__ import annotations

import os
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.atomic import atomic_path
from ablate.data.synthetic import MIN_IOU, Scene, matches_caption, parse_caption, parse_image
from ablate.errors import AssetMissingError, ConfigError, DataError

FID_WEIGHTS_KEY = "evaluate.fid_weights"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05.pth"


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

    A partial credit below caption_matches (which also needs no extra shapes, the right kinds, sizes and
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
        out.append(want <= {d.colour for d in parse_image(img)})
    return np.array(out, dtype=bool)


def scene_valid(images: Any, max_shapes: int) -> np.ndarray:
    """Per image: does it read as a scene of the grammar (1..max_shapes clean shapes)? ``(N,)`` bool.

    The unconditional counterpart of caption matching: no caption to match, but a sample that is noise,
    a smear or a half-drawn shape is not a scene the data could contain.
    """
    arr = _as_images(images)
    out = []
    for img in arr:
        found = parse_image(img)
        out.append(1 <= len(found) <= max_shapes and all(d.iou >= MIN_IOU for d in found))
    return np.array(out, dtype=bool)


# --- sample grid (Figure 5) ---------------------------------------------------------------------------


def sample_grid(
    images: Any,
    captions: Sequence[str],
    path: str | os.PathLike[str],
    ncols: int = 4,
    marks: Sequence[bool] | None = None,
    title: str | None = None,
) -> Path:
    """Save a grid of images ``(N, H, W, 3) uint8`` with their captions as titles; returns the path.

    The format follows the suffix (``.png``, ``.pdf``). ``marks`` (optional, one bool per image, e.g.
    ``caption_matches``) colours each title green (match) or red (no match). Written to a temporary file
    and renamed, so a reader never sees a half-written figure.
    """
    # Figure + Agg canvas directly, not pyplot: no global state, no backend switch, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arr = _as_images(images)
    n = len(arr)
    if n == 0:
        raise DataError("sample_grid needs at least one image")
    if len(captions) != n or (marks is not None and len(marks) != n):
        raise DataError(f"{n} images need {n} captions (and marks, if given)")
    if ncols < 1:
        raise ConfigError("ncols", ncols, "an integer >= 1")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.6 * nrows + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        # nearest: 32 px images must stay crisp, smoothing would blur the shapes being judged.
        ax.imshow(arr[i], interpolation="nearest")
        colour = "black" if marks is None else ("tab:green" if marks[i] else "tab:red")
        ax.set_title("\n".join(textwrap.wrap(captions[i], 24)), fontsize=7, color=colour)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        # The format is given explicitly: the temporary name's .tmp suffix would not tell savefig.
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=150)
    return path


# --- FID ---------------------------------------------------------------------------------------------


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative rounding noise -> 0)."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians: ``|mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa Sb)^(1/2))``.

    ``tr((Sa Sb)^(1/2))`` is the sum of the square roots of the eigenvalues of ``Sa Sb``, which equal
    those of the symmetric PSD matrix ``Sa^(1/2) Sb Sa^(1/2)``. Using eigh on that (in float64, negative
    rounding noise clipped to 0) avoids scipy's sqrtm of a non-symmetric product and its complex
    round-off, and stays finite for the singular covariances of fewer samples than dimensions.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise DataError(
            f"Fréchet distance needs means (D,) and covariances (D, D) of one D; got {mu_a.shape}, "
            f"{sigma_a.shape}, {mu_b.shape}, {sigma_b.shape}"
        )
    root_a = _psd_sqrt(sigma_a)  # (D, D)
    inner = root_a @ sigma_b @ root_a  # (D, D), symmetric PSD up to rounding
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)  # (D,)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    dist = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_covmean)
    # The exact value is >= 0; rounding can leave a tiny negative for identical inputs.
    return max(dist, 0.0)


def feature_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of features ``(N, D)``, N >= 2."""
    x = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2 or x.shape[0] < 2:
        raise DataError(f"features must be (N, D) with N >= 2 for a covariance, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("features contain NaN or inf")
    # ddof=1 as pytorch-fid (np.cov), so numbers compare with published FIDs computed the same way.
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def fid_from_features(feats_a: Any, feats_b: Any) -> float:
    """FID between two feature sets ``(N, D)`` and ``(M, D)`` (e.g. Inception pool3, D = 2048)."""
    mu_a, sigma_a = feature_stats(feats_a)
    mu_b, sigma_b = feature_stats(feats_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def _missing_weights(path: Any, why: str) -> AssetMissingError:
    return AssetMissingError(
        f"FID feature-extractor weights {why}: {path}. Pass {FID_WEIGHTS_KEY}=/path/to/{FID_WEIGHTS_FILE} "
        "(the Inception weights FID uses, as a TorchScript module; see "
        "ablate.evaluate.image_metrics.load_feature_extractor). They are not shipped and never downloaded."
    )


def _jit_load(path: Path) -> torch.nn.Module:
    """torch.jit.load on the CPU."""
    # torch >= 2.10 deprecates TorchScript in favour of torch.export, but TorchScript is the format
    # pytorch-fid-style Inception exports exist in and it loads on every torch this package supports.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning
        )
        return torch.jit.load(str(path), map_location="cpu")


def load_feature_extractor(
    weights_path: str | os.PathLike[str] | None,
    module: torch.nn.Module | str | os.PathLike[str] | None = None,
) -> torch.nn.Module:
    """Load the FID feature extractor from a local file; AssetMissingError if the path is None or absent.

    Contract (building the Inception network itself is out of scope here):

    - ``module`` None: ``weights_path`` is a TorchScript archive (``torch.jit.save`` of the network with
      its weights), loaded with ``torch.jit.load``.
    - ``module`` given (a TorchScript archive path or a loaded module with the network's architecture):
      ``weights_path`` is a state dict (``torch.load``, weights only), loaded into it with strict keys.

    Either way the returned module (CPU, eval mode) maps float32 images ``(N, 3, H, W)`` in ``[0, 1]`` to
    features ``(N, D)`` (or ``(N, D, 1, 1)``, or a list/tuple whose last item is that), as pytorch-fid's
    InceptionV3 does; resizing to the network's input size is the module's job. See ``extract_features``.
    """
    if weights_path is None:
        raise _missing_weights(None, f"not configured ({FID_WEIGHTS_KEY} is unset)")
    path = Path(weights_path)
    if not path.is_file():
        raise _missing_weights(path, "not found")
    if module is None:
        try:
            net = _jit_load(path)
        except RuntimeError as e:
            raise DataError(
                f"FID weights {path} are not a TorchScript archive ({str(e).splitlines()[0]}). Pass "
                f"{FID_WEIGHTS_KEY} a torch.jit.save'd network, or give load_feature_extractor `module=` "
                "(the network's architecture) to load a plain state dict into"
            ) from e
    else:
        net = _jit_load(Path(module)) if isinstance(module, (str, os.PathLike)) else module
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise DataError(f"FID weights {path} do not fit the given module: {e}") from e
    return net.eval()


@torch.no_grad()
def extract_features(extractor: torch.nn.Module, images: Any, batch_size: int = 64) -> np.ndarray:
    """Features ``(N, D)`` float64 of images ``(N, H, W, 3) uint8`` under ``load_feature_extractor``'s contract."""
    arr = _as_images(images)
    p = next(extractor.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    out = []
    for s in range(0, len(arr), batch_size):
        x = torch.from_numpy(arr[s : s + batch_size]).to(device)  # (b, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).float() / 255.0  # (b, 3, H, W) in [0, 1]
        y = extractor(x)
        if isinstance(y, (list, tuple)):
            y = y[-1]
        out.append(y.reshape(y.shape[0], -1).double().cpu().numpy())  # (b, D)
    return np.concatenate(out) if out else np.zeros((0, 0))
