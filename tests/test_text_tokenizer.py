"""Byte-level BPE: deterministic training, exact round trip, loading any tokenizer.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablate.errors import AssetMissingError, ConfigError, DataError
from ablate.tokenize.text import TextTokenizer, train_bpe

TEXTS = [
    "Return the number of items in a container. The argument may be a sequence or a collection.",
    "If the object is a class, return its name; otherwise raise a TypeError.",
    "a small red circle above a large blue square",
] * 50


def test_train_is_deterministic(tmp_path: Path) -> None:
    a = train_bpe(TEXTS, 300, tmp_path / "a" / "tokenizer.json")
    b = train_bpe(TEXTS, 300, tmp_path / "b" / "tokenizer.json")
    assert a.fingerprint == b.fingerprint
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    assert a.encode(TEXTS[0]) == b.encode(TEXTS[0])
    assert 256 < a.vocab_size <= 300


@pytest.mark.parametrize(
    "text",
    ["a small red circle above a large blue square", "  leading spaces\n\ttabs", "ünïcødé — ✓ 日本", ""],
)
def test_round_trip(tmp_path: Path, text: str) -> None:
    tok = train_bpe(TEXTS, 300, tmp_path / "tokenizer.json")
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_merges_shorten_frequent_text(tmp_path: Path) -> None:
    tok = train_bpe(TEXTS, 400, tmp_path / "tokenizer.json")
    assert len(tok.encode(TEXTS[2])) < len(TEXTS[2].encode()) / 2
    assert tok.encode_batch(TEXTS[:2]) == [tok.encode(t) for t in TEXTS[:2]]


def test_from_file_reloads_identically(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok = train_bpe(TEXTS, 300, path)
    again = TextTokenizer.from_file(path)
    assert again.fingerprint == tok.fingerprint and again.vocab_size == tok.vocab_size
    assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    tok.save(tmp_path / "copy" / "tokenizer.json")
    assert TextTokenizer.from_file(tmp_path / "copy" / "tokenizer.json").encode(TEXTS[1]) == tok.encode(
        TEXTS[1]
    )


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    missing = tmp_path / "neox" / "tokenizer.json"
    with pytest.raises(AssetMissingError) as err:
        TextTokenizer.from_file(missing)
    assert str(missing) in str(err.value) and "tokenizer.text_path" in str(err.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError):
        TextTokenizer.from_file(bad)
    with pytest.raises(ConfigError):
        train_bpe(TEXTS, 100, tmp_path / "small.json")


def test_caption_words_become_single_tokens(tmp_path: Path) -> None:
    from ablate.data.synthetic import caption, generate, grammar_words

    words = grammar_words()
    # 256 byte tokens + room for the words' merges (about 6 per word)
    plain = train_bpe(TEXTS, 480, tmp_path / "plain.json")
    tok = train_bpe(TEXTS, 480, tmp_path / "words.json", words=words)
    # Each word mid-sentence (after a space) is one token, and decodes back to itself.
    for w in words:
        ids = tok.encode(" " + w)
        assert len(ids) == 1 and tok.decode(ids) == " " + w, w
    # So a caption is as many tokens as words, which the corpus alone does not give ("magenta" is rare).
    _, _, scenes = generate(50, seed=0, split="train")
    for s in scenes:
        text = caption(s)
        assert len(tok.encode(text)) == len(text.split())
        assert tok.decode(tok.encode(text)) == text
        # With data.caption_leading_space every word, the first included, is the mid-sentence token.
        spaced = tok.encode_caption(text, leading_space=True)
        assert spaced == [tok.encode(" " + w)[0] for w in text.split()]
        assert spaced[1:] == tok.encode_caption(text)[1:] and spaced[0] != tok.encode_caption(text)[0]
    assert sum(len(plain.encode(caption(s))) for s in scenes) > sum(len(caption(s).split()) for s in scenes)


def test_grammar_words_cover_every_caption() -> None:
    from ablate.data.synthetic import caption, generate, grammar_words

    words = set(grammar_words())
    for split in ("train", "val", "heldout"):
        _, _, scenes = generate(200, seed=1, split=split)
        assert {w for s in scenes for w in caption(s).split()} <= words
