"""FID as published text-to-image FIDs compute it: torch-fidelity's InceptionV3 (the TF-Inception port).

The feature extractor is torch-fidelity's ``FeatureExtractorInceptionV3`` (pool3, 2,048 features): it
takes uint8 images, resizes them to 299 x 299 with its TensorFlow-1.x-compatible bilinear interpolation
and normalises as the TF graph does, so its FIDs match those of the original TTUR code that papers report.
Its weights are never downloaded: ``evaluate.fid_weights`` names the local file (``FID_WEIGHTS_FILE``,
from ``FID_WEIGHTS_URL``), and the file is checked to hold only tensors (``torch.load(weights_only=True)``)
before torch-fidelity, which unpickles it fully, may open it.

torch-fidelity needs torchvision, so it is an optional extra (``pip install -e '.[fid]'``); the Fréchet
distance itself (eigh in float64, no scipy) is plain numpy and always available.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.errors import AblateError, AssetMissingError, DataError

FID_WEIGHTS_KEY = "evaluate.fid_weights"
FID_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FID_WEIGHTS_FILE}"
FEATURE_LAYER = "2048"  # pool3, the layer FID uses
INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's registered name of this extractor


# --- the Fréchet distance --------------------------------------------------------------------------


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative rounding noise -> 0)."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians: ``|mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa Sb)^(1/2))``.

    ``tr((Sa Sb)^(1/2))`` is the sum of the square roots of the eigenvalues of ``Sa Sb``, which equal
    those of the symmetric PSD matrix ``Sa^(1/2) Sb Sa^(1/2)``. Using eigh on that (in float64, negative
    rounding noise clipped to 0) avoids a sqrtm of a non-symmetric product and its complex round-off,
    and stays finite for the singular covariances of fewer samples than dimensions.
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
    # ddof=1 as TTUR, pytorch-fid and torch-fidelity (np.cov), so numbers compare with published FIDs.
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def fid_from_features(feats_a: Any, feats_b: Any) -> float:
    """FID between two feature sets ``(N, D)`` and ``(M, D)`` (Inception pool3: D = 2048)."""
    mu_a, sigma_a = feature_stats(feats_a)
    mu_b, sigma_b = feature_stats(feats_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


# --- the Inception feature extractor ---------------------------------------------------------------


def _missing(path: Any, why: str) -> AssetMissingError:
    return AssetMissingError(
        f"FID Inception weights {why}: {path}. Pass {FID_WEIGHTS_KEY}=/path/to/{FID_WEIGHTS_FILE}, "
        f"torch-fidelity's InceptionV3 weights (the TF-Inception port published FIDs use), downloaded once "
        f"from {FID_WEIGHTS_URL}; nothing is fetched at run time. Or leave {FID_WEIGHTS_KEY} unset: no FID."
    )


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """The weights file's sha256, recorded beside statistics so two FIDs never mix extractors."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights(weights_path: str | os.PathLike[str] | None) -> Path:
    """The weights file, after checking it exists and unpickles as tensors only (AblateError otherwise)."""
    if weights_path is None:
        raise _missing(None, f"not configured ({FID_WEIGHTS_KEY} is unset)")
    path = Path(weights_path)
    if not path.is_file():
        raise _missing(path, "not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an arbitrary pickle, a truncated file, not a torch file at all
        raise DataError(
            f"{FID_WEIGHTS_KEY}={path} is not a plain state dict of tensors ({str(e).splitlines()[0]}); "
            f"provide {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}"
        ) from e
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise DataError(
            f"{FID_WEIGHTS_KEY}={path} is not torch-fidelity's InceptionV3 state dict (no fc.weight)"
        )
    return path


def load_inception(weights_path: str | os.PathLike[str] | None, device: torch.device | None = None) -> Any:
    """torch-fidelity's InceptionV3 (pool3 features) from a local weights file, in eval mode on ``device``."""
    path = check_weights(weights_path)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise AblateError(
            f"FID needs torch-fidelity ({e}): pip install -e '.[fid]' (it needs torchvision built for your "
            "torch; on the CI machines: pip install torch==2.14.1 torchvision==0.29.1 first)"
        ) from e
    net = FeatureExtractorInceptionV3(
        INCEPTION_NAME, [FEATURE_LAYER], feature_extractor_weights_path=str(path)
    )
    return net.to(device or torch.device("cpu")).eval()


@torch.no_grad()
def inception_features(net: Any, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """Pool3 features ``(N, 2048)`` float64 of images ``(N, H, W, 3)`` uint8 (any H, W: resized to 299)."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise DataError(f"expected uint8 images of shape (N, H, W, 3), got {arr.dtype} {arr.shape}")
    device = next(net.parameters()).device
    out = []
    for s in range(0, len(arr), batch_size):
        x = torch.from_numpy(arr[s : s + batch_size]).to(device).permute(0, 3, 1, 2)  # (b, 3, H, W) uint8
        (feats,) = net(x.contiguous())  # (b, 2048)
        out.append(feats.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))
