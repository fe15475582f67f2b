"""Pixels as every image tokenizer takes and gives them: uint8 (N, H, W, 3) arrays <-> float tensors in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch

from ablate.errors import DataError


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    t = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if t.ndim != 4 or t.shape[-1] != 3:
        raise DataError(f"images must be (N, H, W, 3) uint8, got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), clamped and rounded."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
