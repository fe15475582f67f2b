"""Reading open_lm checkpoints and loading them, strictly, into a Transformer."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from ablate.errors import AssetMissingError, CheckpointError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP/FSDP and torch.compile wrappers
_SHOW = 5  # offending keys listed per kind in an error


def _strip_prefixes(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _unsafe_globals(path: Path) -> list[str]:
    """The Python globals a checkpoint's pickle names beyond what weights_only=True allows ([] if unknown)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: the error that follows says it is unreadable
        return []


def load_open_lm_state_dict(path: str | Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read an open_lm ``epoch_N.pt`` (a dict with ``state_dict``) or a bare state dict, on the CPU.

    Leading ``module.`` / ``_orig_mod.`` prefixes are stripped (repeatedly, in any order). The file is read
    with ``weights_only=True``, which builds tensors and plain containers and runs no code from the file.
    A checkpoint that pickles other Python objects (open_lm can save its args alongside) is refused with a
    CheckpointError, unless ``trust`` (model.trust_checkpoint=true): unpickling runs whatever the file
    says, so a downloaded file could run any command.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetMissingError(
            f"checkpoint not found: {path}. Provide an open_lm checkpoint with "
            "model.checkpoint=/path/to/epoch_N.pt (a file saved by open_lm, holding a 'state_dict')."
        )
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            names = _unsafe_globals(path)
            if not trust and names:
                raise CheckpointError(
                    f"{path} holds these Python objects besides tensors: {names[:_SHOW]}; reading it "
                    "would run code from the file (full unpickling), so it is refused. If you trust where "
                    "it came from, set model.trust_checkpoint=true; or re-save its weights alone: "
                    "torch.save({'state_dict': torch.load(path, weights_only=False)['state_dict']}, new_path)"
                ) from None
            if not trust:
                raise CheckpointError(
                    f"cannot read checkpoint {path} with weights_only=True ({_torch_reason(e)}). If it is "
                    "an open_lm checkpoint from a source you trust, model.trust_checkpoint=true reads it "
                    "with full unpickling (which runs code the file names)"
                ) from None
            warnings.warn(
                f"{path} holds {names[:_SHOW] or 'more than tensors'}; reading it with full pickle "
                "(model.trust_checkpoint=true)",
                stacklevel=2,
            )
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as e:  # a truncated zip, a non-torch file, ...: all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        keys = list(obj)[:_SHOW] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not an open_lm checkpoint: expected a dict with 'state_dict' or a state dict; found {keys}"
        )
    non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"{path}: no 'state_dict' key, and these entries are not tensors: {non_tensors[:_SHOW]}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = _strip_prefixes(str(key))
        if name in out:
            raise CheckpointError(f"{path}: two entries map to '{name}' once wrapper prefixes are stripped")
        out[name] = value
    return out


def _torch_reason(e: BaseException) -> str:
    """What torch's weights_only message says failed (the line after "WeightsUnpickler error:")."""
    text = str(e)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (rest if found else text).splitlines() if ln.strip()]
    return lines[0] if lines else repr(e)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _layer_index(key: str) -> int:
    """N for a key under ``layers.N.``, else -1."""
    parts = key.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit() else -1


def _n_layers(keys: list[str]) -> int:
    return 1 + max(map(_layer_index, keys), default=-1)


def _hints(
    expected: list[str], found: list[str], missing: list[str], unexpected: list[str], mismatched: list[str]
) -> list[str]:
    """Likely causes of a mismatch, from the kinds of keys that differ."""
    hints = []
    if any(k.split(".")[0] in ("tok_embeddings", "output") for k in mismatched):
        hints.append(
            "a vocabulary mismatch: model.vocab_size must equal the checkpoint's (its row count); "
            "widen the vocabulary after loading (ablate.model.expand_vocab)"
        )
    n_model, n_ckpt = _n_layers(expected), _n_layers(found)
    if n_model != n_ckpt:
        hints.append(f"the model has {n_model} layers, the checkpoint {n_ckpt}: check n_layers")
    # The other hints look only at layers both have, so extra layers do not suggest other causes.
    n = min(n_model, n_ckpt)
    missing, unexpected = ([k for k in keys if _layer_index(k) < n] for keys in (missing, unexpected))
    if any(k.endswith("norm.bias") for k in missing + unexpected):
        hints.append(
            "norm biases differ: check model_norm (default_layer_norm has a bias, the others do not)"
        )
    if any(".q_norm." in k or ".k_norm." in k for k in missing + unexpected):
        hints.append("q/k norms differ: check qk_norm")
    ffn = ("feed_forward", "_ff_w")
    if any(f in k for k in missing for f in ffn) and any(f in k for k in unexpected for f in ffn):
        hints.append("feed-forward names differ: check ffn_type (swiglu: w12/w3, gelu: _ff_w1/_ff_w2)")
    return hints


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy ``state_dict`` into ``model``; every key and shape must match, or CheckpointError says which.

    Keys of the model's non-persistent buffers (open_lm saves the rotary ``pos_embed.inv_freq``, which
    is derived from the architecture) are accepted when their shape matches and otherwise ignored.
    """
    expected = model.state_dict()
    derived = {n: b for n, b in model.named_buffers() if n not in expected}
    sd: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state_dict.items():
        if key in derived:
            if _shape(value) != _shape(derived[key]):
                mismatched.append(key)
            continue
        sd[key] = value
    expected_all = {**expected, **derived}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched += [k for k in sd if k in expected and _shape(sd[k]) != _shape(expected[k])]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            shown = ", ".join(
                f"{k}: model expects {_shape(expected_all[k])}, checkpoint has {_shape(state_dict[k])}"
                for k in mismatched[:_SHOW]
            )
            parts.append(f"{len(mismatched)} shape mismatch(es): {shown}")
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint: {', '.join(missing[:_SHOW])}")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model: {', '.join(unexpected[:_SHOW])}")
        hints = _hints(list(expected), list(state_dict), missing, unexpected, mismatched)
        raise CheckpointError(
            "checkpoint does not fit the model: "
            + "; ".join(parts)
            + ("; hint: " + "; ".join(hints) if hints else "")
        )
    args = getattr(model, "args", None)
    if getattr(args, "weight_tying", False) and not torch.equal(
        sd["tok_embeddings.weight"], sd["output.weight"]
    ):
        raise CheckpointError(
            "the model ties tok_embeddings and output but the checkpoint's differ: it was trained with "
            "weight_tying=false; set model weight_tying to match"
        )
    model.load_state_dict(sd, strict=True)
