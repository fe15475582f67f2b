"""Text tokenizer: a byte-level BPE trained with HF `tokenizers`, or any `tokenizer.json` (e.g. GPT-NeoX's)."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ablate.atomic import atomic_path
from ablate.errors import AssetMissingError, ConfigError, DataError


class TextTokenizer:
    """A loaded tokenizer.json: encode/decode without special tokens, plus a content fingerprint."""

    def __init__(self, tokenizer: Tokenizer, fingerprint: str, path: Path | None = None) -> None:
        self._tok = tokenizer
        self.fingerprint = fingerprint
        self.path = path

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        """Load a tokenizer.json; AssetMissingError naming the path if it is not there."""
        p = Path(path)
        if not p.is_file():
            raise AssetMissingError(
                f"text tokenizer file not found: {p}. Give a tokenizer.json (e.g. GPT-NeoX's, from its "
                "model repository) with tokenizer.text=path tokenizer.text_path=/path/to/tokenizer.json, "
                "or use tokenizer.text=bpe to train one on the pretraining corpus."
            )
        raw = p.read_bytes()
        try:
            tok = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # the Rust side raises plain Exception on malformed JSON
            raise DataError(f"{p} is not a valid tokenizer.json: {e}") from e
        return cls(tok, hashlib.sha256(raw).hexdigest(), p)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of a text, without any special tokens the tokenizer's post-processor would add."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_caption(self, caption: str, leading_space: bool = False) -> list[int]:
        """Ids of a caption, after a space if `leading_space` (data.caption_leading_space)."""
        return self.encode(" " + caption.lstrip() if leading_space else caption)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode over many texts (parallel in the Rust library)."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids; the inverse of encode for byte-level BPE."""
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer.json (atomically)."""
        with atomic_path(path) as tmp:
            self._tok.save(str(tmp))


# How often each of train_bpe's `words` is counted: above any pair count of a few-MB corpus, so every
# merge that builds one of them ranks among the first and the words fit any vocabulary that holds them.
WORD_COUNT = 200_000


def train_bpe(
    texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike[str], words: Iterable[str] = ()
) -> TextTokenizer:
    """Train a byte-level BPE (GPT-2/NeoX style, no special tokens), write it to out_path and load it back.

    `words` become single tokens, each with its leading space (" red"), as they would be in the middle of
    a sentence: the trainer counts each WORD_COUNT times besides the corpus. The demo passes its caption
    grammar's words, which a tokenizer trained on web text (GPT-NeoX's) holds whole but a small BPE trained
    on Python's documentation splits.

    Deterministic for the same texts and words in the same order. Special tokens are not part of this
    vocabulary: the sequence builder appends them after the text ids (docs/CONTRACTS.md).
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet):
        raise ConfigError("tokenizer.text_vocab_size", vocab_size, f">= {len(alphabet)} (the byte alphabet)")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False as in GPT-2/GPT-NeoX, so a demo tokenizer behaves like the paper's.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=alphabet,
        special_tokens=[],
        show_progress=False,
    )
    extra = [" " + w for w in words]
    # Repeated as one string per word: the trainer's word counts, not the length of the text, decide.
    counted = ("".join([w] * WORD_COUNT) for w in extra)  # " red red red ..."
    tok.train_from_iterator(itertools.chain(texts, counted), trainer=trainer)
    out = Path(out_path)
    # Atomic, so a crash never leaves a truncated tokenizer.json behind.
    with atomic_path(out) as tmp:
        tok.save(str(tmp), pretty=True)
    return TextTokenizer.from_file(out)
