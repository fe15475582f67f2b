"""Cost estimate of an arm's `train` stage from its config alone: ranks, steps, tokens, FLOPs, GPU-hours.

Pure arithmetic (nothing is built or read from disk), for `ablate launch --dry-run` before a sweep spends a
cluster's time. Only the `train` stage is counted: at scale=paper the language model is a given checkpoint
(model.checkpoint; the demo's small `pretrain` stage runs on CPU in minutes), the `align` stage is a few
hundred steps over an embedding table (negligible next to training), and evaluation, checkpoint I/O,
queueing and requeues are not counted.

FLOPs per token are ``ablate.model.args.flops_per_token`` for the arm's widened vocabulary
(``model.text_vocab_size`` + 7 specials + ``tokenizer.codebook_size``): ``6 N + 12 L d seq_len`` with N the
non-embedding parameters (the output layer counts, the input embedding lookup does not) and the attention
term over a full context, not halved for the causal mask (so slightly high, by ~4% at paper scale).
"""

from __future__ import annotations

from dataclasses import dataclass

from ablate.data.sequence import VocabLayout
from ablate.model.args import flops_per_token, non_embedding_parameters
from ablate.schema import RunConfig
from ablate.stages.common import model_args
from ablate.stages.plan import plan_stages
from ablate.train.schedule import closest_micro_batch_size, plan_batch, tokens_to_steps

# NVIDIA A100 (SXM, 40 or 80 GB) dense BF16 tensor-core peak, without 2:4 sparsity: 312 TFLOP/s per GPU.
A100_BF16_PEAK_FLOPS = 312e12
# Pretokenization (the prepare stage's units on real data): MoVQGAN-270M's encoder (channels 256, 512,
# 512, 1024, 2 layers per block, attention at the 32x32 level: 270.7M parameters as a diffusers VQModel)
# costs 891 GFLOP per 256x256 image, counted with torch's FlopCounterMode on the architecture
# (bench/pretokenize_throughput.py --flops; 865 without the attention). Encoding runs in float32 (bf16
# or TF32 flip near-ties among 16,384 codes), so the peak is the A100's float32 one.
MOVQGAN_ENCODE_FLOPS = 891e9
A100_FP32_PEAK_FLOPS = 19.5e12
ASSUMED_ENCODE_UTILIZATION = 0.5  # a convolutional encoder in float32; assumed, not measured here
IMAGES_PER_SHARD = 10_000  # img2dataset's default samples per tar shard (the webdataset units' size)
# |effective / requested batch - 1| above which the table suggests another micro-batch size.
DEVIATION_NOTE = 0.05


@dataclass(frozen=True)
class ArmEstimate:
    """What one arm's `train` stage costs. GPU fields are None when the cluster has no GPUs."""

    cluster_kind: str
    nodes: int
    gpus_per_node: int
    gpus: int
    """Total GPUs (nodes x gpus_per_node); 0 on CPU."""
    world_size: int
    """Ranks: nodes x tasks_per_node (slurm), else 1."""
    seq_len: int
    requested_tokens_per_step: int
    """train.batch_tokens."""
    tokens_per_step: int
    """Effective global batch after plan_batch's rounding."""
    sequences_per_step: int
    micro_batch_size: int
    """Sequences per forward pass on one rank."""
    accum_steps: int
    """Micro-batches per rank per optimizer step."""
    steps: int
    """Optimizer steps to reach train.total_tokens (ceil)."""
    tokens: int
    """Tokens actually trained: steps x tokens_per_step (>= train.total_tokens)."""
    vocab_size: int
    """text_vocab_size + 7 specials + codebook_size."""
    matmul_parameters: int
    """N of flops_per_token: non-embedding parameters, output layer included."""
    flops_per_token: float
    total_flops: float
    mfu: float
    peak_flops: float
    """Per-GPU peak assumed (FLOP/s)."""
    gpu_hours: float | None
    """total_flops / (peak_flops x mfu) / 3600; None on CPU."""
    wall_hours: float | None
    """gpu_hours / gpus: one job on its whole allocation, no queueing or requeues; None on CPU."""
    suggested_micro_batch_size: int
    """closest_micro_batch_size(..., max=micro_batch_size): equal to micro_batch_size when it is already best."""

    @property
    def deviation(self) -> float:
        """Effective batch relative to the requested one, minus 1."""
        return self.tokens_per_step / self.requested_tokens_per_step - 1.0


def estimate_arm(cfg: RunConfig, peak_flops: float = A100_BF16_PEAK_FLOPS) -> ArmEstimate:
    """Estimate the `train` stage of one arm from its (validated) config (MFU: cluster.mfu); pure arithmetic."""
    mfu = cfg.cluster.mfu
    c, tr, seq_len = cfg.cluster, cfg.train, cfg.data.seq_len
    world, gpus = c.training_world_size(), c.job_gpus()
    plan = plan_batch(tr.batch_tokens, seq_len, tr.micro_batch_size, world)
    steps = tokens_to_steps(tr.total_tokens, plan.tokens_per_step)
    tokens = steps * plan.tokens_per_step
    vocab = VocabLayout(text_vocab_size=cfg.model.text_vocab_size, codebook_size=cfg.tokenizer.codebook_size)
    args = model_args(cfg, vocab.size)
    fpt = flops_per_token(args)
    total = fpt * tokens
    gpu_hours = total / (peak_flops * mfu) / 3600.0 if gpus else None
    return ArmEstimate(
        cluster_kind=c.kind,
        nodes=c.nodes if c.kind == "slurm" else 1,
        gpus_per_node=c.gpus_per_node if c.kind == "slurm" else 0,
        gpus=gpus,
        world_size=world,
        seq_len=seq_len,
        requested_tokens_per_step=tr.batch_tokens,
        tokens_per_step=plan.tokens_per_step,
        sequences_per_step=plan.sequences_per_step,
        micro_batch_size=plan.micro_batch_size,
        accum_steps=plan.accum_steps,
        steps=steps,
        tokens=tokens,
        vocab_size=vocab.size,
        matmul_parameters=non_embedding_parameters(args),
        flops_per_token=fpt,
        total_flops=total,
        mfu=mfu,
        peak_flops=peak_flops,
        gpu_hours=gpu_hours,
        wall_hours=gpu_hours / gpus if gpu_hours is not None else None,
        suggested_micro_batch_size=closest_micro_batch_size(
            tr.batch_tokens, seq_len, tr.micro_batch_size, world
        ),
    )


def _tokens(n: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


def _where(e: ArmEstimate) -> str:
    if e.cluster_kind != "slurm":
        return f"{e.cluster_kind} (CPU)"
    if e.gpus:
        return f"slurm {e.nodes}x{e.gpus_per_node} GPU"
    return f"slurm {e.nodes}x{e.world_size // e.nodes} CPU"


def estimate_table(rows: list[tuple[str, RunConfig]]) -> str:
    """A text table of estimate_arm per (label, config), a total line and footers stating the assumptions.

    The total counts each distinct `train` job once (arms that differ only in what `train` does not read,
    e.g. sampling settings, share it; such rows say which arm they share with).
    """
    header = (
        "arm",
        "cluster",
        "steps",
        "tokens",
        "tokens/step (vs asked)",
        "micro x accum x ranks",
        "GFLOP/tok",
        "GPU-h",
        "wall-h",
    )
    table: list[tuple[str, ...]] = [header]
    notes: dict[str, list[str]] = {}  # note text -> the arms it concerns
    frozen = False
    seen: dict[str, str] = {}  # train stage key -> first label
    distinct: list[ArmEstimate] = []
    mfu = peak = None
    for label, cfg in rows:
        e = estimate_arm(cfg)
        mfu, peak = e.mfu, e.peak_flops
        frozen = frozen or cfg.train.trainable != "all"
        key = next(s.key for s in plan_stages(cfg) if s.name == "train")
        shared = seen.get(key)
        if shared is None:
            seen[key] = label
            distinct.append(e)
        table.append(
            (
                label + (f" (= {shared})" if shared else ""),
                _where(e),
                f"{e.steps:,}",
                _tokens(e.tokens),
                f"{e.tokens_per_step:,} ({e.deviation:+.1%})",
                f"{e.micro_batch_size} x {e.accum_steps} x {e.world_size}",
                f"{e.flops_per_token / 1e9:.3g}",
                f"{e.gpu_hours:,.0f}" if e.gpu_hours is not None else "-",
                f"{e.wall_hours:,.1f}" if e.wall_hours is not None else "-",
            )
        )
        if abs(e.deviation) > DEVIATION_NOTE and shared is None:
            better = plan_batch(
                e.requested_tokens_per_step, e.seq_len, e.suggested_micro_batch_size, e.world_size
            )
            tip = (
                f"; train.micro_batch_size={e.suggested_micro_batch_size} would give "
                f"{better.tokens_per_step:,} ({better.deviation:+.1%})"
                if e.suggested_micro_batch_size != e.micro_batch_size
                else ""
            )
            text = (
                f"effective batch {e.tokens_per_step:,} tokens is {e.deviation:+.1%} off "
                f"train.batch_tokens={e.requested_tokens_per_step:,} (a step holds whole sequences of "
                f"{e.seq_len} tokens){tip}"
            )
            notes.setdefault(text, []).append(label)
    gpu = [e for e in distinct if e.gpu_hours is not None]
    total_gpu_h = sum(e.gpu_hours for e in gpu)  # type: ignore[misc]
    total_wall = sum(e.wall_hours for e in gpu)  # type: ignore[misc]
    table.append(
        (
            f"total ({len(distinct)} train job(s))",
            "",
            f"{sum(e.steps for e in distinct):,}",
            _tokens(sum(e.tokens for e in distinct)),
            "",
            "",
            "",
            f"{total_gpu_h:,.0f}" if gpu else "-",
            f"{total_wall:,.1f}" if gpu else "-",
        )
    )
    width = [max(len(r[i]) for r in table) for i in range(len(header))]
    left = {0, 1}
    lines = [
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, width, strict=True))
        ).rstrip()
        for r in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    for text, labels in notes.items():
        who = ", ".join(labels) if len(labels) <= 2 else f"{len(labels)} arms"
        lines.append(f"note: {who}: {text}")
    if mfu is not None and peak is not None:
        lines.append(
            f"assumed: MFU {mfu:.2f} (cluster.mfu; bench/gpu_throughput.py measures it) of the A100 bf16 "
            f"dense peak {peak / 1e12:.0f} TFLOP/s per GPU; "
            "GPU-h = FLOP/token x tokens / (peak x MFU); wall-h = GPU-h / GPUs of the job "
            "(total wall-h: jobs one after another)"
        )
        lines.append(
            "FLOP/token = 6 N + 12 layers x hidden x seq_len (N: non-embedding params incl. the output layer; "
            "attention over the full context, not halved for the causal mask)"
        )
        if frozen:
            lines.append(
                "partly frozen arms (train.trainable) are counted as fully trainable: an upper bound (frozen "
                "weights skip their weight gradients, about 2 of the 6 FLOPs per parameter and token)"
            )
    lines.append(
        "train stage only: at scale=paper the LM is a given checkpoint (no pretrain cost); align is "
        "negligible; evaluation, checkpointing, queueing and requeues are not counted"
    )
    return "\n".join(lines)


def pretokenize_lines(rows: list[tuple[str, RunConfig]]) -> list[str]:
    """Lines estimating the prepare stage's pretokenization on real data (units, images, GPU-hours), once
    per distinct prepare job, with the assumptions stated."""
    lines, seen = [], set()
    for _, cfg in rows:
        spec = next((s for s in plan_stages(cfg) if s.name == "prepare"), None)
        if spec is None or not spec.units or spec.key in seen:
            continue
        seen.add(spec.key)
        d, c = cfg.data, cfg.cluster
        per_unit = IMAGES_PER_SHARD  # webdataset: assumed; folder: the unit's size (the last may be smaller)
        images = len(spec.units) * per_unit
        how = f"~{per_unit:,} images each (img2dataset's default per shard; assumed)"
        line = f"prepare: {len(spec.units):,} units of {how} = {images / 1e6:,.1f}M images"
        if cfg.tokenizer.image != "diffusers":
            lines.append(line + "; no encode cost known for this image tokenizer")
            continue
        flops = MOVQGAN_ENCODE_FLOPS * (d.image_size / 256) ** 2
        per_image = flops / (A100_FP32_PEAK_FLOPS * ASSUMED_ENCODE_UTILIZATION)
        gpu_h = images * per_image / 3600
        at_once = min(len(spec.units), c.array_parallelism) if c.kind == "slurm" else 1
        lines.append(
            f"{line}; encode {flops / 1e9:,.0f} GFLOP/image (MoVQGAN-270M at {d.image_size}x{d.image_size}), "
            f"float32 on A100s at {ASSUMED_ENCODE_UTILIZATION:.0%} of {A100_FP32_PEAK_FLOPS / 1e12:.1f} TFLOP/s "
            f"(assumed): {per_image * 1e3:.0f} ms/image, {gpu_h:,.0f} GPU-h, wall {gpu_h / at_once:,.1f} h with "
            f"{at_once} unit(s) at once (cluster.array_parallelism)"
        )
    return lines
