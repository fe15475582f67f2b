"""Training throughput of one device: tokens per second, peak memory and MFU of the open_lm-1b config.

    python bench/gpu_throughput.py                              # open_lm-1b, paper vocabulary, seq 1,152
    python bench/gpu_throughput.py --micro-batch 8 --precision bf16 --steps 20
    python bench/gpu_throughput.py --config tiny --steps 3      # the CPU smoke check CI runs

The model is ablate's open_lm-architecture Transformer with the paper's vocabulary (50,432 text ids + 7
specials + 16,384 image codes = 66,823) and sequence length (1,152); one optimizer step is forward, the
loss split as training computes it (ablate.train.loss.split_loss), backward and AdamW (fused on CUDA), on
random token ids. `--precision bf16` runs forward and loss under bf16 autocast with float32 weights and
optimizer state (the plan of the train loop's bf16 setting); float32 runs without autocast; TF32 matmuls
are on for CUDA. Reported after `--warmup` untimed steps: tokens/s, peak memory (CUDA's allocator peak, or
the process's peak RSS on CPU), and MFU = tokens/s x FLOP/token / the device's bf16 dense peak from PEAKS
(FLOP/token as the dry-run estimate counts it: ablate.model.transformer.flops_per_token). Timings are
measurements of this machine, never test assertions.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ablate.data.sequence import VocabLayout  # noqa: E402
from ablate.model.args import flops_per_token  # noqa: E402
from ablate.model.transformer import ModelArgs, Transformer, count_parameters  # noqa: E402
from ablate.train.loss import shift_targets, split_loss  # noqa: E402

# Dense bf16 tensor-core peaks, without sparsity, FLOP/s per device (vendor data sheets; SXM parts).
PEAKS = {
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}
CONFIGS = {
    # open_lm-1b (open_lm/model_configs/open_lm_1b.json): the paper's LM.
    "open_lm_1b": dict(hidden_dim=2048, n_layers=24, n_heads=16, positional_embedding_type="head_rotary"),
    "tiny": dict(hidden_dim=64, n_layers=2, n_heads=4),
}
PAPER_LAYOUT = VocabLayout(text_vocab_size=50432, codebook_size=16384)


def peak_for(name: str) -> float | None:
    """The bf16 dense peak of a device named like torch names it ('NVIDIA H200'), or None if unknown."""
    # Whole model names only: "L4" is not "L40S", but "A100" is "A100-SXM4-80GB".
    up = name.upper()
    return next((v for k, v in PEAKS.items() if re.search(rf"(^|[^A-Z0-9]){k}($|[^A-Z0-9])", up)), None)


def device_peak(device: torch.device) -> tuple[str, float | None]:
    """(device name, its bf16 dense peak FLOP/s or None when not in PEAKS, e.g. a CPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, peak_for(name)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(
    config: str,
    seq_len: int,
    micro_batch: int,
    precision: str,
    steps: int,
    warmup: int,
    *,
    compile: bool = False,
    activation_checkpointing: bool = False,
) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    layout = PAPER_LAYOUT if config == "open_lm_1b" else VocabLayout(text_vocab_size=256, codebook_size=64)
    args = ModelArgs(seq_len=seq_len, vocab_size=layout.size, **CONFIGS[config])  # type: ignore[arg-type]
    model = Transformer(args).to(device)
    model.activation_checkpointing = activation_checkpointing
    forward = torch.compile(model) if compile else model  # as train.compile: the forward passes only
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    gen = torch.Generator(device="cpu").manual_seed(0)
    batch = torch.randint(0, layout.size, (micro_batch, seq_len + 1), generator=gen).to(device)  # (B, L+1)
    inputs, targets = shift_targets(batch)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(inputs)  # (B, L, V)
            loss = split_loss(logits, targets, layout).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss = float("nan")
    for _ in range(steps):
        loss = step()
    sync()
    took = time.perf_counter() - start
    tokens_per_s = steps * micro_batch * seq_len / took
    name, peak = device_peak(device)
    flops = flops_per_token(args)
    return {
        "device": name,
        "config": config,
        "params": count_parameters(model),
        "vocab": layout.size,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "precision": precision,
        "steps": steps,
        "loss": loss,
        "tokens_per_s": tokens_per_s,
        "peak_memory_gib": peak_memory_bytes(device) / 2**30,
        "gflop_per_token": flops / 1e9,
        # The float32 logits and their gradient: what a chunked cross-entropy would save.
        "logits_gib": 2 * micro_batch * seq_len * layout.size * 4 / 2**30,
        "compile": compile,
        "activation_checkpointing": activation_checkpointing,
        "peak_tflops": None if peak is None else peak / 1e12,
        "mfu": None if peak is None else tokens_per_s * flops / peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="open_lm_1b")
    ap.add_argument("--seq-len", type=int, default=1152)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--precision", choices=("bf16", "float32"), default="bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile)")
    ap.add_argument("--activation-checkpointing", action="store_true", help="train.activation_checkpointing")
    a = ap.parse_args()
    r = measure(
        a.config,
        a.seq_len,
        a.micro_batch,
        a.precision,
        a.steps,
        a.warmup,
        compile=a.compile,
        activation_checkpointing=a.activation_checkpointing,
    )
    print(
        f"device {r['device']}; {r['config']}: {r['params'] / 1e6:,.1f}M parameters, vocabulary {r['vocab']:,}, "
        f"sequence {r['seq_len']:,}, micro-batch {r['micro_batch']}, {r['precision']}, {r['steps']} timed steps"
        + (", compiled" if r["compile"] else "")
        + (", activation checkpointing" if r["activation_checkpointing"] else "")
    )
    print(f"tokens/s      {r['tokens_per_s']:,.1f}")
    print(
        f"peak memory   {r['peak_memory_gib']:.2f} GiB (of it float32 logits + their grad: {r['logits_gib']:.2f} GiB)"
    )
    print(f"GFLOP/token   {r['gflop_per_token']:.3f}")
    if r["mfu"] is None:
        print("MFU           n/a (no bf16 peak known for this device: see PEAKS)")
    else:
        print(
            f"MFU           {r['mfu']:.1%} of {r['peak_tflops']:.0f} TFLOP/s ({r['device']} bf16 dense peak)"
        )
    print(f"loss          {r['loss']:.4f}")


if __name__ == "__main__":
    main()
