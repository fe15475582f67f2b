"""Contrastive alignment (paper Sec. 3.2): loss, bag of words, nearest tokens, training, and the stage."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.align import (
    INIT_LOG_TEMP,
    MAX_LOG_TEMP,
    bag_of_words,
    clip_loss,
    nearest_text_tokens,
    train_alignment,
)
from ablate.data.sequence import VocabLayout, layout_t2i
from ablate.data.shards import ShardWriter
from ablate.schema import AlignConfig, RunConfig
from ablate.stages import align as align_stage
from ablate.stages.context import StageContext
from ablate.tokenize.text import train_bpe
from ablate.tracking import NullTracker
from ablate.train.checkpoint import save_checkpoint

# --- clip_loss ---------------------------------------------------------------------------------------------


def test_clip_loss_matches_hand_computation_on_2x2() -> None:
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalises to e1, e2
    txt = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # normalises to e1, (e1 + e2)/sqrt(2)
    loss, logits = clip_loss(img, txt, torch.tensor(0.0))  # scale exp(0) = 1
    c = 1 / math.sqrt(2)
    assert torch.allclose(logits, torch.tensor([[1.0, c], [0.0, c]]))
    # Rows (image -> caption), target = diagonal.
    row0 = -math.log(math.e / (math.e + math.exp(c)))
    row1 = -math.log(math.exp(c) / (1 + math.exp(c)))
    # Columns (caption -> image).
    col0 = -math.log(math.e / (math.e + 1))
    col1 = math.log(2)  # both images equally similar to caption 1
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_scale_and_clamp() -> None:
    img, txt = torch.eye(2), torch.eye(2)
    loss, logits = clip_loss(img, txt, torch.tensor(math.log(5.0)))
    assert torch.allclose(logits, 5 * torch.eye(2))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-5)), rel=1e-6)
    _, capped = clip_loss(img, txt, torch.tensor(10.0))  # exp(10) > 100: capped at 100
    assert torch.allclose(capped, 100 * torch.eye(2))
    assert INIT_LOG_TEMP == pytest.approx(math.log(1 / 0.07))
    assert MAX_LOG_TEMP == pytest.approx(math.log(100))


def test_clip_loss_is_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    t = torch.tensor(1.3)
    loss_ab, logits_ab = clip_loss(a, b, t)
    loss_ba, logits_ba = clip_loss(b, a, t)
    assert torch.allclose(logits_ab, logits_ba.T)
    assert loss_ab.item() == pytest.approx(loss_ba.item(), rel=1e-6)


# --- bag_of_words / nearest_text_tokens --------------------------------------------------------------------


def test_bag_of_words_ignores_masked_positions() -> None:
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1000.0, -1000.0]])  # (3, 2); row 2 would dominate
    ids = torch.tensor([[0, 1, 2], [1, 2, 2], [2, 2, 2]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    out = bag_of_words(ids, mask, table)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.0, 0.0]]))
    # Out-of-range padding at masked positions is ignored too.
    padded = torch.tensor([[0, 1, -1]])
    assert torch.allclose(bag_of_words(padded, mask[:1], table), out[:1])


def test_nearest_text_tokens_finds_planted_match() -> None:
    g = torch.Generator().manual_seed(0)
    text = torch.randn(50, 8, generator=g)  # (T, D)
    planted = torch.tensor([7, 31, 2])
    # Each image row is a scaled copy of a text row plus a little noise: cosine picks it, not the norm.
    image = 5 * text[planted] + 0.01 * torch.randn(3, 8, generator=g)
    text[11] = 100 * text[11]  # a long row that a dot-product search would prefer
    ids = nearest_text_tokens(image, text, k=3)
    assert ids.shape == (3, 3)
    assert ids[:, 0].tolist() == planted.tolist()


# --- train_alignment ---------------------------------------------------------------------------------------

N_CLASSES, TEXT_ROWS, DIM, CODES_PER_CLASS, N_CODES = 32, 64, 32, 4, 8


def synthetic_pairs(n: int, seed: int = 0) -> tuple[list[list[int]], torch.Tensor]:
    """Caption = class token (id < N_CLASSES) + 0-2 filler tokens; image = codes of that class only."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, N_CLASSES, (n,), generator=g)
    captions = []
    for c in cls.tolist():
        n_fill = int(torch.randint(0, 3, (1,), generator=g))
        captions.append([c, *torch.randint(N_CLASSES, TEXT_ROWS, (n_fill,), generator=g).tolist()])
    codes = cls[:, None] * CODES_PER_CLASS + torch.randint(0, CODES_PER_CLASS, (n, N_CODES), generator=g)
    return captions, codes  # codes (n, N_CODES) in [0, N_CLASSES * CODES_PER_CLASS)


def test_alignment_learns_and_leaves_text_table_untouched() -> None:
    captions, codes = synthetic_pairs(512)
    text = torch.randn(TEXT_ROWS, DIM, generator=torch.Generator().manual_seed(1))
    before = text.clone()
    seen: list[tuple[int, dict[str, float]]] = []
    kwargs = dict(batch_size=32, steps=120, lr=1e-2, seed=3, codebook_size=N_CLASSES * CODES_PER_CLASS + 5)
    table, history = train_alignment(
        captions, codes, text, on_step=lambda s, r: seen.append((s, r)), **kwargs
    )

    assert table.shape == (N_CLASSES * CODES_PER_CLASS + 5, DIM)
    assert torch.equal(text, before)  # frozen, bit-exactly
    assert [s for s, _ in seen] == list(range(1, 121))
    assert all(set(r) == {"loss", "temperature"} for _, r in seen)
    assert seen[0][1]["temperature"] == pytest.approx(1 / 0.07, rel=1e-5)
    first = np.mean([r["loss"] for r in history[:5]])
    last = np.mean([r["loss"] for r in history[-5:]])
    assert last < 0.5 * first, (first, last)

    # Untrained rows (codes never in an image) keep their seeded init; trained rows moved away from it.
    init, _ = train_alignment(captions, codes, text, **{**kwargs, "steps": 0})
    unused = slice(N_CLASSES * CODES_PER_CLASS, None)
    assert not torch.allclose(table[: N_CLASSES * CODES_PER_CLASS], init[: N_CLASSES * CODES_PER_CLASS])
    cos = torch.nn.functional.cosine_similarity(table[unused], init[unused], dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)  # same direction (one global rescale)

    # Deterministic from the seed.
    again, history2 = train_alignment(captions, codes, text, **kwargs)
    assert torch.equal(table, again) and history == history2

    # A class's image (the mean of its code rows) points at its class token. Single rows need not: only
    # their mean is trained, and each keeps part of its random init.
    class_means = table[: N_CLASSES * CODES_PER_CLASS].reshape(N_CLASSES, CODES_PER_CLASS, DIM).mean(1)
    nearest = nearest_text_tokens(class_means, text, k=1)[:, 0]
    assert (nearest == torch.arange(N_CLASSES)).float().mean() > 0.8


# --- the stage ---------------------------------------------------------------------------------------------

TEXTS = ["a red square on a blue ground", "the green circle", "two small yellow triangles"] * 5


def test_stage_writes_embeddings_and_nearest_tokens(tmp_path: Path) -> None:
    tok = train_bpe(TEXTS, 300, tmp_path / "text_tokenizer" / "tokenizer.json")
    layout = VocabLayout(text_vocab_size=tok.vocab_size + 4, codebook_size=N_CLASSES * CODES_PER_CLASS)
    captions, codes = synthetic_pairs(96)
    seq_len = 3 + N_CODES + 6
    writer = ShardWriter(tmp_path / "prepare" / "train", seq_len=seq_len, vocab_size=layout.size)
    writer.add_many(
        np.stack([layout_t2i(c, x, layout, seq_len) for c, x in zip(captions, codes, strict=True)])
    )
    writer.finish({"task": "t2i", "vocab": layout.to_dict()})
    text = torch.randn(layout.text_vocab_size, DIM, generator=torch.Generator().manual_seed(1))
    save_checkpoint(tmp_path / "pretrain" / "model.pt", {"state_dict": {"tok_embeddings.weight": text}})

    cfg = RunConfig()
    cfg.align = AlignConfig(steps=12, batch_size=16, lr=1e-2)  # no seed: its default applies
    tracker = NullTracker()
    out = tmp_path / "align"
    out.mkdir()
    ctx = StageContext(
        stage="align",
        cfg=cfg,
        out_dir=out,
        inputs={k: tmp_path / k for k in ("prepare", "pretrain", "text_tokenizer")},
        tracker=tracker,
    )
    align_stage.run(ctx)

    saved = torch.load(out / "image_embeddings.pt", weights_only=True)
    assert saved["image_embeddings"].shape == (layout.codebook_size, DIM)
    assert (saved["steps"], saved["batch_size"], saved["seed"], saved["pairs"]) == (12, 16, 0, 96)
    assert [s for s, _ in tracker.metrics] == list(range(1, 13))
    assert set(tracker.metrics[0][1]) == {"loss", "temperature"}
    assert sorted(Path(p).name for p, _ in tracker.artifacts) == ["image_embeddings.pt", "nearest_tokens.csv"]

    rows = list(csv.DictReader((out / "nearest_tokens.csv").open(newline="")))
    counts = torch.bincount(codes.reshape(-1), minlength=layout.codebook_size)
    assert len(rows) == min(align_stage.TOP_CODES, int((counts > 0).sum()))
    assert [int(r["frequency"]) for r in rows] == sorted((int(r["frequency"]) for r in rows), reverse=True)
    assert int(rows[0]["frequency"]) == int(counts.max())
    for r in rows:
        ids = [int(i) for i in r["token_ids"].split()]
        assert len(ids) == align_stage.NEAREST_K and max(ids) < tok.vocab_size  # padded rows excluded
        assert r["token_1"] == align_stage.visible(tok.decode([ids[0]]))
        assert r["token_1"].isprintable()
