"""Widening the vocabulary of a (pre-trained) model: new rows for special tokens and image codes."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ablate.errors import ConfigError
from ablate.schema import NEW_ROW_INITS

if TYPE_CHECKING:
    from ablate.model.transformer import Transformer

EXPAND_MODES = NEW_ROW_INITS  # how widened rows start: the schema's model.new_rows_init choices


@torch.no_grad()
def expand_rows(
    weight: torch.Tensor, new_size: int, mode: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return a (new_size, D) copy of ``weight`` (V, D): rows [0, V) bit-exact, rows [V, new_size) new.

    ``random``: open_lm's init, truncated normal with std 1/sqrt(D) cut at +-3 std (drawn in float32
    from ``generator``, then cast). ``mean``: every new row is the mean of the existing rows (no noise).
    """
    if mode not in EXPAND_MODES:
        raise ConfigError("vocab expansion mode", mode, ", ".join(EXPAND_MODES))
    v, d = weight.shape
    if new_size < v:
        raise ConfigError("model.vocab_size", new_size, f">= the current vocabulary size ({v})")
    out = torch.empty(new_size, d, dtype=weight.dtype, device=weight.device)
    out[:v] = weight
    n_new = new_size - v
    if n_new:
        if mode == "mean":
            out[v:] = weight.mean(dim=0)
        else:
            # Drawn on the CPU so a CPU generator gives the same rows whatever the weight's device.
            std = 1.0 / math.sqrt(d)
            new = torch.empty(n_new, d, dtype=torch.float32)
            nn.init.trunc_normal_(new, std=std, a=-3 * std, b=3 * std, generator=generator)
            out[v:] = new.to(device=weight.device, dtype=weight.dtype)
    return out


@torch.no_grad()
def expand_vocab(
    model: Transformer,
    new_vocab_size: int,
    mode: str,
    generator: torch.Generator | None = None,
    rows: dict[int, torch.Tensor] | None = None,
) -> None:
    """Widen ``model.tok_embeddings`` and ``model.output`` to ``new_vocab_size`` rows, in place.

    Parameter names stay the same; tied weights stay one tensor; ``model.args.vocab_size`` is updated.
    The embedding is expanded first, then (if untied) the output, each by ``expand_rows``. ``rows`` maps a
    start index to an (n, D) block written over embedding rows [start, start + n) (with tying, that is
    the output too). New Parameter objects replace the old ones (requires_grad kept), so build the
    optimizer after this call.
    """
    emb, out = model.tok_embeddings, model.output
    tied = emb.weight is out.weight
    d = emb.weight.shape[1]
    new_emb = expand_rows(emb.weight, new_vocab_size, mode, generator)
    for start, block in (rows or {}).items():
        if block.ndim != 2 or block.shape[1] != d or not 0 <= start <= new_vocab_size - block.shape[0]:
            raise ConfigError(
                f"rows[{start}]",
                tuple(block.shape),
                f"an (n, {d}) block inside the new vocabulary [0, {new_vocab_size})",
            )
        new_emb[start : start + block.shape[0]] = block.to(new_emb.device, new_emb.dtype)
    emb.weight = nn.Parameter(new_emb, requires_grad=emb.weight.requires_grad)
    emb.num_embeddings = new_vocab_size
    if tied:
        out.weight = emb.weight
    else:
        new_out = expand_rows(out.weight, new_vocab_size, mode, generator)
        out.weight = nn.Parameter(new_out, requires_grad=out.weight.requires_grad)
    out.out_features = new_vocab_size
    # A new args object, so a ModelArgs the caller shares elsewhere is not changed behind its back.
    model.args = dataclasses.replace(model.args, vocab_size=new_vocab_size)
