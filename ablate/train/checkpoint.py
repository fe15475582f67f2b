"""Training checkpoints: written atomically, so a crash mid-save leaves the previous checkpoint intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ablate.atomic import atomic_path
from ablate.errors import CheckpointError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, fsynced and renamed over it (ablate.atomic)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is no checkpoint yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"cannot read checkpoint {path}: {e}. Delete it to restart this stage from scratch."
        ) from None
