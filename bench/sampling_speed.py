"""Image sampling speed: sample_images with the KV cache vs re-running the whole prefix every step.

The demo's model (open_lm architecture, hidden_dim 128, 4 layers, 4 heads, seq_len 288, vocabulary
8192 text + 7 specials + 256 codes), 64 t2i prompts of the longest caption that fits (26 tokens, so
P = 30), 256 codes each, temperature 1 with top-p 0.9, one thread. Both paths draw from a generator
with the same seed; the script reports whether they gave the same codes.

    python bench/sampling_speed.py [--images 64] [--codes 256] [--threads 1] [--skip-uncached]
                                   [--device cuda] [--precision bf16]

On a GPU, `--device cuda --precision bf16` times what the evaluate stage's slices run (autocast as
train.precision=auto gives on CUDA).
"""

from __future__ import annotations

import argparse
import inspect
import time

import numpy as np
import torch

from ablate.data.sequence import VocabLayout, max_caption_tokens, prompt_t2i
from ablate.evaluate.sampling import sample_images
from ablate.model.transformer import ModelArgs, Transformer
from ablate.train.loop import precision_context

SEQ = 288
LAYOUT = VocabLayout(text_vocab_size=8192, codebook_size=256)  # the demo's vocabulary


def demo_model() -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs(hidden_dim=128, n_layers=4, n_heads=4, seq_len=SEQ, vocab_size=LAYOUT.size)
    return Transformer(args).eval()


def prompts(n: int, n_codes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    cap = max_caption_tokens(n_codes, SEQ)
    return np.stack(
        [prompt_t2i(rng.integers(0, 8192, cap), LAYOUT, SEQ, n_codes) for _ in range(n)]
    )  # (N, P)


def timed(
    model: Transformer, batch: np.ndarray, n_codes: int, precision: str, **kw
) -> tuple[float, torch.Tensor]:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with precision_context(precision, device):
        codes = sample_images(model, batch, LAYOUT, n_codes, temperature=1.0, top_p=0.9, generator=gen, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-uncached", action="store_true", help="time the cached path only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="float32", choices=["float32", "bf16", "auto"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, batch = demo_model().to(a.device), prompts(a.images, a.codes)
    has_cache = "use_cache" in inspect.signature(sample_images).parameters
    print(
        f"{a.images} images x {a.codes} codes, prompt length {batch.shape[1]}, {a.threads} thread(s), "
        f"{a.device}, {a.precision}"
    )
    results = {}
    if has_cache:
        results["cached"] = timed(model, batch, a.codes, a.precision)
    if not a.skip_uncached:
        results["uncached"] = timed(
            model, batch, a.codes, a.precision, **({"use_cache": False} if has_cache else {})
        )
    for name, (sec, _) in results.items():
        print(f"{name:>9}: {sec:8.2f} s  ({a.images * a.codes / sec:,.0f} codes/s)")
    if len(results) == 2:
        (tc, cc), (tu, cu) = results["cached"], results["uncached"]
        print(f"  speedup: {tu / tc:.1f}x; same codes: {torch.equal(cc, cu)}")


if __name__ == "__main__":
    main()
