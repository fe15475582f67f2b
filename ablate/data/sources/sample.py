"""The unit every reader yields: one undecoded image-caption sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ablate.data.bad_sample import BadSample

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Image file extensions, in the order of preference when one sample holds several."""


@dataclass
class RawSample:
    """One undecoded sample: image bytes and caption (None where missing), metadata and where it came from."""

    key: str
    image: bytes | None
    caption: str | None
    meta: dict[str, Any]
    shard: str
    error: BadSample | None = None
    """Set when the reader could not read the sample; `prepare_sample` raises it."""


def unreadable(key: str, shard: str, detail: str) -> RawSample:
    """A sample standing for data the reader could not read."""
    return RawSample(key, None, None, {}, shard, BadSample("unreadable_member", detail))
