"""`align`: contrastive alignment of image-code embeddings to the pretrained LM's frozen text embeddings.

Paper Sec. 3.2 / Fig. 7: bag-of-words image and caption embeddings, CLIP loss, only the image-code table
(and the temperature) train. Outputs, in the stage directory:

- ``image_embeddings.pt``: ``{"image_embeddings": (K, D) float32, row c = image code c (vocabulary id
  layout.image_offset + c), on the text table's scale; "codebook_size", "text_checkpoint", "temperature",
  "final_loss", "pairs", "steps", "batch_size", "lr", "seed"}``, for initialising a text-to-image run's
  image-code rows.
- ``nearest_tokens.csv``: the 50 most frequent image codes (in the pairs used), each with its 5 nearest
  text tokens by cosine similarity.
- ``metrics.jsonl`` / tracker: ``loss`` and ``temperature`` (the logit scale exp(log_temp)) per step.

Settings come from ``cfg.align``. The stage is short, so a stop request ends it without a checkpoint and a
relaunch starts it over.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate import metrics
from ablate.atomic import atomic_write_text
from ablate.data.sequence import VocabLayout, caption_ids, extract_image_codes
from ablate.errors import CheckpointError, DataError, StopRequested
from ablate.rundir import RunDir
from ablate.schema import RunConfig
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.inputs import open_text_tokenizer, pretrained_checkpoint
from ablate.stages.stage import Stage
from ablate.tokenize.text import TextTokenizer

if TYPE_CHECKING:  # torch and the code that needs it load when the stage runs (ablate.stages.common)
    import torch

    from ablate.data.shards import ShardDataset

TOP_CODES = 50  # image codes listed in nearest_tokens.csv
NEAREST_K = 5  # text tokens listed per image code
READ_CHUNK = 4096  # sequences read from the shards at a time
PROGRESS_EVERY = 10  # steps between progress.json updates


def load_text_table(path: Path, trust: bool = False) -> torch.Tensor:
    """The LM's input embeddings ``tok_embeddings.weight`` (T, D), as float32 on the CPU (``trust``:
    model.trust_checkpoint)."""
    from ablate.model.checkpoint_io import load_open_lm_state_dict

    state = load_open_lm_state_dict(path, trust=trust)
    table = state.get("tok_embeddings.weight")
    if table is None:
        raise CheckpointError(f"{path} has no 'tok_embeddings.weight' (keys: {list(state)[:5]} ...)")
    return table.detach().float()


def read_pairs(
    dataset: ShardDataset, layout: VocabLayout, max_pairs: int, seed: int
) -> tuple[list[list[int]], torch.Tensor]:
    """Captions and image codes (n, n_codes) of up to ``max_pairs`` training sequences.

    All sequences if there are few enough, else a seeded random subset (each pair then seen about once,
    and memory bounded by what training uses). Sequences with an empty caption are skipped.
    """
    import torch

    n = len(dataset)
    if n > max_pairs:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_pairs, replace=False))
    else:
        indices = np.arange(n)
    captions: list[list[int]] = []
    codes: list[np.ndarray] = []
    for start in range(0, indices.size, READ_CHUNK):
        for seq in dataset.read(indices[start : start + READ_CHUNK]):  # (chunk, L)
            cap = caption_ids(seq, layout)
            if cap.size:
                captions.append(cap.tolist())
                codes.append(extract_image_codes(seq, layout))
    if len(captions) < 2:
        raise DataError(
            f"{dataset.path}: {len(captions)} sequences with a caption; contrastive alignment needs "
            "text-to-image data (data.task=t2i)"
        )
    return captions, torch.as_tensor(np.stack(codes), dtype=torch.long)  # (n, n_codes)


def visible(token: str) -> str:
    """A decoded token with its unprintable characters (newlines, control bytes) escaped, for the CSV."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in token)


def nearest_tokens_csv(
    image_table: torch.Tensor, text_table: torch.Tensor, codes: torch.Tensor, tok: TextTokenizer
) -> str:
    """CSV of the most frequent image codes: code, frequency (occurrences), token_1..token_k, token_ids."""
    import torch

    from ablate.align.contrastive import nearest_text_tokens

    counts = torch.bincount(codes.reshape(-1), minlength=image_table.shape[0])  # (K,)
    # Stable sort of -count: ties go to the lower code, so the listing is reproducible.
    top = np.argsort(-counts.numpy(), kind="stable")[:TOP_CODES]
    top = top[counts.numpy()[top] > 0]  # a code no image uses has no meaningful embedding
    # Rows past the tokenizer's vocabulary (open_lm pads its table) are never in a caption: not candidates.
    candidates = text_table[: min(text_table.shape[0], tok.vocab_size)]  # (T', D)
    nearest = nearest_text_tokens(image_table[torch.as_tensor(top)], candidates, NEAREST_K)  # (top, k)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["code", "frequency", *(f"token_{i + 1}" for i in range(NEAREST_K)), "token_ids"])
    for code, ids in zip(top.tolist(), nearest.tolist(), strict=True):
        writer.writerow(
            [code, int(counts[code]), *(visible(tok.decode([i])) for i in ids), " ".join(map(str, ids))]
        )
    return buf.getvalue()


def _on_step(ctx: StageContext, total: int) -> Callable[[int, dict[str, float]], None]:
    """Per-step logging (metrics.jsonl and tracker, progress) and the stop check."""

    def on_step(step: int, row: dict[str, float]) -> None:
        ctx.log_metrics(row, step)
        if step % PROGRESS_EVERY == 0 or step == total:
            RunDir(ctx.out_dir).write_progress(
                {"step": step, "total_steps": total, "loss": row[metrics.LOSS]}
            )
        if ctx.should_stop() and step < total:
            raise StopRequested(f"stopped at step {step}; alignment restarts from scratch")

    return on_step


def run(ctx: StageContext) -> None:
    import torch

    from ablate.align.contrastive import train_alignment
    from ablate.data.shards import ShardDataset
    from ablate.train.checkpoint import save_checkpoint

    s = asdict(ctx.cfg.align)
    dataset = ShardDataset(ctx.inputs["prepare"] / "train")
    layout = VocabLayout.from_dict(dataset.metadata["vocab"])
    ckpt = pretrained_checkpoint(ctx)
    text_table = load_text_table(ckpt, trust=ctx.cfg.model.trust_checkpoint)  # (T, D), frozen
    if text_table.shape[0] < layout.text_vocab_size:
        raise CheckpointError(
            f"{ckpt}: tok_embeddings has {text_table.shape[0]} rows, but captions use text ids up to "
            f"{layout.text_vocab_size}: model.text_vocab_size does not match this checkpoint"
        )
    captions, codes = read_pairs(dataset, layout, s["steps"] * s["batch_size"], s["seed"])
    ctx.tracker.log_params({"align.pairs": len(captions)})
    ctx.log(
        f"{len(captions)} caption-image pairs, {codes.shape[1]} codes each; text table {tuple(text_table.shape)} "
        f"from {ckpt}; {s['steps']} steps of {min(s['batch_size'], len(captions))} pairs, lr {s['lr']}"
    )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    image_table, history = train_alignment(
        captions,
        codes,
        text_table,
        batch_size=s["batch_size"],
        steps=s["steps"],
        lr=s["lr"],
        seed=s["seed"],
        on_step=_on_step(ctx, s["steps"]),
        codebook_size=layout.codebook_size,
        device=device,
    )
    last = history[-1] if history else {metrics.LOSS: float("nan"), metrics.TEMPERATURE: float("nan")}
    ctx.log(
        f"done: loss {history[0][metrics.LOSS] if history else float('nan'):.4g} -> {last[metrics.LOSS]:.4g}, "
        f"temperature {last[metrics.TEMPERATURE]:.4g}"
    )

    emb_path = ctx.out_dir / "image_embeddings.pt"
    save_checkpoint(
        emb_path,
        {
            "image_embeddings": image_table,
            "codebook_size": layout.codebook_size,
            "text_checkpoint": str(ckpt),
            "temperature": last[metrics.TEMPERATURE],
            "final_loss": last[metrics.LOSS],
            "pairs": len(captions),
            **s,
        },
    )
    csv_path = ctx.out_dir / "nearest_tokens.csv"
    tok = open_text_tokenizer(ctx.inputs["text_tokenizer"])
    atomic_write_text(csv_path, nearest_tokens_csv(image_table, text_table, codes, tok))
    ctx.tracker.log_artifact(emb_path)
    ctx.tracker.log_artifact(csv_path)


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the alignment settings and the text checkpoint (pairs come in through inputs)."""
    return {"align": asdict(cfg.align), "checkpoint": cfg.model.checkpoint}


STAGE = Stage(
    names.ALIGN,
    version=1,
    config=config,
    run=run,
    inputs=(names.PREPARE, names.TEXT_TOKENIZER, names.PRETRAIN),
    applies=lambda cfg: cfg.model.image_init == "contrastive",
    params=("align", "model.checkpoint"),
)
