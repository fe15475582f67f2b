"""Constrained image sampling and logit filtering (ablate.evaluate.sampling)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ablate.data.sequence import VocabLayout, prompt_t2i, prompt_uncond
from ablate.errors import ConfigError, DataError
from ablate.evaluate import filter_logits, sample_from_prompts, sample_images
from ablate.model.transformer import ModelArgs, Transformer

LAYOUT = VocabLayout(text_vocab_size=40, codebook_size=12)
N_CODES = 9
SEQ_LEN = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _text_loving_model(seed: int = 0) -> Transformer:
    """Tiny random Transformer (dim 32, 2 layers) whose output bias makes text ids ~e^12 times likelier."""
    torch.manual_seed(seed)
    model = Transformer(
        ModelArgs(hidden_dim=32, n_layers=2, n_heads=2, seq_len=SEQ_LEN, vocab_size=LAYOUT.size)
    )
    # The model's own head has no bias; swap in one that has, keeping the trained-like weights.
    head = nn.Linear(32, LAYOUT.size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.output.weight)
        head.bias.zero_()
        head.bias[: LAYOUT.text_vocab_size] = 12.0
        head.bias[LAYOUT.text_vocab_size : LAYOUT.image_offset] = 6.0  # specials next likeliest
    model.output = head
    return model


def _t2i_prompts(batch: int, caption_len: int = 5) -> np.ndarray:
    rng = np.random.default_rng(caption_len)
    caps = rng.integers(0, LAYOUT.text_vocab_size, size=(batch, caption_len))
    return np.stack([prompt_t2i(c, LAYOUT, SEQ_LEN, N_CODES) for c in caps])  # (B, P)


def test_model_prefers_text_so_masking_is_what_is_tested():
    model = _text_loving_model()
    with torch.no_grad():
        logits = model(torch.as_tensor(_t2i_prompts(16), dtype=torch.long))[:, -1]  # (B, V)
    probs = logits.softmax(-1)
    assert bool(LAYOUT.is_text(logits.argmax(-1)).all())
    assert float(probs[:, LAYOUT.image_offset :].sum(-1).max()) < 1e-3


def test_never_emits_non_image_codes_at_image_positions():
    model = _text_loving_model()
    prompts = {"t2i": _t2i_prompts(48), "uncond": np.stack([prompt_uncond(LAYOUT)] * 48)}
    settings = [(0.3, 0, 1.0), (1.0, 0, 1.0), (3.0, 0, 1.0), (1.0, 1, 1.0), (2.0, 5, 1.0)]
    settings += [(1.0, 100, 1.0), (1.0, 0, 0.5), (5.0, 0, 0.95), (2.0, 4, 0.8)]
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for (task, p), (t, k, top_p) in itertools.product(prompts.items(), settings):
        codes = sample_images(model, p, LAYOUT, N_CODES, temperature=t, top_k=k, top_p=top_p, generator=gen)
        assert codes.shape == (48, N_CODES) and codes.dtype == torch.long, (task, t, k, top_p)
        assert int(codes.min()) >= 0 and int(codes.max()) < LAYOUT.codebook_size, (task, t, k, top_p)
        seen.update(codes.flatten().tolist())
    # Flat settings reach the whole codebook: the mask removes text, not image codes.
    assert seen == set(range(LAYOUT.codebook_size))


def test_top_k_one_is_greedy_over_image_codes():
    model = _text_loving_model()
    prompts = _t2i_prompts(4)
    codes = sample_images(model, prompts, LAYOUT, 3, top_k=1, generator=torch.Generator().manual_seed(1))
    ids = torch.as_tensor(prompts, dtype=torch.long)
    with torch.no_grad():
        for i in range(3):
            nxt = model(ids)[:, -1, LAYOUT.image_offset :].argmax(-1)  # (B,) greedy image code
            assert torch.equal(codes[:, i], nxt)
            ids = torch.cat([ids, (nxt + LAYOUT.image_offset)[:, None]], 1)


def test_same_seed_same_samples_and_mode_restored():
    model = _text_loving_model()
    model.train()
    prompts = _t2i_prompts(8)

    def run(seed: int) -> torch.Tensor:
        return sample_images(
            model, prompts, LAYOUT, N_CODES, 1.5, 0, 0.9, torch.Generator().manual_seed(seed)
        )

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert model.training  # sample_images switches to eval and back


def test_sample_from_prompts_groups_lengths_and_keeps_order():
    model = _text_loving_model()
    rng = np.random.default_rng(0)
    caps = [rng.integers(0, LAYOUT.text_vocab_size, size=n) for n in (3, 6, 3, 1, 6)]
    prompts = [prompt_t2i(c, LAYOUT, SEQ_LEN, N_CODES) for c in caps] + [prompt_uncond(LAYOUT)]
    codes = sample_from_prompts(model, prompts, LAYOUT, N_CODES, batch_size=1, top_k=1)
    assert codes.shape == (len(prompts), N_CODES)
    for i, p in enumerate(prompts):  # greedy, so each row equals sampling that prompt alone
        assert torch.equal(codes[i], sample_images(model, p[None], LAYOUT, N_CODES, top_k=1)[0])
    x, y = (
        sample_from_prompts(
            model, prompts, LAYOUT, N_CODES, batch_size=2, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    )
    assert torch.equal(x, y)


def test_bad_prompts_and_lengths_are_reported():
    model = _text_loving_model()
    prompts = _t2i_prompts(2)
    with pytest.raises(DataError, match="<image>"):
        sample_images(model, prompts[:, :-1], LAYOUT, N_CODES)
    with pytest.raises(ConfigError, match="seq_len"):
        sample_images(model, prompts, LAYOUT, SEQ_LEN)
    with pytest.raises(ConfigError, match="temperature"):
        sample_images(model, prompts, LAYOUT, N_CODES, temperature=0.0)
    small = VocabLayout(LAYOUT.text_vocab_size, LAYOUT.codebook_size + 5)
    with pytest.raises(DataError, match="smaller than the layout"):
        sample_images(model, np.stack([prompt_uncond(small)] * 2), small, 2)


# --- filter_logits -----------------------------------------------------------------------------------


def test_temperature_scales_and_is_pure():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    assert torch.allclose(filter_logits(logits, 2.0), logits / 2)
    assert torch.equal(filter_logits(logits), logits)
    filter_logits(logits, 0.5, 3, 0.5)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_top_k_keeps_exactly_k(k: int):
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(k))
    logits[0] = 1.0  # all tied: a threshold at the k-th value would keep all 10
    logits[1, :4] = 3.0  # ties straddling the cut
    out = filter_logits(logits, 1.0, k)
    assert (torch.isfinite(out).sum(-1) == k).all()
    keep = torch.isfinite(out)
    for row in range(6):  # kept logits are unchanged and none is below a dropped one
        assert torch.equal(out[row][keep[row]], logits[row][keep[row]])
        if k < 10:
            assert logits[row][keep[row]].min() >= logits[row][~keep[row]].max()
    assert torch.equal(filter_logits(logits, 1.0, 10), logits)  # k >= V is a no-op
    assert torch.equal(filter_logits(logits, 1.0, 50), logits)


def test_top_p_worked_example():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15]])
    logits = probs.log()

    def kept(p: float) -> list[int]:
        return torch.isfinite(filter_logits(logits, 1.0, 0, p))[0].nonzero().flatten().tolist()

    assert kept(0.45) == [1]  # 0.5 alone reaches 0.45
    assert kept(0.65) == [1, 3]  # 0.5 + 0.2
    assert kept(0.75) == [1, 3, 4]  # 0.5 + 0.2 = 0.7 falls short; + 0.15 reaches it
    assert kept(0.99) == [0, 1, 2, 3, 4]
    assert kept(1.0) == [0, 1, 2, 3, 4]


def test_top_p_keeps_smallest_set_reaching_p():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 30, generator=gen) * 2
    for p in (0.1, 0.5, 0.9, 0.97):
        out = filter_logits(logits, 1.0, 0, p)
        probs = logits.double().softmax(-1)
        for row in range(logits.shape[0]):
            keep = torch.isfinite(out[row])
            m = int(keep.sum())
            order = probs[row].argsort(descending=True)
            assert set(order[:m].tolist()) == set(keep.nonzero().flatten().tolist())  # most probable first
            assert float(probs[row, order[:m]].sum()) >= p  # reaches p ...
            assert float(probs[row, order[: m - 1]].sum()) < p  # ... and one fewer would not


def test_top_p_applies_after_masking_and_top_k():
    logits = torch.tensor([[10.0, 0.0, 0.1, 0.2, float("-inf")]])
    masked = logits.clone()
    masked[:, 0] = float("-inf")  # as sample_images masks non-image ids: renormalise over the rest
    out = filter_logits(masked, 1.0, 2, 0.9)
    assert torch.isfinite(out).sum() == 2 and torch.isinf(out[0, [0, 1, 4]]).all()


def test_filter_arguments_are_validated():
    logits = torch.randn(2, 5)
    for kwargs, key in [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ]:
        with pytest.raises(ConfigError, match=key):
            filter_logits(logits, **kwargs)
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        filter_logits(torch.randn(5))


class _CaptionAware(nn.Module):
    """Logits (B, T, V) that depend only on whether a row's context holds a caption (any text id): code 0
    narrowly wins with one, code 1 is nowhere without; records every context it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the sampler a device
        self.seen: list[torch.Tensor] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.append(ids.clone())
        lo = LAYOUT.image_offset
        cond, uncond = torch.full((LAYOUT.size,), -5.0), torch.full((LAYOUT.size,), -5.0)
        cond[lo], cond[lo + 1] = 2.5, 2.4
        uncond[lo], uncond[lo + 1] = 2.0, 0.0
        has_caption = LAYOUT.is_text(ids).any(dim=1)  # (B,)
        rows = torch.where(has_caption[:, None], cond, uncond)  # (B, V)
        return rows[:, None, :].expand(ids.shape[0], ids.shape[1], -1)


def test_guidance_moves_towards_what_the_caption_adds_over_the_empty_caption():
    """uncond + s * (cond - uncond): code 0 wins unguided (2.5 vs 2.4); at s = 3 code 1 does (7.2 vs 3.5)."""
    prompts = _t2i_prompts(4)
    model = _CaptionAware()
    plain = sample_images(model, prompts, LAYOUT, 3, top_k=1)
    assert plain.tolist() == [[0, 0, 0]] * 4
    model.seen.clear()
    guided = sample_images(model, prompts, LAYOUT, 3, top_k=1, guidance_scale=3.0)
    assert guided.tolist() == [[1, 1, 1]] * 4
    # The second stream is the empty caption <doc> <text> </text> <image>, followed by the same codes.
    empty = [LAYOUT.doc, LAYOUT.text, LAYOUT.text_end, LAYOUT.image]
    nulls = [ids for ids in model.seen if not bool(LAYOUT.is_text(ids).any())]
    assert nulls and nulls[-1][0].tolist() == empty + [LAYOUT.image_offset + 1] * 2


def test_guided_sampling_is_the_same_with_and_without_the_kv_cache():
    model = _text_loving_model(3)
    prompts = _t2i_prompts(3)
    a = sample_images(
        model, prompts, LAYOUT, N_CODES, generator=torch.Generator().manual_seed(5), guidance_scale=2.0
    )
    b = sample_images(
        model,
        prompts,
        LAYOUT,
        N_CODES,
        generator=torch.Generator().manual_seed(5),
        guidance_scale=2.0,
        use_cache=False,
    )
    unguided = sample_images(model, prompts, LAYOUT, N_CODES, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, unguided)


@pytest.mark.parametrize("scale", [0.5, 0, -1, True])
def test_a_guidance_scale_below_one_is_refused(scale):
    with pytest.raises(ConfigError, match="guidance_scale"):
        sample_images(_CaptionAware(), _t2i_prompts(1), LAYOUT, 2, guidance_scale=scale)
