"""Where a demo training step's time goes: the blocks, the output layer with the loss, the optimizer.

The demo's model (open_lm architecture, width 128, 4 layers, 4 heads, sequence 288, vocabulary 1,024
text + 7 specials + 256 codes) and batch (8 sequences), one thread, float32 and bf16 autocast. Each part
is timed alone, forward and backward together, on the same random ids:

- blocks: embedding + the 4 blocks + the final norm, backward from the sum of their output;
- output + loss: the output layer (D -> V) and the loss split, backward into its input;
- optimizer: AdamW over every parameter;
- whole step: as the training loop runs it.

    python bench/demo_step_profile.py [--steps 10] [--threads 1] [--text-vocab 1024]  (1792, 8192: older demos)

The FLOPs column counts matmuls only (2 x multiply-adds, x3 for forward + backward). Timings are this
machine's, never test assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from ablate.data.sequence import VocabLayout
from ablate.model.transformer import ModelArgs, Transformer
from ablate.train.loss import shift_targets, split_loss

SEQ, BATCH = 288, 8


def timed(fn: Callable[[], None], steps: int) -> float:
    """Median seconds of fn over `steps` calls, after two untimed ones."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(text_vocab: int, precision: str, steps: int) -> dict[str, float]:
    layout = VocabLayout(text_vocab_size=text_vocab, codebook_size=256)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(hidden_dim=128, n_layers=4, n_heads=4, seq_len=SEQ, vocab_size=layout.size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, layout.size, (BATCH, SEQ + 1))
    inputs, targets = shift_targets(ids)  # (B, L) each
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    def blocks_out() -> torch.Tensor:
        x = model.post_embed_norm(model.tok_embeddings(inputs))  # (B, L, D)
        for layer in model.layers:
            x = layer(x)
        return model.norm(x)

    def blocks() -> None:
        with autocast:
            y = blocks_out()
        y.float().sum().backward()
        model.zero_grad(set_to_none=True)

    hidden = blocks_out().detach().requires_grad_(True)  # (B, L, D)

    def head() -> None:
        with autocast:
            loss = split_loss(model.output(hidden).float(), targets, layout).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        hidden.grad = None

    def whole() -> None:
        with autocast:
            loss = split_loss(model(inputs), targets, layout).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def optimizer() -> None:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()

    d, tokens = 128, BATCH * SEQ
    block_flops = 6 * tokens * 4 * 12 * d * d + 6 * tokens * 4 * 2 * SEQ * d  # weights + attention scores
    return {
        "blocks": timed(blocks, steps),
        "output + loss": timed(head, steps),
        "optimizer": timed(optimizer, steps),
        "whole step": timed(whole, steps),
        "blocks_gflop": block_flops / 1e9,
        "output_gflop": 6 * tokens * d * layout.size / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text-vocab", type=int, default=1024)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for precision in ("float32", "bf16"):
        r = profile(a.text_vocab, precision, a.steps)
        total = r["whole step"]
        print(
            f"{precision}, text vocabulary {a.text_vocab:,}, {a.threads} thread(s): step {total * 1e3:.0f} ms"
        )
        for part, gflop in (
            ("blocks", r["blocks_gflop"]),
            ("output + loss", r["output_gflop"]),
            ("optimizer", 0),
        ):
            flops = f"{gflop:5.1f} GFLOP" if gflop else "          "
            print(f"  {part:<14} {r[part] * 1e3:7.1f} ms  {r[part] / total:5.0%}  {flops}")


if __name__ == "__main__":
    main()
