"""Why a sample cannot be used: the closed set of reasons, and the exception that carries one.

Its own module because both sides use it: the readers (ablate.data.sources) raise it for what they cannot
read, ablate.data.preprocess for what it cannot decode, and the counters tally it.
"""

from __future__ import annotations

from typing import Literal, get_args

Reason = Literal["undecodable", "too_small", "no_image", "no_caption", "unreadable_member"]
REASONS: tuple[Reason, ...] = get_args(Reason)
"""undecodable: not an image, or a truncated one; too_small: shorter side below data.min_image_side;
no_image: a sample without an image file; no_caption: caption missing, not UTF-8, or empty after strip;
unreadable_member: the reader could not read the archive member(s) or file."""


class BadSample(Exception):
    """A sample that cannot be used; `reason` is one of REASONS, `detail` says what exactly was wrong."""

    def __init__(self, reason: Reason, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown BadSample reason {reason!r}; one of {REASONS}")
        self.reason: Reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
