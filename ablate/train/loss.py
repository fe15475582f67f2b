"""Next-token loss split into text and image targets (see docs/CONTRACTS.md, "Loss split").

A target is *ignored* if it is ``<pad>``, *image* if it is an image code, *text* otherwise (caption text
and the structural specials). The training objective is the mean cross-entropy over non-pad targets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ablate import metrics as M
from ablate.data.sequence import VocabLayout


@dataclass(frozen=True)
class LossParts:
    """One batch's loss and its split; all fields are 0-dim tensors on the logits' device.

    Counts stay tensors (int64) so that computing them never forces a device sync; call ``to_metrics``
    when the numbers are actually needed. A class absent from the batch has loss 0 and count 0.
    """

    loss: torch.Tensor  # mean CE over non-pad targets (differentiable; the objective)
    text_loss: torch.Tensor  # mean CE over text targets
    image_loss: torch.Tensor  # mean CE over image-code targets
    n_text: torch.Tensor
    n_image: torch.Tensor
    n_ignored: torch.Tensor

    def to_metrics(self) -> dict[str, float]:
        """Python numbers for logging (syncs with the device): loss, text_loss, image_loss, perplexity, counts."""
        loss = float(self.loss.detach())
        return {
            M.LOSS: loss,
            M.TEXT_LOSS: float(self.text_loss.detach()),
            M.IMAGE_LOSS: float(self.image_loss.detach()),
            # exp overflows to inf above ~709; inf is the honest value for a diverged run.
            M.PERPLEXITY: math.exp(loss) if loss < 709 else math.inf,
            "n_text": int(self.n_text),
            "n_image": int(self.n_image),
            "n_ignored": int(self.n_ignored),
        }

    @staticmethod
    def merge(parts: Iterable[LossParts]) -> LossParts:
        """Token-weighted combination of several batches (e.g. micro-batches of one step), detached.

        Each mean is re-weighted by its count, so the result equals split_loss over the concatenated batch.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("merge needs at least one LossParts")
        n_text = _total(p.n_text for p in parts)
        n_image = _total(p.n_image for p in parts)
        n_ignored = _total(p.n_ignored for p in parts)
        text_sum = _total(p.text_loss.detach() * p.n_text for p in parts)
        image_sum = _total(p.image_loss.detach() * p.n_image for p in parts)
        n_used = n_text + n_image
        return LossParts(
            loss=(text_sum + image_sum) / n_used.clamp(min=1),
            text_loss=text_sum / n_text.clamp(min=1),
            image_loss=image_sum / n_image.clamp(min=1),
            n_text=n_text,
            n_image=n_image,
            n_ignored=n_ignored,
        )


def _total(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of a non-empty run of tensors, added left to right as sum() would (same rounding, same dtype)."""
    it = iter(values)
    total = next(it)
    for v in it:
        total = total + v
    return total


def shift_targets(input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L)`` sequences -> inputs ``(B, L-1)`` and next-token targets ``(B, L-1)`` (views, no copy)."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"expected (batch, length>=2) token ids, got shape {tuple(input_ids.shape)}")
    return input_ids[:, :-1], input_ids[:, 1:]


def split_loss(logits: torch.Tensor, targets: torch.Tensor, layout: VocabLayout) -> LossParts:
    """Cross-entropy of ``logits (B, T, V)`` against ``targets (B, T)`` with its text / image split.

    One ``cross_entropy(reduction='none')`` call, then masks: cheap enough to run every step. ``loss``
    equals ``F.cross_entropy(..., ignore_index=layout.pad)`` except that an all-pad batch gives 0, not NaN.
    Under autocast, cross_entropy runs in float32; without it the logits' dtype is used as is (casting a
    ``(B, T, V)`` tensor here would cost a full copy).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and targets (B, T); got {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    vocab = logits.shape[-1]
    flat_t = targets.reshape(-1)  # (B*T,)
    # ignore_index makes pad positions exactly 0 (and gradient-free), so the sums below need no extra masking.
    flat_l = logits.reshape(-1, vocab)  # (B*T, V), a view
    ce = F.cross_entropy(flat_l, flat_t, ignore_index=layout.pad, reduction="none")  # (B*T,)

    ignored = flat_t == layout.pad
    image = layout.is_image(flat_t)
    text = ~(ignored | image)
    n_image = image.sum()
    n_text = text.sum()
    n_ignored = ignored.sum()

    zero = ce.new_zeros(())
    # where() rather than multiply: a non-finite CE on one class must not leak into the other as NaN.
    image_sum = torch.where(image, ce, zero).sum()
    text_sum = torch.where(text, ce, zero).sum()
    return LossParts(
        loss=(image_sum + text_sum) / (n_image + n_text).clamp(min=1),
        text_loss=text_sum / n_text.clamp(min=1),
        image_loss=image_sum / n_image.clamp(min=1),
        n_text=n_text,
        n_image=n_image,
        n_ignored=n_ignored,
    )
