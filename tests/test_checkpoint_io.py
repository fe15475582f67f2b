"""Loading open_lm checkpoints: formats, wrapper prefixes, strictness, typed errors."""

from __future__ import annotations

import argparse

import pytest
import torch

from ablate.errors import AssetMissingError, CheckpointError
from ablate.model.checkpoint_io import load_into, load_open_lm_state_dict
from ablate.model.transformer import ModelArgs, Transformer


def make(seed: int, **kw) -> Transformer:
    torch.manual_seed(seed)
    base = dict(hidden_dim=32, n_layers=2, n_heads=4, seq_len=16, vocab_size=50)
    return Transformer(ModelArgs(**{**base, **kw})).eval()


def open_lm_style(model: Transformer) -> dict[str, torch.Tensor]:
    """A state dict as open_lm saves it: DDP + torch.compile prefixes, and the rotary inv_freq buffers."""
    sd = {f"module._orig_mod.{k}": v.clone() for k, v in model.state_dict().items()}
    for i in range(model.args.n_layers):
        sd[f"module._orig_mod.layers.{i}.attention.pos_embed.inv_freq"] = torch.rand(model.args.head_dim // 2)
    return sd


def test_epoch_checkpoint_round_trip(tmp_path) -> None:
    src = make(0)
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": open_lm_style(src)}, path)
    sd = load_open_lm_state_dict(path)
    assert "tok_embeddings.weight" in sd and not any(k.startswith(("module.", "_orig_mod.")) for k in sd)
    dst = make(1)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert not torch.equal(src(ids), dst(ids))
        load_into(dst, sd)
        assert torch.equal(src(ids), dst(ids))


def test_bare_state_dict_and_prefix_order(tmp_path) -> None:
    src = make(0)
    path = tmp_path / "bare.pt"
    torch.save({f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}, path)
    sd = load_open_lm_state_dict(path)
    assert set(sd) == set(src.state_dict())


def test_pickled_extras_are_refused_unless_the_checkpoint_is_trusted(tmp_path) -> None:
    path = tmp_path / "epoch_1.pt"
    extras = argparse.Namespace(lr=3e-4)  # not a tensor type: weights_only=True refuses it
    torch.save({"state_dict": make(0).state_dict(), "args": extras}, path)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace.*model\.trust_checkpoint=true"):
        load_open_lm_state_dict(path)
    with pytest.warns(UserWarning, match="full pickle"):
        sd = load_open_lm_state_dict(path, trust=True)
    assert "output.weight" in sd


def test_missing_file_says_how_to_provide_it(tmp_path) -> None:
    with pytest.raises(AssetMissingError, match=r"model\.checkpoint=/path/to/epoch_N\.pt"):
        load_open_lm_state_dict(tmp_path / "epoch_9.pt")


def test_unreadable_file(tmp_path) -> None:
    path = tmp_path / "epoch_1.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_open_lm_state_dict(path)
    torch.save({"epoch": 1, "name": "x"}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_open_lm_state_dict(path)


def test_vocab_mismatch_names_keys_shapes_and_hint() -> None:
    sd = make(0, vocab_size=60).state_dict()
    with pytest.raises(CheckpointError) as e:
        load_into(make(1), sd)
    msg = str(e.value)
    assert "tok_embeddings.weight: model expects (50, 32), checkpoint has (60, 32)" in msg
    assert "output.weight" in msg and "model.vocab_size must equal the checkpoint's" in msg


def test_missing_and_unexpected_keys_are_named() -> None:
    sd = make(0).state_dict()
    del sd["layers.1.feed_forward.w3.weight"]
    sd["layers.2.attention.in_proj.weight"] = torch.zeros(96, 32)
    with pytest.raises(CheckpointError) as e:
        load_into(make(1), sd)
    msg = str(e.value)
    assert "missing from the checkpoint: layers.1.feed_forward.w3.weight" in msg
    assert "not in the model: layers.2.attention.in_proj.weight" in msg
    assert "the model has 2 layers, the checkpoint 3" in msg


def test_ffn_type_mismatch_hint() -> None:
    with pytest.raises(CheckpointError, match="check ffn_type"):
        load_into(make(1, ffn_type="gelu"), make(0).state_dict())


def test_norm_type_mismatch_hint() -> None:
    sd = make(0).state_dict()  # default_layer_norm: has biases
    with pytest.raises(CheckpointError, match="check model_norm"):
        load_into(make(1, model_norm="rms_norm"), sd)


def test_inv_freq_with_wrong_shape_is_reported() -> None:
    sd = make(0).state_dict()
    sd["layers.0.attention.pos_embed.inv_freq"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"pos_embed\.inv_freq: model expects \(4,\)"):
        load_into(make(1), sd)


def test_tied_model_refuses_untied_checkpoint() -> None:
    sd = make(0).state_dict()  # untied: embedding and output differ
    with pytest.raises(CheckpointError, match="weight_tying"):
        load_into(make(1, weight_tying=True), sd)
    tied = make(2, weight_tying=True)
    load_into(make(3, weight_tying=True), tied.state_dict())
