"""Offline English corpus: Python's own documentation, deterministic, split without overlap."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from ablate.data import corpus
from ablate.data.corpus import corpus_fingerprint, english_documents, split_documents
from ablate.errors import ConfigError


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return english_documents()


def test_non_trivial_english(docs: list[str]) -> None:
    total = sum(map(len, docs))
    assert len(docs) > 200 and total > 500_000
    text = " ".join(docs[:200]).lower()
    assert text.count(" the ") > 1000 and text.count(" is ") > 200
    assert len(set(docs)) == len(docs)  # deduplicated, so splits are disjoint by content


def test_sources_sorted_and_skip_tests() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = corpus._stdlib_sources(root)
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and files == corpus._stdlib_sources(root)
    for bad in ("test/", "tests/", "idlelib/", "site-packages/"):
        assert not any(r.startswith(bad) or f"/{bad}" in r for r in rel), bad
    assert "json/decoder.py" in rel


def test_deterministic_without_cache(docs: list[str]) -> None:
    # Rebuilding a few documents from scratch gives the same text as the cached corpus holds.
    root = Path(sysconfig.get_paths()["stdlib"])
    again = [corpus._module_docstrings(p) for p in corpus._stdlib_sources(root)[:40]]
    assert [d for d in again if d][:5] == [d for d in docs if d in again][:5]
    assert corpus_fingerprint(docs) == corpus_fingerprint(english_documents())


def test_max_chars_truncates(docs: list[str]) -> None:
    cut = english_documents(max_chars=100_000)
    assert sum(map(len, cut)) == 100_000
    assert cut[:-1] == docs[: len(cut) - 1] and docs[len(cut) - 1].startswith(cut[-1])
    with pytest.raises(ConfigError):
        english_documents(max_chars=0)


def test_split_disjoint_and_seeded(docs: list[str]) -> None:
    train, held = split_documents(docs, 0.1, seed=0)
    assert len(train) + len(held) == len(docs) and not set(train) & set(held)
    assert abs(len(held) - round(0.1 * len(docs))) <= 1
    assert split_documents(docs, 0.1, seed=0) == (train, held)
    assert split_documents(docs, 0.1, seed=1)[1] != held
    assert split_documents(docs, 0.0, seed=0) == (docs, [])
    with pytest.raises(ConfigError):
        split_documents(docs, 1.0, seed=0)


def test_fingerprint_counts_boundaries() -> None:
    assert corpus_fingerprint(["ab", "c"]) != corpus_fingerprint(["a", "bc"])
    assert len(corpus_fingerprint([])) == 64


def test_prose_filter_keeps_sentences_and_drops_code_tables_and_grammar() -> None:
    assert corpus.is_prose("Return a new dictionary initialized from an optional positional argument.")
    assert not corpus.is_prose(">>> d = dict(a=1)\n>>> d['a'] is the value one.")  # doctest
    assert not corpus.is_prose("Example:\n    for key in sorted(mapping): print(key, value).")  # code block
    assert not corpus.is_prose("+----------+\n| ID (4 bytes) | size of the header |\n+----------+.")  # table
    assert not corpus.is_prose("subscription ::= primary '[' expression_list ']' with trailing text.")
    assert not corpus.is_prose("Too short.")
    doc = "First we say what it does, in a sentence of words.\n\n    code = 1\n\nThen a second one follows here, too."
    assert corpus.prose_only(doc) == (
        "First we say what it does, in a sentence of words.\n\nThen a second one follows here, too."
    )


def test_prose_corpus_is_about_half_of_the_text_and_all_prose(docs: list[str]) -> None:
    prose = english_documents(prose=True)
    chars, all_chars = sum(map(len, prose)), sum(map(len, docs))
    assert 0.3 * all_chars < chars < 0.8 * all_chars
    paragraphs = [p for d in prose for p in d.split("\n\n")]
    assert all(corpus.is_prose(p) for p in paragraphs)
    assert corpus_fingerprint(prose) == corpus_fingerprint(english_documents(prose=True))
