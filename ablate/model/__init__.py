"""The language model: open_lm's architecture, checkpoint loading, vocabulary widening, freezing."""

from ablate.model.checkpoint_io import load_into, load_open_lm_state_dict
from ablate.model.freeze import (
    apply_trainable,
    positional_parameter_names,
    trainable_parameter_names,
)
from ablate.model.transformer import (
    ModelArgs,
    Transformer,
    count_parameters,
    ffn_hidden_dim,
    flops_per_token,
    non_embedding_parameters,
)
from ablate.model.vocab import EXPAND_MODES, expand_rows, expand_vocab

__all__ = [
    "EXPAND_MODES",
    "ModelArgs",
    "Transformer",
    "apply_trainable",
    "count_parameters",
    "expand_rows",
    "expand_vocab",
    "ffn_hidden_dim",
    "flops_per_token",
    "load_into",
    "load_open_lm_state_dict",
    "non_embedding_parameters",
    "positional_parameter_names",
    "trainable_parameter_names",
]
