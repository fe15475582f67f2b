"""Turning a raw image-caption sample into training data, and counting the samples that cannot be used.

`load_image` decodes with Pillow and returns a square RGB uint8 array the way the paper prepares images:
the shorter side resized to `size` with bicubic resampling (Pillow's, which widens its kernel when
shrinking, so downscaling is antialiased), then the centre `size` x `size` crop. Every way a sample can be
unusable raises `BadSample` with one reason of the closed set `REASONS` (ablate.data.bad_sample); a
`SkipCounter` tallies them and fails a stage, naming the sample that tipped it, once too large a fraction
of the data is bad.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from ablate.data.bad_sample import REASONS, BadSample, Reason
from ablate.errors import DataError

if TYPE_CHECKING:
    from ablate.data.sources import RawSample

MIN_SAMPLES_FOR_CHECK = 100
"""SkipCounter.check fails nothing before this many samples were seen: one bad sample among the first few
would otherwise be a bad fraction far above any limit."""

_WHITE = (255, 255, 255, 255)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency composited onto white, 16/32-bit grey scaled to 8 bits."""
    if img.mode == "RGB" and not _has_alpha(img):
        return img
    if _has_alpha(img):
        # Dropping alpha would show whatever colour the transparent pixels happen to store (often black
        # noise); white is what a viewer shows the image on.
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        # Pillow's own conversion clips 16-bit values at 255, turning a 16-bit PNG almost white.
        a = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def center_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square of side min(width, height), as a Pillow box (left, top, right, bottom)."""
    s = min(width, height)
    return ((width - s) / 2, (height - s) / 2, (width + s) / 2, (height + s) / 2)


def _decode(data: bytes) -> Image.Image:
    """Fully decoded image, upright per its EXIF orientation; BadSample('undecodable') if it is not one."""
    try:
        img = Image.open(BytesIO(data))
        img.load()  # Image.open reads only the header: force decoding so a truncated file fails here
    except MemoryError:
        raise
    except Exception as e:
        # Pillow's decoders raise many types on corrupt input (OSError, SyntaxError, ValueError,
        # struct.error, DecompressionBombError, ...): all of them mean this sample is not a usable image.
        raise BadSample("undecodable", f"{type(e).__name__}: {e}") from e
    try:
        # Phone photos store pixels sideways plus an orientation tag; the caption describes the upright view.
        return ImageOps.exif_transpose(img)
    except Exception:
        return img  # a malformed EXIF block does not make the pixels unusable


def load_image(data: bytes, size: int, min_side: int) -> np.ndarray:
    """Decode `data` to a (size, size, 3) uint8 RGB array: shorter side to `size` (bicubic), centre crop."""
    img = _decode(data)
    w, h = img.size
    if min(w, h) < min_side:
        raise BadSample("too_small", f"{w}x{h} image, shorter side below data.min_image_side={min_side}")
    rgb = to_rgb(img)
    # Resizing only the centred square is the same as resizing the shorter side to `size` and cropping
    # the centre (the filter still reads the pixels just outside the box), without the cropped-away work.
    out = rgb.resize((size, size), Image.Resampling.BICUBIC, box=center_box(w, h))
    return np.array(out, dtype=np.uint8).reshape(size, size, 3)


def clean_caption(caption: str | None) -> str:
    """The caption stripped of surrounding whitespace; BadSample('no_caption') if nothing is left."""
    text = (caption or "").strip()
    if not text:
        raise BadSample("no_caption", "no caption" if caption is None else "empty caption")
    return text


def prepare_sample(raw: RawSample, size: int, min_side: int) -> tuple[np.ndarray, str]:
    """(image array, caption) of a raw sample; raises BadSample (a reader's error first) if it is unusable."""
    if raw.error is not None:
        raise raw.error
    if raw.image is None:
        raise BadSample("no_image", f"sample {raw.key} has no image file (jpg, jpeg, png or webp)")
    text = clean_caption(raw.caption)  # before decoding: cheaper to reject
    return load_image(raw.image, size, min_side), text


@dataclass
class SkipCounter:
    """Kept and skipped samples per reason, and the check that fails a stage on too much bad data."""

    skipped: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    seen: int = 0

    def keep(self) -> None:
        """Count one usable sample."""
        self.seen += 1

    def skip(self, reason: Reason) -> None:
        """Count one bad sample under its reason."""
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; one of {REASONS}")
        self.skipped[reason] += 1
        self.seen += 1

    @property
    def bad(self) -> int:
        """Skipped samples, all reasons."""
        return sum(self.skipped.values())

    @property
    def kept(self) -> int:
        """Usable samples."""
        return self.seen - self.bad

    @property
    def fraction(self) -> float:
        """Fraction of the samples seen that were skipped (0 before any)."""
        return self.bad / self.seen if self.seen else 0.0

    def check(self, max_bad_fraction: float, shard: str, key: str, reason: str) -> None:
        """DataError if, from MIN_SAMPLES_FOR_CHECK samples on, the skipped fraction exceeds the limit.

        Call it after `skip`, with the shard, key and reason of the sample just skipped: the error names it.
        """
        if self.seen < MIN_SAMPLES_FOR_CHECK or self.fraction <= max_bad_fraction:
            return
        counts = ", ".join(f"{r} {n}" for r, n in self.skipped.items() if n)
        raise DataError(
            f"{self.bad} of {self.seen} samples ({self.fraction:.1%}) were bad, more than "
            f"data.max_bad_fraction={max_bad_fraction}; the last was key {key!r} in shard {shard} "
            f"(reason: {reason}). Skipped: {counts}. Fix or remove the bad data, or raise data.max_bad_fraction"
        )

    def merge(self, other: SkipCounter) -> None:
        """Add another counter's counts (e.g. of another unit of work) to this one."""
        for r, n in other.skipped.items():
            self.skipped[r] += n
        self.seen += other.seen

    @classmethod
    def from_metrics(cls, metrics: dict[str, int]) -> SkipCounter:
        """The counter `as_metrics` describes (e.g. read back from a unit's summary)."""
        return cls(
            skipped={r: int(metrics.get(f"skipped_{r}", 0)) for r in REASONS},
            seen=int(metrics["samples_seen"]),
        )

    def as_metrics(self) -> dict[str, int]:
        """{"skipped_<reason>": n for every reason, "samples_seen": n, "samples_kept": n}."""
        out = {f"skipped_{r}": n for r, n in self.skipped.items()}
        out["samples_seen"] = self.seen
        out["samples_kept"] = self.kept
        return out
