"""Precision and speed settings of the training loop on CPU: bf16 autocast tracks float32, recomputing
activations and torch.compile change nothing but speed, and a run resumes under another precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_loop import LAYOUT, SEQ, dataset, loop_config, model, rows, sink  # noqa: F401  (dataset: a fixture)

from ablate.config.compose import compose_config, to_run_config
from ablate.errors import ConfigError, StopRequested
from ablate.stages.plan import plan_stages
from ablate.train.loop import native_bf16, precision_context, train_loop

# bf16 keeps 8 mantissa bits; over 12 steps of this model the loss stays within this of float32's.
BF16_REL_TOL = 0.03


def losses(out_dir) -> np.ndarray:
    return np.array([r["loss"] for r in rows(out_dir)])


def test_bf16_autocast_trains_and_tracks_float32(dataset, tmp_path):  # noqa: F811
    train_loop(
        model(), dataset, LAYOUT, *loop_config(precision="float32"), tmp_path / "f32", sink(tmp_path / "f32")
    )
    train_loop(
        model(), dataset, LAYOUT, *loop_config(precision="bf16"), tmp_path / "bf16", sink(tmp_path / "bf16")
    )
    f32, bf16 = losses(tmp_path / "f32"), losses(tmp_path / "bf16")
    assert len(f32) == len(bf16) == 12
    assert bf16[-1] < bf16[0] - 0.5  # it learns
    rel = np.abs(bf16 - f32) / f32
    assert rel.max() < BF16_REL_TOL, rel
    assert not np.array_equal(bf16, f32)  # autocast really ran: bf16 matmuls round differently


def test_auto_is_bf16_only_where_bf16_is_native_and_bad_values_are_config_errors():
    cpu = torch.device("cpu")
    caps = torch.cpu.get_capabilities()
    assert native_bf16(torch.device("cuda"))
    assert not native_bf16(cpu, {**caps, "amx_bf16": False, "avx512_bf16": False})  # AVX2 only
    assert not native_bf16(cpu, {**caps, "amx_bf16": False, "avx512_bf16": True})  # slower than float32
    assert native_bf16(cpu, {**caps, "amx_bf16": True, "avx512_bf16": True})
    auto_is_bf16 = isinstance(precision_context("auto", cpu), torch.autocast)
    assert auto_is_bf16 == bool(caps.get("amx_bf16"))  # this machine's CPU
    assert isinstance(precision_context("bf16", cpu), torch.autocast)
    assert not isinstance(precision_context("float32", cpu), torch.autocast)
    with pytest.raises(ConfigError, match="train.precision"):
        precision_context("fp8", cpu)


def test_activation_checkpointing_gives_the_same_losses(dataset, tmp_path):  # noqa: F811
    train_loop(model(), dataset, LAYOUT, *loop_config(), tmp_path / "plain", sink(tmp_path / "plain"))
    m = model()
    train_loop(
        m,
        dataset,
        LAYOUT,
        *loop_config(activation_checkpointing=True),
        tmp_path / "ckpt",
        sink(tmp_path / "ckpt"),
    )
    assert m.activation_checkpointing
    np.testing.assert_allclose(losses(tmp_path / "ckpt"), losses(tmp_path / "plain"), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_gives_the_same_losses(dataset, tmp_path):  # noqa: F811
    cfg = loop_config(total_tokens=SEQ * 8 * 4, checkpoint_every_tokens=0)
    train_loop(model(), dataset, LAYOUT, *cfg, tmp_path / "eager", sink(tmp_path / "eager"))
    compiled = loop_config(total_tokens=SEQ * 8 * 4, checkpoint_every_tokens=0, compile=True)
    train_loop(model(), dataset, LAYOUT, *compiled, tmp_path / "compiled", sink(tmp_path / "compiled"))
    np.testing.assert_allclose(
        losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-4, atol=1e-5
    )


def test_a_run_resumes_under_another_precision(dataset, tmp_path):  # noqa: F811
    calls = {"n": 0}

    def stop_at_6() -> bool:
        calls["n"] += 1
        return calls["n"] == 6

    with pytest.raises(StopRequested):
        train_loop(
            model(),
            dataset,
            LAYOUT,
            *loop_config(precision="float32"),
            tmp_path,
            sink(tmp_path),
            should_stop=stop_at_6,
        )
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    train_loop(model(), dataset, LAYOUT, *loop_config(precision="bf16"), tmp_path, sink(tmp_path))
    logged = rows(tmp_path)
    assert [r["step"] for r in logged] == list(range(1, 13))  # continued, no step twice
    assert logged[-1]["loss"] < logged[0]["loss"] - 0.5


def test_precision_and_speed_settings_are_in_no_stage_key():
    base = {s.name: s.key for s in plan_stages(to_run_config(compose_config([])))}
    other = to_run_config(
        compose_config(["train.precision=bf16", "train.compile=true", "train.activation_checkpointing=true"])
    )
    assert {s.name: s.key for s in plan_stages(other)} == base


def test_sampling_under_bf16_autocast_tracks_float32():
    """evaluate samples under train.precision's autocast (bf16 on CUDA): the KV cache takes bf16, and
    greedy codes (top_k=1) agree with float32's except at near-ties that bf16 rounding flips."""
    from ablate.evaluate.sampling import sample_images

    torch.manual_seed(0)
    m = model().eval()
    prompts = torch.full((6, 3), LAYOUT.image)  # (B, P): <doc> one text token <image>
    prompts[:, 0], prompts[:, 1] = LAYOUT.doc, torch.arange(6) % LAYOUT.text_vocab_size
    n_codes = 8
    codes = {}
    for precision in ("float32", "bf16"):
        with precision_context(precision, torch.device("cpu")):
            codes[precision] = sample_images(m, prompts, LAYOUT, n_codes, top_k=1)
    assert codes["bf16"].shape == (6, n_codes)
    assert int(codes["bf16"].min()) >= 0 and int(codes["bf16"].max()) < LAYOUT.codebook_size
    assert (codes["bf16"] == codes["float32"]).float().mean() >= 0.9
    with precision_context("bf16", torch.device("cpu")):  # seeded sampling stays reproducible under bf16
        a = sample_images(m, prompts, LAYOUT, n_codes, generator=torch.Generator().manual_seed(1))
        b = sample_images(m, prompts, LAYOUT, n_codes, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
