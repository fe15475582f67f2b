"""Text ability of a (widened) language model: held-out text perplexity and greedy completions (Table 1).

The paper (Table 1; docs/PAPER.md) shows that text-to-image training destroys the language model's
text ability: completions of plain-English prompts are fluent before training and degenerate after ~5B
tokens. This module measures that at any step of a run:

- ``heldout_perplexity``: exp of the mean next-token cross-entropy on held-out *text-only* sequences
  (the shards the `pretrain` stage writes under ``data/heldout``);
- ``greedy_completions``: greedy continuations of a few prompts (``evaluate.prompts``), decoded to text;
- ``TextProbe``: both, as an ``evaluate(step, tokens)`` callback for ``ablate.train.loop.train_loop``,
  writing the completions to ``completions.jsonl`` so Table 1 can be built from a run directory.

Both measures look at the text part of the vocabulary only (ids ``[0, text_vocab_size)``): the
text-to-image model's output layer is widened with specials and image codes, and before any training
step those new rows are random. Normalising the softmax over the text ids alone makes the number the same
for the language model before widening, for the widened model at step 0 and for the model after N tokens,
so a rise measures forgotten *text* knowledge, not probability mass moved onto image codes (which the
image loss asks for and which is no loss of ability: a text prompt never continues with an image code).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ablate import metrics
from ablate.atomic import atomic_write_text
from ablate.data.shards import ShardDataset, read_batch
from ablate.errors import ConfigError, DataError
from ablate.tokenize.text import TextTokenizer

COMPLETIONS_FILE = "completions.jsonl"


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """eval() and no_grad for the block; the model's previous train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (inputs are moved there)."""
    return next(model.parameters()).device


def _text_vocab_of(dataset: ShardDataset) -> int:
    """The text vocabulary a text-only shard directory was written with (the pretrain stage records it)."""
    try:
        return int(dataset.meta["vocab_size"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{dataset.path}/meta.json records no vocab_size; pass text_vocab_size") from None


def heldout_perplexity(
    model: nn.Module,
    dataset: ShardDataset,
    max_sequences: int = 64,
    batch_size: int = 8,
    *,
    text_vocab_size: int | None = None,
) -> float:
    """exp(mean next-token cross-entropy) over the first ``max_sequences`` sequences of ``dataset``.

    ``dataset`` holds text-only sequences (``data/heldout`` of the pretrain stage); every target counts,
    each sequence of length L giving L-1 targets. The softmax is taken over the text ids
    ``[0, text_vocab_size)`` only (see the module docstring); ``text_vocab_size`` defaults to the shards'
    recorded ``vocab_size``, which the pretrain stage sets to the model's text vocabulary.
    The first sequences (not a random draw) so every evaluation of a run sees the same text.
    """
    if max_sequences < 1:
        raise ConfigError("max_sequences", max_sequences, "an integer >= 1")
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    t = _text_vocab_of(dataset) if text_vocab_size is None else int(text_vocab_size)
    n = min(int(max_sequences), len(dataset))
    if n < 1 or dataset.seq_len < 2:
        raise DataError(
            f"{dataset.path}: no held-out targets ({len(dataset)} sequences of {dataset.seq_len})"
        )
    device = _device(model)
    total_nll, total_targets = 0.0, 0
    with _inference(model):
        for start in range(0, n, batch_size):
            batch = read_batch(dataset, np.arange(start, min(start + batch_size, n))).to(device)  # (B, L)
            if int(batch.max()) >= t:
                raise DataError(
                    f"{dataset.path}: held-out ids reach {int(batch.max())}, outside the text vocabulary "
                    f"[0, {t}): these are not text-only shards"
                )
            inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, L-1) each
            logits = model(inputs)[..., :t]  # (B, L-1, T): image/special logits dropped
            # Sums, not batch means, so the result is the token-weighted mean whatever batch_size is.
            total_nll += float(F.cross_entropy(logits.reshape(-1, t), targets.reshape(-1), reduction="sum"))
            total_targets += targets.numel()
    return math.exp(total_nll / total_targets)


def greedy_ids(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    allowed_vocab: int,
    *,
    use_cache: bool = True,
) -> list[int]:
    """Greedy continuation of ``prompt_ids`` (new ids only), choosing among ids ``[0, allowed_vocab)``.

    A prefix longer than the model's ``args.seq_len`` keeps its last ``seq_len`` tokens, the context the
    model was trained on. Ties go to the lowest id (torch.argmax), so the result is deterministic for
    fixed weights.

    With a model that has a key/value cache (``Transformer.new_kv_cache``) and ``use_cache``, the prompt
    is run once and then one new token per step. Once the context is a full window, dropping its first
    token changes every position (and, through the layers, every cached key), so from then on each step
    re-runs the window, as the uncached path (any other model, or ``use_cache=False``) does every step.
    """
    if not prompt_ids:
        raise ValueError("greedy decoding needs a non-empty prompt (the model has no start token)")
    if max_new_tokens < 0:
        raise ConfigError("max_new_tokens", max_new_tokens, "an integer >= 0")
    window = getattr(getattr(model, "args", None), "seq_len", None)
    device = _device(model)
    ids = list(prompt_ids)
    new: list[int] = []
    make_cache = getattr(model, "new_kv_cache", None) if use_cache else None
    cache = None
    with _inference(model):
        for _ in range(max_new_tokens):
            context = ids[-window:] if window else ids
            if not callable(make_cache):
                x = torch.tensor([context], dtype=torch.long, device=device)  # (1, t)
                logits = model(x)[0, -1, :allowed_vocab]  # (allowed_vocab,): later ids can never be chosen
            else:
                if cache is not None and cache.length < len(context):
                    step = context[cache.length :]  # the token(s) the cache has not seen
                else:  # first step, or the window slid: positions moved, (re)fill from the context
                    cache = make_cache(len(context) + max_new_tokens if window is None else window)
                    step = context
                x = torch.tensor([step], dtype=torch.long, device=device)  # (1, t)
                logits = model(x, cache=cache)[0, -1, :allowed_vocab]  # (allowed_vocab,)
            nxt = int(torch.argmax(logits))
            ids.append(nxt)
            new.append(nxt)
    return new


def greedy_completions(
    model: nn.Module,
    tokenizer: TextTokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 24,
    *,
    text_vocab_size: int,
) -> list[str]:
    """Greedy completion (continuation text only) of each prompt, restricted to text ids.

    Candidates are ids below ``min(text_vocab_size, tokenizer.vocab_size)``: ids at or above
    ``text_vocab_size`` are specials and image codes, and ids between the tokenizer's size and the
    model's text vocabulary (GPT-NeoX's tokenizer has 50,277 of open_lm's 50,432) decode to nothing.
    """
    allowed = min(int(text_vocab_size), tokenizer.vocab_size)
    return [
        tokenizer.decode(greedy_ids(model, tokenizer.encode(p), max_new_tokens, allowed)) for p in prompts
    ]


class TextProbe:
    """``evaluate(step, tokens)`` callback: held-out text perplexity, plus completions to completions.jsonl.

    Each call returns ``{metrics.HELDOUT_TEXT_PPL: ...}`` (logged by train_loop at that step) and appends
    ``{"step", "tokens", "completions": [{"prompt", "completion"}]}`` to ``out_dir/completions.jsonl``:
    step 0 is the model before training (Table 1's "before"), later lines the model after ``tokens``.
    A line for a step at or after the one being written is dropped first, so a run resumed from a
    checkpoint (which re-evaluates the steps after it) leaves one line per step, like metrics.jsonl.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: ShardDataset,
        tokenizer: TextTokenizer,
        prompts: Sequence[str],
        text_vocab_size: int,
        out_dir: str | Path,
        *,
        max_sequences: int = 64,
        batch_size: int = 8,
        max_new_tokens: int = 24,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.text_vocab_size = int(text_vocab_size)
        self.path = Path(out_dir) / COMPLETIONS_FILE
        self.max_sequences = max_sequences
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def _drop_from(self, step: int) -> None:
        """Remove lines with step >= ``step`` (left by a run that was resumed from an earlier checkpoint)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] < step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def __call__(self, step: int, tokens: int) -> dict[str, float]:
        ppl = heldout_perplexity(
            self.model,
            self.dataset,
            self.max_sequences,
            self.batch_size,
            text_vocab_size=self.text_vocab_size,
        )
        texts = greedy_completions(
            self.model,
            self.tokenizer,
            self.prompts,
            self.max_new_tokens,
            text_vocab_size=self.text_vocab_size,
        )
        record: dict[str, Any] = {
            "step": int(step),
            "tokens": int(tokens),
            "completions": [{"prompt": p, "completion": c} for p, c in zip(self.prompts, texts, strict=True)],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_from(int(step))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return {metrics.HELDOUT_TEXT_PPL: ppl}


def read_completions(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records a TextProbe wrote to ``out_dir/completions.jsonl``, in step order ([] if none)."""
    path = Path(out_dir) / COMPLETIONS_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["step"])
