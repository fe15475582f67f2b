"""Training checkpoints: written atomically, so a crash mid-save leaves the previous checkpoint intact."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.atomic import atomic_path
from ablate.errors import CheckpointError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, fsynced and renamed over it (ablate.atomic)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# What a training checkpoint holds beyond tensors and plain containers: numpy's global RNG state
# (np.random.get_state(): a tuple with a uint32 array). Only these are allowed past weights_only=True; the
# array's reconstructor is listed under numpy 2's name and numpy 1's (checkpoints written before numpy 2).
_NUMPY_RECONSTRUCT = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
SAFE_GLOBALS: list[Any] = [
    np.ndarray,
    np.dtype,
    _NUMPY_RECONSTRUCT,
    (_NUMPY_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    *(type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)),
]


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is no checkpoint yet.

    Read with weights_only=True (tensors, plain containers and SAFE_GLOBALS only): a crafted last.pt runs
    no code. Checkpoints written by earlier versions hold the same types and load the same way.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower():
            why = (
                "it pickles Python objects a training checkpoint never holds, and unpickling them could "
                "run code from the file, so it is not read"
            )
        else:
            why = f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {why}. Delete it to restart this stage from scratch."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not a training state. "
            "Delete it to restart this stage from scratch."
        )
    return state
