"""Vocabulary layout and sequence layouts (docs/CONTRACTS.md)."""

from __future__ import annotations

import numpy as np
import pytest

from ablate.data.sequence import (
    VocabLayout,
    caption_dropout_mask,
    caption_ids,
    drop_captions,
    extract_image_codes,
    image_positions,
    layout_t2i,
    layout_uncond,
    max_caption_tokens,
    min_seq_len,
    prompt_t2i,
    prompt_uncond,
)
from ablate.errors import ConfigError, DataError

L = VocabLayout(text_vocab_size=100, codebook_size=16)


def test_special_ids_follow_contract_order():
    assert [L.doc, L.doc_end, L.text, L.text_end, L.image, L.image_end, L.pad] == list(range(100, 107))
    assert L.image_offset == 107 and L.size == 123
    assert list(L.special_ids) == ["doc", "doc_end", "text", "text_end", "image", "image_end", "pad"]


def test_paper_vocab_size():
    paper = VocabLayout(50_432, 16_384)
    assert paper.size == 50_432 + 7 + 16_384 == 66_823


def test_classifiers_cover_vocab_exactly_once():
    ids = np.arange(L.size)
    text, special, image = L.is_text(ids), L.is_special(ids), L.is_image(ids)
    assert np.all(text.astype(int) + special.astype(int) + image.astype(int) == 1)
    assert image.sum() == 16 and special.sum() == 7 and text.sum() == 100


def test_dict_round_trip_and_mismatch():
    d = L.to_dict()
    assert VocabLayout.from_dict(d) == L
    d["special_ids"] = {**d["special_ids"], "pad": 999}
    with pytest.raises(DataError, match="special_ids"):
        VocabLayout.from_dict(d)
    with pytest.raises(DataError, match="codebook_size"):
        VocabLayout.from_dict({"text_vocab_size": 3})


def test_t2i_exact_positions():
    seq = layout_t2i([5, 6, 7], [0, 15, 3, 4], L, 16)
    assert seq.dtype == np.int32 and seq.shape == (16,)
    expected = [L.doc, L.text, 5, 6, 7, L.text_end, L.image, 107, 122, 110, 111, L.image_end, L.doc_end]
    assert seq[:13].tolist() == expected
    assert seq[13:].tolist() == [L.pad] * 3


def test_uncond_exact_positions():
    seq = layout_uncond([1, 2], L, 8)
    assert seq.tolist() == [L.doc, L.image, 108, 109, L.image_end, L.doc_end, L.pad, L.pad]


def test_round_trip():
    rng = np.random.default_rng(0)
    cap = rng.integers(0, 100, 9)
    codes = rng.integers(0, 16, 32)
    seq = layout_t2i(cap, codes, L, 64)
    assert np.array_equal(caption_ids(seq, L), cap)
    assert np.array_equal(extract_image_codes(seq, L, n_codes=32), codes)
    assert image_positions(seq, L).tolist() == list(range(13, 45))
    useq = layout_uncond(codes, L, 40)
    assert np.array_equal(extract_image_codes(useq, L), codes)
    assert caption_ids(useq, L).size == 0


def test_caption_truncated_image_kept():
    codes = np.arange(16)
    seq = layout_t2i(np.arange(50), codes, L, 26)  # room for 26 - 16 - 6 = 4 caption tokens
    assert max_caption_tokens(16, 26) == 4
    assert caption_ids(seq, L).tolist() == [0, 1, 2, 3]
    assert np.array_equal(extract_image_codes(seq, L), codes)
    assert seq[-1] == L.doc_end  # exactly full: no pad


def test_too_short_seq_len_raises_config_error():
    with pytest.raises(ConfigError, match="seq_len"):
        layout_t2i([1], np.zeros(16), L, 21)
    with pytest.raises(ConfigError, match="seq_len"):
        layout_uncond(np.zeros(16), L, 19)
    layout_t2i([], np.zeros(16), L, 22)  # empty caption still fits at the minimum
    layout_uncond(np.zeros(16), L, 20)


def test_min_seq_len_and_paper_sequence():
    assert min_seq_len(30, 1024, "t2i") == 1060 <= 1152
    assert min_seq_len(0, 1024, "uncond") == 1028
    assert max_caption_tokens(1024, 1152) == 122
    with pytest.raises(ConfigError, match="task"):
        min_seq_len(1, 1, "video")


def test_out_of_range_ids_rejected():
    with pytest.raises(DataError, match="image codes"):
        layout_uncond([16], L, 8)
    with pytest.raises(DataError, match="caption ids"):
        layout_t2i([100], [0], L, 8)


def test_prompts_match_training_prefix():
    seq = layout_t2i([5, 6], [1, 2, 3], L, 12)
    p = prompt_t2i([5, 6], L, 12, 3)
    assert np.array_equal(seq[: p.size], p) and p[-1] == L.image
    assert np.array_equal(layout_uncond([1], L, 5)[:2], prompt_uncond(L))


def test_extract_errors_and_cut_short_generation():
    seq = layout_t2i([5], [1, 2, 3], L, 12)
    with pytest.raises(DataError, match="expected 4"):
        extract_image_codes(seq, L, n_codes=4)
    with pytest.raises(DataError, match="<image>"):
        extract_image_codes(np.full(5, L.pad), L)
    bad = seq.copy()
    bad[5] = 3  # a text id inside the image span
    with pytest.raises(DataError, match="image-code"):
        extract_image_codes(bad, L)
    # A generation cut before </image>: the span runs to the end.
    gen = np.concatenate([prompt_t2i([5], L, 12, 3), [108, 109]])
    assert extract_image_codes(gen, L).tolist() == [1, 2]


def test_dropping_a_caption_keeps_the_image_and_its_specials_in_order():
    t2i = layout_t2i([5, 6, 7], np.arange(4), L, 16)
    uncond = layout_uncond(np.arange(4), L, 16)
    batch = np.stack([t2i, t2i, uncond])
    out = drop_captions(batch, L, np.array([True, False, True]))
    assert out[0].tolist() == layout_t2i([], np.arange(4), L, 16).tolist()  # the empty-caption sequence
    assert out[1].tolist() == t2i.tolist() and out[2].tolist() == uncond.tolist()
    assert batch[0].tolist() == t2i.tolist()  # the input is not changed
    assert extract_image_codes(out[0], L).tolist() == [0, 1, 2, 3]


def test_the_caption_dropout_mask_depends_on_seed_and_step_only():
    a = caption_dropout_mask(3, 7, 20_000, 0.1)
    assert np.array_equal(a, caption_dropout_mask(3, 7, 20_000, 0.1))
    assert not np.array_equal(a, caption_dropout_mask(3, 8, 20_000, 0.1))
    assert abs(a.mean() - 0.1) < 0.01
    assert not caption_dropout_mask(3, 7, 100, 0.0).any()
