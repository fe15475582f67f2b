"""Text-ability probe (Table 1): held-out text perplexity and greedy completions, on a tiny model."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ablate.config.compose import compose_config, to_run_config
from ablate.data.sequence import NUM_SPECIALS, VocabLayout
from ablate.data.shards import ShardDataset, ShardWriter
from ablate.evaluate.text_ability import (
    TextProbe,
    greedy_completions,
    greedy_ids,
    heldout_perplexity,
    read_completions,
)
from ablate.model.transformer import ModelArgs, Transformer
from ablate.model.vocab import expand_vocab
from ablate.paper import TABLE1_PROMPTS
from ablate.rundir import RunDir
from ablate.schema import OptimConfig, TrainConfig
from ablate.tokenize.text import TextTokenizer, train_bpe
from ablate.train.loop import train_loop

# The probe prompts as the demo scale configures them (evaluate.prompts).
DEMO_PROMPTS = tuple(to_run_config(compose_config([])).evaluate.prompts)

SEQ = 24
CODEBOOK = 16
SENTENCES = [
    "The list data type has some more methods.",
    "Return a new dictionary initialized from an optional positional argument.",
    "Return the number of items in the list.",
    "This module provides functions for working with files and directories.",
    "If the object is not callable, a TypeError is raised.",
    "Return a new list containing all items from the iterable in ascending order.",
    "The dictionary type has some more methods than the list type.",
    "Return True if the object is callable, False otherwise.",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> TextTokenizer:
    return train_bpe(SENTENCES * 3, 300, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def text_vocab(tokenizer) -> int:
    # A few ids beyond the tokenizer, as open_lm pads GPT-NeoX's vocabulary: the model's T > tokenizer size.
    return tokenizer.vocab_size + 3


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, tokenizer, text_vocab) -> ShardDataset:
    """Text-only shards as the pretrain stage writes them: documents packed and cut into rows of SEQ."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch(SENTENCES * 4):
        stream += ids + tokenizer.encode("\n\n")
    n = len(stream) // SEQ
    rows = np.asarray(stream[: n * SEQ], dtype=np.int64).reshape(n, SEQ)
    out = tmp_path_factory.mktemp("heldout")
    with ShardWriter(out, seq_len=SEQ, vocab_size=text_vocab, sequences_per_shard=7) as w:
        w.add_many(rows)
        w.finish({"split": "heldout"})
    return ShardDataset(out)


def make_model(vocab: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs(hidden_dim=32, n_layers=2, n_heads=2, seq_len=SEQ, vocab_size=vocab))


def widened(model: Transformer, text_vocab: int) -> Transformer:
    """A copy widened to the t2i vocabulary whose new output rows are huge (they would win any argmax)."""
    wide = copy.deepcopy(model)
    expand_vocab(wide, text_vocab + NUM_SPECIALS + CODEBOOK, "random", torch.Generator().manual_seed(1))
    with torch.no_grad():
        wide.output.weight[text_vocab:] *= 500.0
    return wide


def test_perplexity_is_exp_of_mean_cross_entropy_by_hand(heldout, text_vocab):
    model = make_model(text_vocab)
    n = 10  # not a multiple of batch_size: the last batch is short and must weigh by its tokens
    ppl = heldout_perplexity(model, heldout, max_sequences=n, batch_size=4)

    batch = torch.from_numpy(heldout.read(np.arange(n)).astype(np.int64))  # (n, SEQ)
    with torch.no_grad():
        logp = torch.log_softmax(model(batch[:, :-1]).double(), dim=-1)  # (n, SEQ-1, T)
    nll = -logp.gather(-1, batch[:, 1:, None]).squeeze(-1)  # (n, SEQ-1)
    assert ppl == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    # Every held-out sequence when max_sequences exceeds the dataset; batch size does not matter.
    assert heldout_perplexity(model, heldout, max_sequences=10_000, batch_size=3) == pytest.approx(
        heldout_perplexity(model, heldout, max_sequences=len(heldout), batch_size=len(heldout)), rel=1e-5
    )


def test_perplexity_ignores_widened_logits_and_restores_mode(heldout, text_vocab):
    model = make_model(text_vocab)
    before = heldout_perplexity(model, heldout, max_sequences=16)
    wide = widened(model, text_vocab)
    wide.train()
    after = heldout_perplexity(wide, heldout, max_sequences=16, text_vocab_size=text_vocab)
    assert after == pytest.approx(before, rel=1e-5)
    assert wide.training  # the previous mode is restored
    # Without the slice the huge new rows would dominate the softmax: the slice is what the test checks.
    batch = torch.from_numpy(heldout.read(np.arange(4)).astype(np.int64))
    with torch.no_grad():
        full = F.cross_entropy(wide(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    assert float(full) > math.log(before) + 10  # e^10 times the perplexity, at least
    # The default text vocabulary is the one the shards record (the pretrain stage writes the model's T).
    assert heldout_perplexity(wide, heldout, max_sequences=16) == pytest.approx(after, rel=1e-6)


def test_greedy_completions_stay_in_text_ids_and_are_deterministic(tokenizer, text_vocab):
    wide = widened(make_model(text_vocab), text_vocab)
    wide.eval()
    prompts = list(DEMO_PROMPTS)
    # Unrestricted, the huge rows win: the first new token would be a special or an image code.
    with torch.no_grad():
        raw = [int(wide(torch.tensor([tokenizer.encode(p)]))[0, -1].argmax()) for p in prompts]
    assert all(r >= text_vocab for r in raw)

    for p in prompts:
        ids = greedy_ids(wide, tokenizer.encode(p), 30, tokenizer.vocab_size)  # 30 + prompt > SEQ: windowed
        assert len(ids) == 30
        assert max(ids) < tokenizer.vocab_size <= text_vocab
    first = greedy_completions(wide, tokenizer, prompts, 12, text_vocab_size=text_vocab)
    second = greedy_completions(wide, tokenizer, prompts, 12, text_vocab_size=text_vocab)
    assert first == second and len(first) == len(prompts)
    assert all(isinstance(c, str) and c for c in first)
    assert not wide.training
    with pytest.raises(ValueError):
        greedy_ids(wide, [], 3, text_vocab)


def test_probe_at_step_zero_writes_one_line(tmp_path, heldout, tokenizer, text_vocab):
    wide = widened(make_model(text_vocab), text_vocab)
    prompts = [*DEMO_PROMPTS[:2], *TABLE1_PROMPTS]
    probe = TextProbe(wide, heldout, tokenizer, prompts, text_vocab, tmp_path, max_new_tokens=5)
    metrics = probe(0, 0)
    assert set(metrics) == {"heldout_text_ppl"} and math.isfinite(metrics["heldout_text_ppl"])
    lines = (tmp_path / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["step"] == 0 and rec["tokens"] == 0
    assert [c["prompt"] for c in rec["completions"]] == prompts
    assert all(isinstance(c["completion"], str) for c in rec["completions"])

    # A resumed run re-evaluates steps after its checkpoint: one line per step survives.
    probe(4, 400)
    probe(8, 800)
    probe(4, 400)
    assert [r["step"] for r in read_completions(tmp_path)] == [0, 4]


def test_training_on_heldout_text_lowers_perplexity(tmp_path, heldout, tokenizer, text_vocab):
    """Through train_loop, as the train stage will wire it: the probe sees learning (so it can see forgetting)."""
    model = make_model(text_vocab, seed=3)
    probe = TextProbe(model, heldout, tokenizer, DEMO_PROMPTS[:1], text_vocab, tmp_path, max_new_tokens=4)
    train = TrainConfig(
        total_tokens=SEQ * 8 * 30,
        batch_tokens=SEQ * 8,
        micro_batch_size=8,
        checkpoint_every_tokens=0,
        seed=0,
        precision="float32",
    )
    optim = OptimConfig(lr=1e-2, warmup_tokens=SEQ * 8 * 2)
    layout = VocabLayout(text_vocab_size=text_vocab, codebook_size=1)  # text only, as the pretrain stage
    log = RunDir(tmp_path).metrics_log()  # the stage's sink, without a tracker
    train_loop(
        model,
        heldout,
        layout,
        train,
        optim,
        tmp_path,
        lambda metrics, step: log.append(step, metrics),
        evaluate=probe,
        eval_every_tokens=SEQ * 8 * 10,
        progress_every_s=60.0,
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ppl = {r["step"]: r["heldout_text_ppl"] for r in rows if "heldout_text_ppl" in r}
    assert sorted(ppl) == [0, 10, 20, 30]
    assert ppl[30] < 0.5 * ppl[0]
    assert [r["step"] for r in read_completions(tmp_path)] == [0, 10, 20, 30]
