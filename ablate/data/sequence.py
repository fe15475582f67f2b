"""Vocabulary layout and fixed-length sequence layouts (see docs/CONTRACTS.md).

Vocabulary: text ids ``[0, T)``, then the 7 specials ``<doc> </doc> <text> </text> <image> </image> <pad>``
at ``[T, T+7)``, then the K image codes at ``[T+7, T+7+K)``.

Sequences (length L, right-padded with ``<pad>``):

- t2i:    ``<doc> <text> caption... </text> <image> codes... </image> </doc> <pad>...``
- uncond: ``<doc> <image> codes... </image> </doc> <pad>...``

Captions that do not fit are truncated (their tail is dropped); image codes never are: a sequence length
that cannot hold the whole image plus the specials is a configuration error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ablate.errors import ConfigError, DataError
from ablate.schema import TASKS

# Order of the special tokens after the text vocabulary; fixed by the contract, never reorder.
SPECIAL_NAMES: tuple[str, ...] = ("doc", "doc_end", "text", "text_end", "image", "image_end", "pad")
NUM_SPECIALS = len(SPECIAL_NAMES)
# Specials each layout spends besides caption and image tokens (pad excluded).
T2I_OVERHEAD = 6  # <doc> <text> </text> <image> </image> </doc>
UNCOND_OVERHEAD = 4  # <doc> <image> </image> </doc>


@dataclass(frozen=True)
class VocabLayout:
    """Where text ids, special ids and image codes live in the joint vocabulary."""

    text_vocab_size: int
    codebook_size: int

    def __post_init__(self) -> None:
        if int(self.text_vocab_size) < 0:
            raise ConfigError("text_vocab_size", self.text_vocab_size, "an integer >= 0")
        if int(self.codebook_size) < 1:
            raise ConfigError("codebook_size", self.codebook_size, "an integer >= 1")

    # --- special ids -------------------------------------------------------------------------------------
    @property
    def doc(self) -> int:
        return self.text_vocab_size

    @property
    def doc_end(self) -> int:
        return self.text_vocab_size + 1

    @property
    def text(self) -> int:
        return self.text_vocab_size + 2

    @property
    def text_end(self) -> int:
        return self.text_vocab_size + 3

    @property
    def image(self) -> int:
        return self.text_vocab_size + 4

    @property
    def image_end(self) -> int:
        return self.text_vocab_size + 5

    @property
    def pad(self) -> int:
        return self.text_vocab_size + 6

    @property
    def special_ids(self) -> dict[str, int]:
        """Name -> id of each special token, in contract order."""
        return {name: self.text_vocab_size + i for i, name in enumerate(SPECIAL_NAMES)}

    # --- ranges ------------------------------------------------------------------------------------------
    @property
    def image_offset(self) -> int:
        """Vocabulary id of image code 0."""
        return self.text_vocab_size + NUM_SPECIALS

    @property
    def size(self) -> int:
        """Total vocabulary size (embedding / output rows)."""
        return self.image_offset + self.codebook_size

    def is_image(self, ids: Any) -> Any:
        """Elementwise: is the id an image code? Works on numpy arrays and torch tensors."""
        return (ids >= self.image_offset) & (ids < self.size)

    def is_special(self, ids: Any) -> Any:
        """Elementwise: is the id one of the 7 specials (pad included)?"""
        return (ids >= self.text_vocab_size) & (ids < self.image_offset)

    def is_text(self, ids: Any) -> Any:
        """Elementwise: is the id a text-vocabulary id?"""
        return (ids >= 0) & (ids < self.text_vocab_size)

    def codes_to_ids(self, codes: Any) -> np.ndarray:
        """Image codes ``0..K-1`` -> vocabulary ids (int64); DataError if a code is out of range."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise DataError(
                f"image codes must lie in [0, {self.codebook_size}); found range "
                f"[{codes.min()}, {codes.max()}]: the image tokenizer's codebook does not match the layout"
            )
        return codes + self.image_offset

    def ids_to_codes(self, ids: Any) -> np.ndarray:
        """Vocabulary ids of image codes -> codes ``0..K-1`` (int64); DataError if an id is not an image code."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and not bool(np.all(self.is_image(ids))):
            bad = ids[~self.is_image(ids)]
            raise DataError(
                f"expected image-code ids in [{self.image_offset}, {self.size}); found {bad[:8].tolist()}"
            )
        return ids - self.image_offset

    # --- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; the special ids are included so readers can check them."""
        return {
            "text_vocab_size": int(self.text_vocab_size),
            "codebook_size": int(self.codebook_size),
            "image_offset": self.image_offset,
            "size": self.size,
            "special_ids": self.special_ids,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VocabLayout:
        """Inverse of to_dict; DataError if recorded derived ids disagree (written under another contract)."""
        try:
            layout = cls(int(d["text_vocab_size"]), int(d["codebook_size"]))
        except KeyError as e:
            raise DataError(f"vocab layout record lacks {e.args[0]!r}: {d!r}") from None
        derived = layout.to_dict()
        for key in ("image_offset", "size", "special_ids"):
            if key in d and d[key] != derived[key]:
                raise DataError(
                    f"vocab layout record disagrees with this version's contract on {key!r}: "
                    f"recorded {d[key]!r}, derived {derived[key]!r}; rebuild the data with this version"
                )
        return layout


# --- building sequences --------------------------------------------------------------------------------


def min_seq_len(caption_tokens: int, image_tokens: int, task: str) -> int:
    """Smallest sequence length that holds the caption (t2i only), the image and the specials."""
    if task == "t2i":
        return int(caption_tokens) + int(image_tokens) + T2I_OVERHEAD
    if task == "uncond":
        return int(image_tokens) + UNCOND_OVERHEAD
    raise ConfigError("task", task, " or ".join(TASKS))


def _check_fits(n_image: int, overhead: int, seq_len: int, task: str) -> None:
    need = n_image + overhead
    if seq_len < need:
        raise ConfigError(
            "seq_len",
            seq_len,
            f">= {need} ({n_image} image tokens + {overhead} specials for task '{task}')",
            hint="image tokens are never truncated; raise seq_len or use a smaller image grid",
        )


def _check_text(caption_ids: np.ndarray, layout: VocabLayout) -> None:
    if caption_ids.size and (caption_ids.min() < 0 or caption_ids.max() >= layout.text_vocab_size):
        raise DataError(
            f"caption ids must lie in [0, {layout.text_vocab_size}); found range "
            f"[{caption_ids.min()}, {caption_ids.max()}]: the text tokenizer is larger than the layout's text vocab"
        )


def max_caption_tokens(image_tokens: int, seq_len: int) -> int:
    """Caption tokens a t2i sequence of this length keeps (longer captions lose their tail)."""
    _check_fits(image_tokens, T2I_OVERHEAD, seq_len, "t2i")
    return seq_len - image_tokens - T2I_OVERHEAD


def prompt_t2i(caption_ids: Any, layout: VocabLayout, seq_len: int, image_tokens: int) -> np.ndarray:
    """Generation prefix ``<doc> <text> caption </text> <image>`` (int32), truncated as in training."""
    cap = np.asarray(caption_ids, dtype=np.int64).reshape(-1)
    _check_text(cap, layout)
    cap = cap[: max_caption_tokens(image_tokens, seq_len)]
    head = [layout.doc, layout.text]
    tail = [layout.text_end, layout.image]
    return np.concatenate([head, cap, tail]).astype(np.int32)


def prompt_uncond(layout: VocabLayout) -> np.ndarray:
    """Generation prefix ``<doc> <image>`` (int32)."""
    return np.array([layout.doc, layout.image], dtype=np.int32)


def layout_t2i(caption_ids: Any, image_codes: Any, layout: VocabLayout, seq_len: int) -> np.ndarray:
    """Text-to-image training sequence, int32 ``(seq_len,)``; caption truncated to fit, image never."""
    codes = np.asarray(image_codes, dtype=np.int64).reshape(-1)
    prefix = prompt_t2i(caption_ids, layout, seq_len, codes.size)
    out = np.full(seq_len, layout.pad, dtype=np.int32)
    n = prefix.size
    out[:n] = prefix
    out[n : n + codes.size] = layout.codes_to_ids(codes)
    out[n + codes.size] = layout.image_end
    out[n + codes.size + 1] = layout.doc_end
    return out


def caption_dropout_mask(seed: int, step: int, n: int, rate: float) -> np.ndarray:
    """Which of a step's n global sequences lose their caption (bool (n,)): from (seed, step) alone, so a
    resumed run and every rank of a data-parallel one agree."""
    if rate <= 0:
        return np.zeros(n, dtype=bool)
    return np.random.default_rng([seed, step, 0xCA9]).random(n) < rate


def drop_captions(batch: np.ndarray, layout: VocabLayout, drop: np.ndarray) -> np.ndarray:
    """The t2i rows of ``batch (B, L)`` marked in ``drop (B,)`` with their caption removed: ``<doc> <text>
    </text> <image> codes... </image> </doc>``, shifted left and right-padded. Rows with no ``<text>``
    (unconditional) and unmarked rows are returned unchanged; a new array."""
    out = np.array(batch, copy=True)
    for i in np.flatnonzero(drop):
        row = out[i]
        if row.size < 2 or row[1] != layout.text:
            continue
        ends = np.flatnonzero(row == layout.text_end)
        if not ends.size:  # pragma: no cover (every t2i row has one: layout_t2i)
            raise DataError(f"a t2i sequence without </text> (id {layout.text_end}) in row {i}")
        cut = int(ends[0]) - 2  # the caption's tokens, between <text> and </text>
        if cut:
            out[i, 2:-cut] = row[2 + cut :].copy()
            out[i, -cut:] = layout.pad
    return out


def layout_uncond(image_codes: Any, layout: VocabLayout, seq_len: int) -> np.ndarray:
    """Unconditional (image-only) training sequence, int32 ``(seq_len,)``."""
    codes = np.asarray(image_codes, dtype=np.int64).reshape(-1)
    _check_fits(codes.size, UNCOND_OVERHEAD, seq_len, "uncond")
    out = np.full(seq_len, layout.pad, dtype=np.int32)
    out[0], out[1] = layout.doc, layout.image
    out[2 : 2 + codes.size] = layout.codes_to_ids(codes)
    out[2 + codes.size] = layout.image_end
    out[3 + codes.size] = layout.doc_end
    return out


# --- reading sequences back ----------------------------------------------------------------------------


def _first(seq: np.ndarray, token: int) -> int | None:
    hits = np.flatnonzero(seq == token)
    return int(hits[0]) if hits.size else None


def image_span(seq: Any, layout: VocabLayout) -> tuple[int, int]:
    """``(start, stop)`` positions of the image codes: after the first ``<image>``, up to ``</image>``.

    A sequence cut short (e.g. generation stopped early) with no ``</image>`` runs to its end.
    DataError if there is no ``<image>`` token.
    """
    seq = np.asarray(seq).reshape(-1)
    start = _first(seq, layout.image)
    if start is None:
        raise DataError("sequence has no <image> token; cannot locate the image codes")
    start += 1
    end = _first(seq[start:], layout.image_end)
    return start, (seq.size if end is None else start + end)


def image_positions(seq: Any, layout: VocabLayout) -> np.ndarray:
    """Positions (int64) of the image-code slots of a sequence (see image_span)."""
    start, stop = image_span(seq, layout)
    return np.arange(start, stop, dtype=np.int64)


def extract_image_codes(seq: Any, layout: VocabLayout, n_codes: int | None = None) -> np.ndarray:
    """Image codes ``0..K-1`` (int64) of a 1-D sequence; inverse of layout_t2i / layout_uncond.

    DataError if a token in the span is not an image code, or if ``n_codes`` is given and the span has
    another length (e.g. a generated sequence closed its image early).
    """
    seq = np.asarray(seq).reshape(-1)
    start, stop = image_span(seq, layout)
    if n_codes is not None and stop - start != n_codes:
        raise DataError(f"image span holds {stop - start} tokens, expected {n_codes}")
    return layout.ids_to_codes(seq[start:stop])


def caption_ids(seq: Any, layout: VocabLayout) -> np.ndarray:
    """Caption text ids (int64) between ``<text>`` and ``</text>``; empty for a sequence with no ``<text>``."""
    seq = np.asarray(seq, dtype=np.int64).reshape(-1)
    start = _first(seq, layout.text)
    if start is None:
        return np.zeros(0, dtype=np.int64)
    start += 1
    # A truncated prompt may lack </text>: stop at the first special instead.
    specials = np.flatnonzero(layout.is_special(seq[start:]))
    stop = start + int(specials[0]) if specials.size else seq.size
    return seq[start:stop].copy()
