"""The demo's "pretrained" LM learns to write its corpus: a CPU run of the real pretraining path (issue 13).

The demo's own settings (scale=demo: the story corpus, its BPE, the tiny model, pretrain's 500K tokens,
LR and batch; ~45 s on one core). Shorter runs are not yet fluent enough to test: at 200K tokens the
opening prompt was continued with " time, there was a curious boy named Finn."
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ablate.config.compose import compose_arm
from ablate.data.corpus import split_documents
from ablate.data.sequence import VocabLayout
from ablate.data.shards import ShardDataset, ShardWriter
from ablate.data.synthetic import grammar_words
from ablate.evaluate.text_ability import greedy_completions, heldout_perplexity
from ablate.model.transformer import Transformer
from ablate.stages.common import loop_config, model_args
from ablate.stages.pretrain import pack_documents
from ablate.stages.text_tokenizer import pretraining_documents
from ablate.tokenize.text import train_bpe
from ablate.tracking import NullTracker
from ablate.train.loop import train_loop

pytestmark = pytest.mark.slow


def test_demo_lm_completes_prompts_in_the_corpus_register(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _, cfg = compose_arm([])
    assert cfg.pretrain.corpus == "stories"
    docs = pretraining_documents(cfg.pretrain)
    train_docs, heldout_docs = split_documents(docs, cfg.pretrain.heldout_fraction, seed=0)
    vocab = cfg.model.text_vocab_size
    tok = train_bpe(train_docs, cfg.tokenizer.text_vocab_size, tmp_path / "tok.json", words=grammar_words())
    for split, split_docs in (("train", train_docs), ("heldout", heldout_docs)):
        with ShardWriter(tmp_path / split, seq_len=cfg.data.seq_len, vocab_size=vocab) as w:
            w.add_many(pack_documents(split_docs, tok, cfg.data.seq_len))
            w.finish({"split": split})
    torch.manual_seed(cfg.pretrain.seed)
    model = Transformer(model_args(cfg, vocab))
    heldout = ShardDataset(tmp_path / "heldout")
    before = heldout_perplexity(model, heldout)
    p = cfg.pretrain
    loop = loop_config(
        cfg,
        total_tokens=p.total_tokens,
        batch_tokens=p.batch_tokens,
        lr=p.lr,
        warmup_tokens=p.warmup_tokens,
        seed=0,
    )
    train_loop(
        model, ShardDataset(tmp_path / "train"), VocabLayout(vocab, 1), loop, tmp_path / "run", NullTracker()
    )
    after = heldout_perplexity(model, heldout)
    assert before > 500 and after < 10, (before, after)

    corpus_words = set(re.findall(r"[A-Za-z]+", " ".join(docs)))
    prompts = list(cfg.evaluate.prompts)
    completions = greedy_completions(model, tok, prompts, 16, text_vocab_size=vocab)
    for completion in completions:
        words = re.findall(r"[A-Za-z]+", completion)
        assert len(words) >= 8 and set(words) <= corpus_words, (completions, after)
    # The opening prompt goes on as the stories' first sentence does: "<trait> <kind> named <Name>."
    first = completions[prompts.index("Once upon a time, there was a")]
    assert re.match(r" [a-z]+ [a-z]+ named [A-Z][a-z]+\.", first), first
