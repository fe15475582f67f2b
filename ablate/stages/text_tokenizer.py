"""`text_tokenizer`: the pretraining corpus (offline English text, split into train and held-out) and the
text tokenizer (BPE trained on it, or a given tokenizer.json), so captions and the LM share one vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

from ablate.atomic import atomic_write_json, atomic_write_text
from ablate.data.corpus import corpus_fingerprint, english_documents, split_documents
from ablate.data.stories import stories
from ablate.data.synthetic import grammar_words
from ablate.schema import PretrainConfig, RunConfig
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.stage import Stage
from ablate.tokenize.text import TextTokenizer, train_bpe


def pretraining_documents(p: PretrainConfig) -> list[str]:
    """The documents of the configured pretraining corpus (pretrain.corpus), in a fixed order."""
    if p.corpus == "stories":
        return stories(p.corpus_max_chars)
    return english_documents(max_chars=p.corpus_max_chars, prose=p.corpus_prose_only)


def run(ctx: StageContext) -> None:
    t, p = ctx.cfg.tokenizer, ctx.cfg.pretrain
    docs = pretraining_documents(p)
    train_docs, heldout_docs = split_documents(docs, p.heldout_fraction, seed=0)
    atomic_write_text(ctx.out_dir / "corpus_train.json", json.dumps(train_docs))
    atomic_write_text(ctx.out_dir / "corpus_heldout.json", json.dumps(heldout_docs))
    ctx.log(
        f"corpus: {len(train_docs)} train / {len(heldout_docs)} held-out documents, "
        f"{sum(map(len, docs)):,} characters"
    )
    refs = {}
    if t.text == "path" and t.text_path:  # validation requires text_path for text=path
        tok = TextTokenizer.from_file(t.text_path)
        refs["text_path"] = str(Path(t.text_path).resolve())
    else:
        words = grammar_words() if _caption_words(ctx.cfg) else ()
        tok = train_bpe(train_docs, t.text_vocab_size, ctx.out_dir / "tokenizer.json", words=words)
    atomic_write_json(ctx.out_dir / "refs.json", refs)
    atomic_write_json(
        ctx.out_dir / "summary.json",
        {
            "corpus_fingerprint": corpus_fingerprint(docs),
            "text_fingerprint": tok.fingerprint,
            "vocab_size": tok.vocab_size,
            "corpus_chars": sum(map(len, docs)),
        },
    )
    ctx.log_metrics({"text_vocab": float(tok.vocab_size), "corpus_chars": float(sum(map(len, docs)))}, 0)
    ctx.log(f"text tokenizer: {tok.vocab_size} tokens")


def _caption_words(cfg: RunConfig) -> bool:
    """Whether the BPE also learns the synthetic caption grammar's words (tokenizer.bpe_caption_words)."""
    return cfg.tokenizer.bpe_caption_words and cfg.data.source == "synthetic"


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the tokenizer's settings and the corpus it is trained on."""
    t, p = cfg.tokenizer, cfg.pretrain
    return {
        "text": t.text,
        "text_path": t.text_path,
        "text_vocab_size": t.text_vocab_size,
        "caption_words": _caption_words(cfg),
        "corpus": p.corpus,
        "corpus_max_chars": p.corpus_max_chars,
        "corpus_prose_only": p.corpus_prose_only if p.corpus == "docs" else None,
        "heldout_fraction": p.heldout_fraction,
    }


STAGE = Stage(names.TEXT_TOKENIZER, version=3, config=config, run=run, params=("tokenizer", "pretrain"))
