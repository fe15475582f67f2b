"""Autoregressive image sampling from a trained model: logit filtering and constrained generation.

Generation starts from a prompt that ends with ``<image>`` (``ablate.data.sequence.prompt_t2i`` or
``prompt_uncond``) and emits exactly ``n_codes`` image codes. At every step the logits of all non-image
ids (text, specials) are set to -inf *before* temperature / top-k / top-p, so the filters act on the
distribution over image codes only and a non-image token can never be emitted, however much the model
prefers one (an undertrained model often does).

Decoding is incremental when the model has a key/value cache (``Transformer.new_kv_cache``): the prompt
is run once (prefill), then each step runs the one token just drawn, attending to the cached keys and
values. A model without one (any module mapping ids (B, T) to logits (B, T, V)), or ``use_cache=False``,
re-runs the whole prefix every step, ``O(n_codes * (P + n_codes)^2)`` attention work and a (B, T, V)
output per step. Both give the same logits up to float rounding, so the same codes for the same seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ablate.data.sequence import VocabLayout
from ablate.errors import ConfigError, DataError


def _check_filters(temperature: float, top_k: int, top_p: float) -> None:
    if isinstance(temperature, bool) or not (isinstance(temperature, numbers.Real) and temperature > 0):
        raise ConfigError("evaluate.temperature", temperature, "a number > 0", hint="use top_k=1 for greedy")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ConfigError("evaluate.top_k", top_k, "an integer >= 0 (0 disables top-k)")
    if isinstance(top_p, bool) or not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise ConfigError("evaluate.top_p", top_p, "a number in (0, 1] (1 disables top-p)")


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of ``logits (B, V)``; removed ids get -inf.

    - ``temperature``: logits are divided by it (> 0; < 1 sharpens, > 1 flattens).
    - ``top_k``: keep exactly the k largest logits per row (ties broken by torch.topk; 0 = off).
    - ``top_p``: keep the smallest set of most probable ids whose probability (after temperature and
      top-k) reaches ``top_p`` (1 = off). The most probable id is always kept.

    Pure: returns a new tensor and leaves ``logits`` unchanged. Ids that are already -inf stay -inf.
    """
    _check_filters(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"filter_logits expects logits of shape (B, V), got {tuple(logits.shape)}")
    out = logits / temperature  # (B, V), a new tensor
    neg_inf = float("-inf")
    v = out.shape[-1]
    if 0 < top_k < v:
        # Scatter the k winners into a -inf row rather than thresholding at the k-th value, so ties at
        # the threshold cannot keep more than k ids.
        vals, idx = out.topk(top_k, dim=-1)  # each (B, k)
        out = torch.full_like(out, neg_inf).scatter(-1, idx, vals)
    if top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)  # each (B, V)
        # float64 softmax/cumsum: a float32 running sum can drift by ~1e-6 over a large vocabulary,
        # enough to move the cut at a probability boundary.
        probs = sorted_logits.double().softmax(dim=-1)  # (B, V)
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass of the strictly more probable ids
        # An id is needed iff the ids ranked above it have not reached p yet; rank 0 always is (0 < p).
        drop_sorted = mass_before >= top_p  # (B, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        out = out.masked_fill(drop, neg_inf)
    return out


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _new_cache(model: nn.Module, max_len: int) -> Any:
    """A key/value cache for ``max_len`` tokens, or None when the model has none (decode uncached)."""
    make = getattr(model, "new_kv_cache", None)
    return make(max_len) if callable(make) else None


def _as_prompt_batch(prompts: Any, layout: VocabLayout) -> torch.Tensor:
    """Prompts as a (B, P) long tensor; DataError unless every row ends with ``<image>``."""
    if isinstance(prompts, torch.Tensor):
        batch = prompts.detach().to(torch.long)
    else:
        batch = torch.as_tensor(np.asarray(prompts), dtype=torch.long)
    if batch.dim() != 2 or batch.numel() == 0:
        raise DataError(
            f"prompts must be a non-empty (B, P) batch of token ids, got shape {tuple(batch.shape)}"
        )
    if bool((batch[:, -1] != layout.image).any()):
        raise DataError(
            f"every prompt must end with <image> (id {layout.image}); build prompts with "
            "ablate.data.sequence.prompt_t2i / prompt_uncond"
        )
    return batch


@torch.no_grad()
def sample_images(
    model: nn.Module,
    prompts: torch.Tensor | np.ndarray,
    layout: VocabLayout,
    n_codes: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    use_cache: bool = True,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Sample ``n_codes`` image codes after each prompt: ``prompts (B, P)`` -> codes ``(B, n_codes)``.

    ``model`` maps ids ``(B, T)`` to logits ``(B, T, V)`` with ``V >= layout.size``
    (``ablate.model.transformer.Transformer``). Prompts must share one length P and end with ``<image>``;
    use ``sample_from_prompts`` for prompts of different lengths. The codes are int64 on the CPU, in
    ``[0, layout.codebook_size)``, ready for ``ImageTokenizer.decode``.

    Runs in eval mode under no_grad (the model's previous train/eval mode is restored). ``generator``
    (on the model's device) makes the samples reproducible: same seed, same codes. ``use_cache=False``
    re-runs the whole prefix every step even if the model has a KV cache (the slow reference path).

    ``guidance_scale`` > 1: classifier-free guidance. A second stream decodes the same codes after the
    empty-caption prompt ``<doc> <text> </text> <image>`` and each step's image logits become
    ``uncond + scale * (cond - uncond)`` before the filters (the model must have been trained with
    caption dropout to know that prompt).
    """
    _check_filters(temperature, top_k, top_p)
    if isinstance(guidance_scale, bool) or not (
        isinstance(guidance_scale, numbers.Real) and guidance_scale >= 1
    ):
        raise ConfigError("evaluate.guidance_scale", guidance_scale, "a number >= 1 (1 disables guidance)")
    if isinstance(n_codes, bool) or not isinstance(n_codes, numbers.Integral) or n_codes < 1:
        raise ConfigError("n_codes", n_codes, "an integer >= 1 (image tokens per image)")
    device = _model_device(model)
    ids = _as_prompt_batch(prompts, layout).to(device)  # (B, P)
    b, p = ids.shape
    max_len = getattr(getattr(model, "args", None), "seq_len", None)
    if max_len is not None and p + n_codes > max_len:
        raise ConfigError(
            "n_codes",
            n_codes,
            f"<= {max_len - p} (prompt of {p} tokens + image codes must fit the model's seq_len {max_len})",
        )
    lo, hi = layout.image_offset, layout.size  # image codes occupy [lo, hi) of the vocabulary
    codes = torch.empty(b, n_codes, dtype=torch.long, device=device)  # (B, n_codes)
    streams = [_Stream(model, ids, n_codes, use_cache)]
    if guidance_scale != 1:
        null = torch.tensor([layout.doc, layout.text, layout.text_end, layout.image], device=device)
        streams.append(_Stream(model, null.expand(b, -1), n_codes, use_cache))  # (B, 4): the empty caption
    was_training = model.training
    model.eval()
    try:
        for i in range(n_codes):
            logits = [st.next_logits() for st in streams]  # each (B, V)
            if logits[0].shape[-1] < hi:
                raise DataError(
                    f"model vocabulary ({logits[0].shape[-1]} ids) is smaller than the layout's ({hi}); "
                    "the model was not built for this text tokenizer / codebook"
                )
            # Only image codes are candidates: top-k / top-p rank and renormalise over them alone. Drawing
            # from the (B, K) slice (not a masked (B, V) row) is the mask, and K << V makes the sort cheap.
            image = logits[0][:, lo:hi]  # (B, K)
            if len(logits) > 1:
                uncond = logits[1][:, lo:hi]  # (B, K)
                image = uncond + guidance_scale * (image - uncond)
            probs = filter_logits(image, temperature, top_k, top_p).softmax(dim=-1)  # (B, K)
            nxt = torch.multinomial(probs, 1, generator=generator) + lo  # (B, 1) vocabulary ids
            if bool(((nxt < lo) | (nxt >= hi)).any()):  # pragma: no cover (a broken invariant)
                raise RuntimeError("sampled a non-image id at an image position")
            codes[:, i] = nxt[:, 0] - lo
            for st in streams:
                st.feed(nxt)
    finally:
        model.train(was_training)
    return codes.cpu()


class _Stream:
    """One decoding context: a prompt batch and the codes drawn after it, with its own key/value cache."""

    def __init__(self, model: nn.Module, prompt: torch.Tensor, n_codes: int, use_cache: bool) -> None:
        self.model, self.ids = model, prompt  # (B, P)
        # The last code drawn is never fed back, so the cache needs room for P + n_codes - 1 tokens.
        self.cache = _new_cache(model, prompt.shape[1] + n_codes - 1) if use_cache else None
        self.step_ids = prompt  # what the next forward runs: the prompt, then (cached) one new token per row

    def next_logits(self) -> torch.Tensor:
        """(B, V) float logits of the next token."""
        if self.cache is None:
            return self.model(self.ids)[:, -1, :].float()  # whole prefix re-run
        return self.model(self.step_ids, cache=self.cache)[:, -1, :].float()  # new tokens only

    def feed(self, nxt: torch.Tensor) -> None:
        """Append the drawn ids ``(B, 1)``."""
        if self.cache is None:
            self.ids = torch.cat([self.ids, nxt], dim=1)  # (B, P + i + 1)
        else:
            self.step_ids = nxt  # (B, 1); the prefix is in the cache


def sample_from_prompts(
    model: nn.Module,
    prompts: Sequence[Any],
    layout: VocabLayout,
    n_codes: int,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> torch.Tensor:
    """``sample_images`` for 1-D prompts of any lengths: ``N`` prompts -> codes ``(N, n_codes)``, input order.

    ``settings`` are ``sample_images``' keywords (temperature, top_k, top_p, use_cache, guidance_scale),
    passed on as they are: their defaults and checks live there only.

    t2i prompts differ in length with their captions. The model has no attention mask, so padding a
    prompt would put tokens it never saw in training into its context; instead prompts are grouped by
    length and each group is sampled in batches of at most ``batch_size``. Deterministic for a given
    generator state (groups run in order of length, then of first appearance).
    """
    if batch_size < 1:
        raise ConfigError("evaluate.batch_size", batch_size, "an integer >= 1")
    rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    out = torch.empty(len(rows), n_codes, dtype=torch.long)  # (N, n_codes)
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(r.size, []).append(i)
    for length in sorted(by_len):
        idx = by_len[length]
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            batch = np.stack([rows[i] for i in chunk])  # (b, length)
            out[chunk] = sample_images(model, batch, layout, n_codes, generator=generator, **settings)
    return out
