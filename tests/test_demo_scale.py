"""The demo's tokenizers keep the paper's balance: images outweigh caption text at least 20:1 (issue 13)."""

from __future__ import annotations

from pathlib import Path

from ablate.config.compose import compose_config, to_run_config
from ablate.config.validate import image_tokens
from ablate.data.synthetic import caption, generate, grammar_words
from ablate.stages.text_tokenizer import pretraining_documents
from ablate.tokenize.text import train_bpe


def test_demo_bpe_keeps_images_20_times_the_caption_tokens(tmp_path: Path) -> None:
    cfg = to_run_config(compose_config([]))
    assert cfg.tokenizer.bpe_caption_words and cfg.data.source == "synthetic"
    # The demo's own BPE, trained as the text_tokenizer stage trains it (a tenth of the corpus: the
    # caption words do not depend on it).
    cfg.pretrain.corpus_max_chars //= 10
    docs = pretraining_documents(cfg.pretrain)
    tok = train_bpe(docs, cfg.tokenizer.text_vocab_size, tmp_path / "tokenizer.json", words=grammar_words())
    _, _, scenes = generate(500, seed=0, split="train")
    lengths = [len(tok.encode(caption(s))) for s in scenes]
    mean = sum(lengths) / len(lengths)
    assert image_tokens(cfg) / mean >= 20
    # and no caption loses its tail to data.caption_tokens
    assert max(lengths) <= cfg.data.caption_tokens
    # The vocabulary sizes the output layer: the caption words fit in it without growing it.
    assert tok.vocab_size <= cfg.tokenizer.text_vocab_size == cfg.model.text_vocab_size
