"""torch-fidelity's InceptionV3 with random weights, saved as the weights file FID tests load.

The real weights cannot be downloaded here; the network is torch-fidelity's own, He-initialised (so that
features do not vanish through 90 layers) with spread batch-norm statistics. Needs the fid extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """Save torch-fidelity's InceptionV3 state dict with random weights at `path`."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    mp = pytest.MonkeyPatch()
    # Construction loads the released weights from their URL: skipped, the random init is kept.
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
    try:
        torch.manual_seed(seed)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        mp.undo()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def torch_fidelity_fid(dir_a: Path, dir_b: Path, weights: Path) -> float:
    """torch-fidelity's own FID between two image folders, on the CPU, with the given weights file."""
    torch_fidelity = pytest.importorskip("torch_fidelity")
    metrics = torch_fidelity.calculate_metrics(
        input1=str(dir_a),
        input2=str(dir_b),
        fid=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        cuda=False,
        cache=False,
        verbose=False,
        batch_size=8,
    )
    return float(metrics["frechet_inception_distance"])


def save_pngs(images: np.ndarray, out: Path) -> Path:
    """Images (N, H, W, 3) uint8 as out/000.png, 001.png, ... (PNG: lossless)."""
    from PIL import Image

    out.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(out / f"{i:03d}.png")
    return out
