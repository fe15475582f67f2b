"""open_lm's architecture as numbers: the model arguments, an open_lm model-config JSON read into them,
and the parameter and FLOP counts they imply. No torch: a launch plans and estimates arms with these
alone (ablate.model.transformer builds the module)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ablate.errors import AssetMissingError, ConfigError
from ablate.schema import FFN_TYPES, NORMS, POSITIONAL

_REQUIRED = ("hidden_dim", "n_layers", "n_heads", "seq_len", "vocab_size")


@dataclass
class ModelArgs:
    """Architecture, with the keys of open_lm's model-config JSON (defaults are open_lm's CLI defaults)."""

    hidden_dim: int
    n_layers: int
    n_heads: int
    seq_len: int
    vocab_size: int
    post_embed_norm: bool = False
    weight_tying: bool = False
    model_norm: str = "default_layer_norm"
    ffn_type: str = "swiglu"
    qk_norm: bool = False
    positional_embedding_type: str = "rotary"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.n_heads

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        for key in _REQUIRED:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{key}", value, "a positive integer")
        for key in ("post_embed_norm", "weight_tying", "qk_norm"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key}", getattr(self, key), "true or false")
        for key, allowed in (
            ("model_norm", NORMS),
            ("ffn_type", FFN_TYPES),
            ("positional_embedding_type", POSITIONAL),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"model.{key}", getattr(self, key), ", ".join(allowed))
        eps = self.norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ConfigError("model.norm_eps", eps, "a float in (0, 1)")
        if self.hidden_dim % self.n_heads:
            raise ConfigError("model.hidden_dim", self.hidden_dim, f"a multiple of n_heads ({self.n_heads})")
        if self.positional_embedding_type != "none" and self.head_dim % 2:
            raise ConfigError(
                "model.hidden_dim",
                self.hidden_dim,
                f"hidden_dim / n_heads even (rotary rotates pairs of channels; head_dim is {self.head_dim})",
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelArgs:
        """Build from an open_lm model config; keys this model does not use (moe_*, ...) are ignored."""
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ConfigError(
                f"model.{missing[0]}", "<missing>", "a positive integer (required in an open_lm model config)"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> ModelArgs:
        """Read an open_lm model-config JSON (e.g. open_lm/model_configs/open_lm_1b.json)."""
        path = Path(path)
        if not path.is_file():
            raise AssetMissingError(
                f"open_lm model config not found: {path}. Provide the JSON open_lm trained with "
                "(e.g. open_lm/model_configs/open_lm_1b.json from github.com/mlfoundations/open_lm)."
            )
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError("model config", str(path), f"a readable JSON object ({e})") from e
        if not isinstance(d, dict):
            raise ConfigError("model config", str(path), "a JSON object with open_lm's keys")
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The config as open_lm's JSON keys (round-trips through from_dict)."""
        return asdict(self)


# How the keys of an open_lm model-config JSON are read (model.config_json), from what open_lm's
# create_params (open_lm/model.py) does with them and with the CLI arguments of open_lm/params.py.
# Required: the keys create_params reads as cfg[key], except seq_len (data.seq_len sets it here).
_JSON_REQUIRED = ("hidden_dim", "n_layers", "n_heads", "vocab_size", "post_embed_norm", "weight_tying")
# Read, with ModelArgs's defaults (open_lm's) where absent. open_lm itself always normalises with
# eps 1e-5 (its Params default; create_params passes none), so an open_lm JSON has no norm_eps and gets
# that; ablate's own model_config.json (train_and_save) records it, so it is honoured when present.
_JSON_OPTIONAL = ("model_norm", "ffn_type", "qk_norm", "positional_embedding_type", "norm_eps")
# Ignored, as they change nothing here: seq_len is the run's data.seq_len (rotary has no length-sized
# parameter); the MoE settings other than moe_freq parametrise MoE layers, which exist only with
# moe_freq > 0 (refused below) or ffn_type "moe" (refused by ModelArgs.validate).
_JSON_IGNORED = (
    "seq_len",
    "moe_num_experts",
    "moe_loss_weight",
    "moe_expert_model_parallelism",
    "moe_weight_parallelism",
    "moe_capacity_factor",
    "moe_top_k",
)
# Accepted only with the value that keeps open_lm's default architecture, refused otherwise: MoE layers
# every moe_freq blocks; custom_attn (open_lm's attention with another activation or sequence scaling:
# another function, while the other attn_name values are kernels of the same softmax attention) and its
# settings, which mean nothing without it. open_lm reads the attn_* settings from its command line, not
# the JSON, but a JSON that names them asks for that attention, so they are not ignored either.
_SOFTMAX_ATTN = ("auto", "xformers_attn", "xformers_attn_variable_length", "torch_attn")
_JSON_DEFAULT_ONLY: dict[str, tuple[object, ...]] = {
    "moe_freq": (0,),
    "attn_name": _SOFTMAX_ATTN,
    "attn_activation": (None,),
    "attn_seq_scalar": (None,),
    "attn_seq_scalar_alpha": (None,),
}
# Aliases of what ablate implements: open_lm's swiglu_torch is its pure-torch SwiGLU, the same function,
# initialisation and parameter names (w12, w3) as the xformers one.
_JSON_ALIASES = {("ffn_type", "swiglu_torch"): "swiglu"}


def open_lm_arch(path: str | Path) -> dict[str, Any]:
    """The architecture an open_lm model-config JSON describes: ModelArgs's fields but seq_len.

    Raises ConfigError (key ``model.config_json``) naming the file and the JSON key when the file is
    missing, is not a JSON object, lacks a required key, has an invalid value, or sets a key that
    changes the architecture in a way this model does not implement (MoE, custom attention, Mamba, ...).
    """
    where = str(path)

    def error(allowed: str) -> ConfigError:
        return ConfigError("model.config_json", where, allowed)

    p = Path(path)
    if not p.is_file():
        raise error(
            "an existing open_lm model-config JSON (e.g. open_lm/model_configs/open_lm_1b.json); no such file"
        )
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"an open_lm model-config JSON; the file is not readable JSON ({e})") from e
    if not isinstance(d, dict):
        raise error(f"a JSON object with open_lm's model keys; the file holds a {type(d).__name__}")
    if "d_model" in d or "n_layer" in d:  # open_lm's Mamba configs (model_configs/mamba_*.json)
        raise error("an open_lm transformer config; the file is a Mamba config (d_model, n_layer)")
    for key in _JSON_REQUIRED:
        if key not in d:
            raise error(
                f"a JSON with '{key}'; the file has none (open_lm requires {', '.join(_JSON_REQUIRED)})"
            )
    known = {*_JSON_REQUIRED, *_JSON_OPTIONAL, *_JSON_IGNORED, *_JSON_DEFAULT_ONLY, "rotary_old"}
    for key, value in d.items():
        if key not in known:
            # Neither open_lm nor ablate reads it: most likely a misspelt architecture key, whose
            # intended value would otherwise be lost without a word.
            raise error(f"open_lm's model keys ({', '.join(sorted(known))}); the file sets '{key}'")
        if key in _JSON_DEFAULT_ONLY and value not in _JSON_DEFAULT_ONLY[key]:
            allowed = _JSON_DEFAULT_ONLY[key]
            shown = ("one of " if len(allowed) > 1 else "") + ", ".join(map(json.dumps, allowed))
            raise error(
                f"'{key}' {shown}: ablate implements open_lm's dense transformer with softmax attention "
                f"only; the file sets '{key}': {json.dumps(value)}"
            )
    # Old open_lm's JSONs said rotary_old: true for what is positional_embedding_type "head_rotary" now;
    # open_lm ignores the key today, so it is accepted where it agrees with positional_embedding_type.
    if d.get("rotary_old", False) and d.get("positional_embedding_type") != "head_rotary":
        raise error(
            "'rotary_old': false, or true with 'positional_embedding_type': \"head_rotary\" (what old "
            "open_lm's rotary_old meant); the file sets rotary_old without it"
        )
    arch = {k: d[k] for k in (*_JSON_REQUIRED, *_JSON_OPTIONAL) if k in d}
    for (key, alias), value in _JSON_ALIASES.items():
        if arch.get(key) == alias:
            arch[key] = value
    try:
        # seq_len is the run's, not the file's; any valid length checks the rest.
        args = ModelArgs(seq_len=1, **arch)
    except ConfigError as e:
        key = e.key.removeprefix("model.")
        raise error(f"a JSON whose '{key}' is {e.allowed}; the file has {json.dumps(e.value)}") from None
    out = args.to_dict()
    del out["seq_len"]
    return out


def ffn_hidden_dim(args: ModelArgs) -> int:
    """FFN width as open_lm: SwiGLU 8/3*D rounded up to a multiple of 256 (5632 for D=2048); GELU 4*D."""
    if args.ffn_type == "swiglu":
        return 256 * ((int(2 * 4 * args.hidden_dim / 3) + 256 - 1) // 256)
    return 4 * args.hidden_dim


# open_lm's LayerNorm variants (open_lm/norms.py, get_norm_class) as (gain, bias): which of ``weight`` and
# ``bias`` they have. rms_norm is RmsNorm. open_lm's gain-only and no-gain LayerNorms are F.layer_norm
# with those parameters left out, the same as nn.LayerNorm with bias=False / elementwise_affine=False.
# The lp_ ("low precision") variants are open_lm's LPLayerNorm: the same parameters and the same function,
# except that under autocast it casts input, gain and bias to the autocast dtype (bf16) and normalises in
# it. Here they are their twin's module, which normalises in float32 under autocast too: the result is
# the twin's (more precise than open_lm's bf16 normalisation, not a different function), and open_lm's
# checkpoints load as they are since the state-dict names are the same.
LAYER_NORM_AFFINE: dict[str, tuple[bool, bool]] = {
    "default_layer_norm": (True, True),
    "lp_layer_norm": (True, True),
    "gain_only_layer_norm": (True, False),
    "gain_only_lp_layer_norm": (True, False),
    "no_wb_layer_norm": (False, False),
}


def norm_parameters(args: ModelArgs) -> int:
    """Parameters of one norm layer: D per gain or bias (rms_norm has a gain only)."""
    if args.model_norm == "rms_norm":
        return args.hidden_dim
    return args.hidden_dim * sum(LAYER_NORM_AFFINE[args.model_norm])


def non_embedding_parameters(args: ModelArgs) -> int:
    """Parameters that take part in matmuls: all but the input embedding table (a lookup, no FLOPs).

    The output projection counts, tied to the embedding or not, because it is a D x V matmul per token.
    """
    d, n_ffn = args.hidden_dim, ffn_hidden_dim(args)
    norm = norm_parameters(args)
    ffn = 3 * d * n_ffn if args.ffn_type == "swiglu" else 2 * d * n_ffn
    per_layer = 4 * d * d + ffn + 2 * norm + (2 * norm if args.qk_norm else 0)
    extra_norms = norm * (2 if args.post_embed_norm else 1)
    return args.n_layers * per_layer + extra_norms + d * args.vocab_size


def flops_per_token(args: ModelArgs) -> float:
    """Training FLOPs per token: ``6 * N + 12 * n_layers * hidden_dim * seq_len``.

    N is ``non_embedding_parameters(args)``; 6 = 2 (multiply-add) x 3 (forward + backward), and the
    second term is attention's QK^T and AV products over a full context (Kaplan et al. 2020, without
    halving for the causal mask).
    """
    return 6.0 * non_embedding_parameters(args) + 12.0 * args.n_layers * args.hidden_dim * args.seq_len
