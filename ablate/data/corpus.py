"""Real human-written English that exists offline wherever Python runs: its own documentation.

Two sources, both shipped with CPython: the reference-manual topics in `pydoc_data.topics` and the
docstrings of the standard library's Python sources, read with `ast` (never imported, so nothing runs).
The text depends on the Python version; `corpus_fingerprint` identifies exactly what was used.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sysconfig
from pathlib import Path

import numpy as np

from ablate.errors import ConfigError, DataError

# Test suites are mostly code and fixtures, idlelib is an application, installed packages are not stdlib.
_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__"}
)


def _pydoc_topics() -> list[str]:
    """The language reference topics shipped for pydoc's help()."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions split pydoc_data into another package
        raise DataError("pydoc_data.topics is missing from this Python installation") from e
    return [topics[k].strip() for k in sorted(topics)]


def _module_docstrings(path: Path) -> str:
    """Module, class and function docstrings of one source file, in source order, blank-line separated."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""  # a few stdlib files are fixtures in other syntaxes or encodings
    parts: list[str] = []

    def visit(node: ast.AST) -> None:
        # Depth-first over child nodes keeps a class's method docstrings right after the class's own.
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                parts.append(doc.strip())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return "\n\n".join(parts)


def _stdlib_sources(root: Path) -> list[Path]:
    """Python sources under the stdlib directory, in sorted (deterministic) order."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("test_"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=1)
def _all_documents() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = _pydoc_topics() + [_module_docstrings(p) for p in _stdlib_sources(root)]
    seen: set[str] = set()
    out = []
    for d in docs:
        # Duplicates (re-exported or copied modules) would leak across a train/heldout split.
        if d and d not in seen:
            seen.add(d)
            out.append(d)
    return tuple(out)


# A prose paragraph is at least this many words, this share of it letters and spaces.
_PROSE_MIN_WORDS = 6
_PROSE_MIN_LETTERS = 0.9


def is_prose(paragraph: str) -> bool:
    """Whether a paragraph reads as English sentences: no code, table, grammar rule or doctest line."""
    text = paragraph.strip()
    if len(text.split()) < _PROSE_MIN_WORDS or text[-1] not in ".:":
        return False
    # Indented lines are code blocks, literal tables or continued grammar rules in these docs.
    if any(line.startswith((" ", "\t", ">>>", "...")) for line in text.splitlines()):
        return False
    return sum(c.isalpha() or c == " " for c in text) / len(text) >= _PROSE_MIN_LETTERS


def prose_only(document: str) -> str:
    """The document's prose paragraphs (is_prose), blank-line separated, in order."""
    paragraphs = (p.strip() for p in re.split(r"\n[ \t]*\n", document))
    return "\n\n".join(p for p in paragraphs if p and is_prose(p))


def english_documents(max_chars: int | None = None, prose: bool = False) -> list[str]:
    """The corpus as documents, in a fixed order; truncated to at most max_chars characters in total.

    `prose`: keep only each document's prose paragraphs (about half of the text), which a small model
    learns to continue in far fewer tokens than the code, tables and grammar rules around them.
    """
    if max_chars is not None and max_chars <= 0:
        raise ConfigError("pretrain.corpus_max_chars", max_chars, "a positive integer or null")
    docs = list(_all_documents())
    if prose:
        docs = [d for d in map(prose_only, docs) if d]
    if not docs:
        raise DataError(f"no documentation text found under {sysconfig.get_paths()['stdlib']}")
    if max_chars is None:
        return docs
    out, total = [], 0
    for d in docs:
        if total + len(d) > max_chars:
            if max_chars - total > 0:
                out.append(d[: max_chars - total])
            break
        out.append(d)
        total += len(d)
    return out


def split_documents(docs: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, heldout) by a seeded random choice of whole documents; each keeps the input order."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ConfigError("pretrain.heldout_fraction", heldout_fraction, "a number in [0, 1)")
    n_held = round(heldout_fraction * len(docs))
    if heldout_fraction > 0 and len(docs) > 1:
        n_held = min(max(n_held, 1), len(docs) - 1)
    held = set(np.random.default_rng(seed).permutation(len(docs))[:n_held].tolist())
    train = [d for i, d in enumerate(docs) if i not in held]
    heldout = [d for i, d in enumerate(docs) if i in held]
    return train, heldout


def corpus_fingerprint(docs: list[str]) -> str:
    """sha256 over the documents, length-prefixed so document boundaries count."""
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()
