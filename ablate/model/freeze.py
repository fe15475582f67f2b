"""Which parameters train: the presets of the paper's Fig. 6 (unconditional generation, partly frozen LM).

- ``all``: every parameter.
- ``emb_out``: token embedding + output layer.
- ``emb_out_norm``: + every norm (attention_norm, ffn_norm, final norm, q/k norms, post_embed_norm) and
  the positional parameters; open_lm's rotary embedding has none (see ``positional_parameter_names``).
- ``emb_out_norm_half``: + all parameters of layers [0, n_layers // 2).
- ``emb_out_norm_ffn``: + every layer's feed-forward.
"""

from __future__ import annotations

from typing import cast

from torch import nn

from ablate.errors import ConfigError
from ablate.model.transformer import NORM_TYPES, Block, Transformer, count_parameters
from ablate.schema import TRAINABLE_PRESETS as PRESETS


def _param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def positional_parameter_names(model: nn.Module) -> list[str]:
    """Names of learned positional parameters (under any ``pos_embed``); empty for rotary/none."""
    ids: set[int] = set()
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] == "pos_embed":
            ids |= _param_ids(m)
    return [n for n, p in model.named_parameters() if id(p) in ids]


def trainable_parameter_names(model: Transformer, preset: str) -> list[str]:
    """Names (as ``model.named_parameters()`` gives them, shared tensors once) that ``preset`` trains."""
    if preset not in PRESETS:
        raise ConfigError("train.trainable", preset, ", ".join(PRESETS))
    named = list(model.named_parameters())
    if preset == "all":
        return [n for n, _ in named]
    # Select by module, not by name pattern: a tensor registered under two names (GELU's _ff_w1 and
    # feed_forward.0, or tied embedding/output) is selected whichever name it is listed under.
    ids = _param_ids(model.tok_embeddings) | _param_ids(model.output)
    if preset != "emb_out":
        for m in model.modules():
            if isinstance(m, NORM_TYPES):
                ids |= _param_ids(m)
        pos = set(positional_parameter_names(model))
        ids |= {id(p) for n, p in named if n in pos}
    if preset == "emb_out_norm_half":
        for layer in model.layers[: len(model.layers) // 2]:
            ids |= _param_ids(layer)
    elif preset == "emb_out_norm_ffn":
        for layer in model.layers:
            ids |= _param_ids(cast(Block, layer).feed_forward)
    return [n for n, p in named if id(p) in ids]


def apply_trainable(model: Transformer, preset: str) -> tuple[int, int]:
    """Set ``requires_grad`` by ``preset``; return (trainable, total) parameter counts, shared ones once."""
    names = set(trainable_parameter_names(model, preset))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return count_parameters(model, trainable_only=True), count_parameters(model)
