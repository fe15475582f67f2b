"""Incremental decoding with a key/value cache: Transformer(ids, cache=...), sample_images and greedy_ids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ablate.data.sequence import VocabLayout, prompt_t2i, prompt_uncond
from ablate.evaluate.sampling import filter_logits, sample_images
from ablate.evaluate.text_ability import greedy_ids
from ablate.model.transformer import KVCache, ModelArgs, Rotary, Transformer

PES = ("rotary", "head_rotary", "none")
LAYOUT = VocabLayout(text_vocab_size=40, codebook_size=12)
SEQ_LEN = 32
N_CODES = 9
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(pe: str, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    base = dict(hidden_dim=32, n_layers=2, n_heads=4, seq_len=SEQ_LEN, vocab_size=LAYOUT.size)
    return Transformer(ModelArgs(**{**base, "positional_embedding_type": pe, **kw})).eval()


def incremental(model: Transformer, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Logits (B, T, V) of ``ids (B, T)`` run through one cache in chunks of the given sizes."""
    cache = model.new_kv_cache()
    out, pos = [], 0
    for n in chunks:
        out.append(model(ids[:, pos : pos + n], cache=cache))
        pos += n
        assert cache.length == pos
    assert pos == ids.shape[1]
    return torch.cat(out, dim=1)


# --- the model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pe", PES)
@pytest.mark.parametrize(
    "kw", [{}, {"qk_norm": True, "ffn_type": "gelu", "model_norm": "rms_norm", "post_embed_norm": True}]
)
def test_cached_logits_equal_full_forward_at_every_position(pe: str, kw: dict) -> None:
    model = tiny(pe, **kw)
    ids = torch.randint(0, LAYOUT.size, (3, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)  # (B, T, V)
        one_by_one = incremental(model, ids, [1] * SEQ_LEN)  # no prefill at all
        prefill_then_steps = incremental(model, ids, [7] + [1] * (SEQ_LEN - 7))
        mixed = incremental(model, ids, [5, 3, 1, 10, 1, 1, 11])  # multi-token chunks after the prefill
    for got in (one_by_one, prefill_then_steps, mixed):
        assert got.shape == full.shape and got.dtype == torch.float32
        assert torch.allclose(got, full, atol=ATOL, rtol=0), float((got - full).abs().max())


def test_rotary_rotates_new_tokens_at_their_absolute_positions() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 12, 3, 8, generator=gen), torch.randn(2, 12, 3, 8, generator=gen)
    rot = Rotary(8, by_head=False)
    fq, fk = rot(q, k)
    for start in (0, 1, 5, 11):
        sq, sk = rot(q[:, start:], k[:, start:], start)
        assert torch.allclose(sq, fq[:, start:], atol=1e-6) and torch.allclose(sk, fk[:, start:], atol=1e-6)
    # Position 5 rotated as position 0 would be a different vector: the offset is what makes it right.
    assert not torch.allclose(rot(q[:, 5:], k[:, 5:])[0], fq[:, 5:], atol=1e-3)
    by_head = Rotary(8, by_head=True)  # angle = head index: the start does not matter
    assert torch.equal(by_head(q[:, 5:], k[:, 5:], 5)[0], by_head(q, k)[0][:, 5:])


def test_equality_test_catches_a_cache_that_ignores_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotating new tokens as if they were at position 0 breaks rotary's incremental logits, not the others'."""
    ids = torch.randint(0, LAYOUT.size, (2, 12), generator=torch.Generator().manual_seed(2))
    models = {pe: tiny(pe) for pe in PES}
    with torch.no_grad():
        full = {pe: m(ids) for pe, m in models.items()}
        forward = Rotary.forward
        monkeypatch.setattr(Rotary, "forward", lambda self, q, k, start_pos=0: forward(self, q, k))
        for pe, m in models.items():
            got = incremental(m, ids, [4] + [1] * 8)
            assert torch.allclose(got[:, :4], full[pe][:, :4], atol=ATOL, rtol=0)  # the prefill is right
            assert torch.allclose(got, full[pe], atol=ATOL, rtol=0) == (pe != "rotary"), pe


def test_cache_bounds_batch_and_reset() -> None:
    model = tiny("rotary")
    ids = torch.randint(0, LAYOUT.size, (2, 6), generator=torch.Generator().manual_seed(3))
    cache = model.new_kv_cache(6)
    assert isinstance(cache, KVCache) and cache.max_len == 6 and model.new_kv_cache().max_len == SEQ_LEN
    with torch.no_grad():
        model(ids[:, :4], cache=cache)
        with pytest.raises(ValueError, match="full"):
            model(ids[:, :3], cache=cache)
        assert cache.length == 4  # a refused call stores nothing
        with pytest.raises(ValueError, match="batch of 2"):
            model(ids[:1, 4:5], cache=cache)
        cache.reset()
        assert cache.length == 0
        again = incremental(model, ids, [2, 2, 1, 1])
        assert torch.allclose(again, model(ids), atol=ATOL, rtol=0)
        cache.reset()
        model(ids[:1, :3], cache=cache)  # a reset cache takes a new batch size
        assert cache.keys[0].shape == (1, 4, 6, 8)
    with pytest.raises(ValueError):
        KVCache(2, 0)


def test_cache_follows_autocast_dtype() -> None:
    model = tiny("rotary")
    ids = torch.randint(0, LAYOUT.size, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(ids)
        cache = model.new_kv_cache()
        got = torch.cat([model(ids[:, :5], cache=cache), model(ids[:, 5:6], cache=cache)], 1)
    assert cache.keys[0].dtype == torch.bfloat16 and got.dtype == torch.float32
    assert torch.allclose(got, full[:, :6], atol=0.1)  # bf16 rounding; same computation otherwise


def test_no_cache_forward_is_the_training_forward() -> None:
    model = tiny("rotary").train()
    ids = torch.randint(0, LAYOUT.size, (2, 8), generator=torch.Generator().manual_seed(5))
    out = model(ids)
    assert torch.equal(out, model(ids, cache=None))
    out.sum().backward()  # still differentiable; no cache state anywhere on the model
    assert all(p.grad is not None for p in model.parameters())
    assert not any(isinstance(v, KVCache) for v in vars(model).values())


# --- sample_images ---------------------------------------------------------------------------------------


def uncached_reference(model, prompts, n_codes, temperature, top_k, top_p, generator) -> torch.Tensor:
    """sample_images without the cache: re-run the whole prefix for every code."""
    ids = torch.as_tensor(prompts, dtype=torch.long)  # (B, P)
    lo, hi = LAYOUT.image_offset, LAYOUT.size
    codes = []
    with torch.no_grad():
        for _ in range(n_codes):
            logits = model(ids)[:, -1, lo:hi].float()  # (B, K): image codes are the only candidates
            code = torch.multinomial(
                filter_logits(logits, temperature, top_k, top_p).softmax(-1), 1, generator=generator
            )
            codes.append(code[:, 0])
            ids = torch.cat([ids, code + lo], 1)
    return torch.stack(codes, 1)


def t2i_prompts(batch: int, caption_len: int = 5) -> np.ndarray:
    rng = np.random.default_rng(caption_len)
    caps = rng.integers(0, LAYOUT.text_vocab_size, size=(batch, caption_len))
    return np.stack([prompt_t2i(c, LAYOUT, SEQ_LEN, N_CODES) for c in caps])  # (B, P)


@pytest.mark.parametrize("pe", PES)
def test_cached_sampling_gives_the_uncached_codes_for_the_same_seed(pe: str) -> None:
    model = tiny(pe, seed=1)
    prompts = {"t2i": t2i_prompts(16), "uncond": np.stack([prompt_uncond(LAYOUT)] * 16)}
    settings = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.5, 0, 0.9), (1.0, 1, 1.0)]
    for (task, p), (t, k, top_p) in itertools.product(prompts.items(), settings):
        n = SEQ_LEN - p.shape[1]  # fill the context: the cache's last slot is used
        cached = sample_images(model, p, LAYOUT, n, t, k, top_p, torch.Generator().manual_seed(7))
        slow = sample_images(
            model, p, LAYOUT, n, t, k, top_p, torch.Generator().manual_seed(7), use_cache=False
        )
        ref = uncached_reference(model, p, n, t, k, top_p, torch.Generator().manual_seed(7))
        assert torch.equal(cached, ref), (task, t, k, top_p)
        assert torch.equal(slow, ref), (task, t, k, top_p)
        assert int(cached.min()) >= 0 and int(cached.max()) < LAYOUT.codebook_size


def test_cached_sampling_never_emits_non_image_codes_for_a_text_loving_model() -> None:
    model = tiny("rotary", seed=2)
    with torch.no_grad():  # as tests/test_sampling.py: a head whose bias makes text ~e^12 times likelier
        head = nn.Linear(32, LAYOUT.size, bias=True)
        head.weight.copy_(model.output.weight)
        head.bias.zero_()
        head.bias[: LAYOUT.text_vocab_size] = 12.0
        head.bias[LAYOUT.text_vocab_size : LAYOUT.image_offset] = 6.0
    model.output = head
    prompts = t2i_prompts(32)
    with torch.no_grad():
        assert bool(LAYOUT.is_text(model(torch.as_tensor(prompts, dtype=torch.long))[:, -1].argmax(-1)).all())
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for t, k, top_p in [(3.0, 0, 1.0), (1.0, 0, 0.5), (2.0, 4, 0.8), (1.0, 1, 1.0)]:
        codes = sample_images(model, prompts, LAYOUT, N_CODES, t, k, top_p, gen)
        assert int(codes.min()) >= 0 and int(codes.max()) < LAYOUT.codebook_size
        seen.update(codes.flatten().tolist())
    assert seen == set(range(LAYOUT.codebook_size))


class NoCache(nn.Module):
    """A model with no new_kv_cache: sampling and greedy decoding fall back to re-running the prefix."""

    def __init__(self, inner: Transformer) -> None:
        super().__init__()
        self.inner = inner
        self.args = inner.args  # the same window for greedy_ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(ids)


def test_models_without_a_cache_still_sample() -> None:
    model = tiny("rotary", seed=3)
    prompts = t2i_prompts(4)
    a = sample_images(NoCache(model), prompts, LAYOUT, N_CODES, generator=torch.Generator().manual_seed(1))
    b = sample_images(model, prompts, LAYOUT, N_CODES, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# --- greedy_ids ------------------------------------------------------------------------------------------


def greedy_reference(model: Transformer, prompt: list[int], n: int, allowed: int) -> list[int]:
    """greedy_ids as it was before the cache: the last seq_len tokens re-run for every new token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids[-SEQ_LEN:]]))[0, -1, :allowed].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("pe", PES)
def test_cached_greedy_ids_match_full_forward_greedy(pe: str) -> None:
    model = tiny(pe, seed=4)
    rng = np.random.default_rng(0)
    allowed = LAYOUT.text_vocab_size
    # Short prompts that stay inside the window, ones that slide past it, and one longer than it.
    for plen, n in [(1, 10), (5, SEQ_LEN - 5), (5, SEQ_LEN + 8), (SEQ_LEN - 1, 6), (SEQ_LEN + 4, 5), (3, 0)]:
        prompt = rng.integers(0, allowed, plen).tolist()
        want = greedy_reference(model, prompt, n, allowed)
        assert greedy_ids(model, prompt, n, allowed) == want, (plen, n)
        assert greedy_ids(model, prompt, n, allowed, use_cache=False) == want, (plen, n)
        assert greedy_ids(NoCache(model), prompt, n, allowed) == want, (plen, n)
