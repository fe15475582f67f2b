"""Stable train/val/heldout assignment of samples by a hash of their key."""

from __future__ import annotations

import hashlib

from ablate.errors import ConfigError
from ablate.splits import HELDOUT, TRAIN, VAL, Split


def hash_unit(key: str) -> float:
    """A uniform number in [0, 1) fixed by the key: the first 8 bytes of sha256(key, UTF-8) / 2**64."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of(key: str, val_fraction: float, heldout_fraction: float) -> Split:
    """The split of a sample, from a hash of its key alone (so never from its shard or position).

    val takes [0, val_fraction) of the hash range and heldout [1 - heldout_fraction, 1): changing one
    fraction only moves samples between that split and train, never between val and heldout.
    """
    if not (0 <= val_fraction and 0 <= heldout_fraction and val_fraction + heldout_fraction < 1):
        raise ConfigError(
            "data.val_fraction + data.heldout_fraction",
            (val_fraction, heldout_fraction),
            "two fractions >= 0 whose sum is < 1",
        )
    u = hash_unit(key)
    if u < val_fraction:
        return VAL
    if u >= 1 - heldout_fraction:
        return HELDOUT
    return TRAIN
