"""`train`: an arm's text-to-image (or unconditional) run, from a pretrained or a random language model."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from ablate import metrics
from ablate.data.sequence import VocabLayout
from ablate.errors import CheckpointError
from ablate.schema import EXECUTION_SECTIONS, UNKEYED_FIELDS, RunConfig
from ablate.stages import names
from ablate.stages.common import arch_config, model_args, train_and_save
from ablate.stages.context import StageContext
from ablate.stages.inputs import heldout_shards, open_text_tokenizer, pretrained_checkpoint
from ablate.stages.slices import PROBE_FIELDS
from ablate.stages.stage import Stage
from ablate.train.final import FINAL_METRICS, final_values

if TYPE_CHECKING:  # torch and the code that needs it load when the stage runs (ablate.stages.common)
    import torch

    from ablate.model.transformer import Transformer


def build_model(ctx: StageContext, layout: VocabLayout) -> Transformer:
    """The arm's initial model: LM weights widened for specials and image codes, or all random."""
    import torch

    from ablate.model.checkpoint_io import load_into, load_open_lm_state_dict
    from ablate.model.transformer import Transformer
    from ablate.model.vocab import expand_vocab

    cfg = ctx.cfg
    torch.manual_seed(cfg.train.seed)
    if cfg.model.init == "random":
        return Transformer(model_args(cfg, layout.size))
    model = Transformer(model_args(cfg, cfg.model.text_vocab_size))
    path = pretrained_checkpoint(ctx)
    load_into(model, load_open_lm_state_dict(path, trust=cfg.model.trust_checkpoint))
    ctx.log(f"loaded language model from {path}")
    generator = torch.Generator().manual_seed(cfg.train.seed)
    rows = None
    if cfg.model.image_init == "mean" and cfg.model.new_rows_init != "mean":
        # Image-code embedding rows start at the mean text embedding (output rows follow new_rows_init).
        mean = model.tok_embeddings.weight.detach().mean(dim=0, keepdim=True)  # (1, D)
        rows = {layout.image_offset: mean.expand(layout.codebook_size, -1).clone()}
    elif cfg.model.image_init == "contrastive":
        rows = {layout.image_offset: aligned_image_rows(ctx, layout, model.tok_embeddings.weight.shape[1])}
        ctx.log(f"image-code input embeddings copied from the align stage ({ctx.inputs['align']})")
    expand_vocab(model, layout.size, cfg.model.new_rows_init, generator, rows)
    return model


def aligned_image_rows(ctx: StageContext, layout: VocabLayout, dim: int) -> torch.Tensor:
    """The `align` stage's image-code embeddings (K, D), to copy into the widened input embedding.

    Copied, not projected: alignment trains them in the LM's own embedding space (same D, compared with
    the frozen text rows), so they are valid input embeddings as they are. Only the input side is set;
    the output rows of image codes follow model.new_rows_init, as in the paper's description.
    """
    import torch

    state = torch.load(ctx.inputs["align"] / "image_embeddings.pt", map_location="cpu", weights_only=True)
    table = state["image_embeddings"].float()  # (K, D)
    if tuple(table.shape) != (layout.codebook_size, dim):
        raise CheckpointError(
            f"{ctx.inputs['align']}/image_embeddings.pt holds {tuple(table.shape)} image embeddings, but the "
            f"model needs ({layout.codebook_size}, {dim}); relaunch so the align stage runs for this model"
        )
    return table


def text_probe(ctx: StageContext, model: Transformer, layout: VocabLayout):
    """Table 1's text-ability probe as a train_loop callback, or None (with the reason logged)."""
    from ablate.data.shards import ShardDataset
    from ablate.evaluate.text_ability import TextProbe
    from ablate.train import distributed as dist

    cfg, e = ctx.cfg, ctx.cfg.evaluate
    if cfg.data.task != "t2i" or cfg.model.init != "pretrained" or not e.probe_every_tokens:
        return None  # text ability is lost only where there was some: a pretrained LM trained on t2i
    if not dist.is_main():
        return None  # data-parallel: rank 0 probes (the loop calls it there only) and writes its file
    heldout = heldout_shards(ctx)
    if heldout is None:
        ctx.log(
            "text-ability probe off: no held-out text (the demo's `pretrain` stage keeps some of its corpus "
            "out; with model.checkpoint, give pretrain.heldout_text_path)"
        )
        return None
    probe = TextProbe(
        model,
        ShardDataset(heldout),
        open_text_tokenizer(ctx.inputs["text_tokenizer"]),
        list(e.prompts),
        layout.text_vocab_size,
        ctx.out_dir,
        max_sequences=e.probe_sequences,
        max_new_tokens=e.completion_tokens,
    )

    def evaluate(step: int, tokens: int) -> dict[str, float]:
        row = {**probe(step, tokens), metrics.TOKENS: float(tokens)}
        ctx.tracker.log_artifact(probe.path)  # the whole file again: the artifact is always complete
        return row

    return evaluate


def run(ctx: StageContext) -> None:
    from ablate.data.shards import ShardDataset
    from ablate.model.freeze import apply_trainable, positional_parameter_names
    from ablate.train import distributed as dist

    cfg = ctx.cfg
    dataset = ShardDataset(ctx.inputs["prepare"] / "train")
    layout = VocabLayout.from_dict(dataset.metadata["vocab"])
    model = build_model(ctx, layout)
    trainable, total = apply_trainable(model, cfg.train.trainable)
    positional = positional_parameter_names(model)
    ctx.tracker.log_params({"n_params": total, "n_trainable_params": trainable})
    ctx.tracker.set_tags(
        {
            "ablate.trainable": cfg.train.trainable,
            # open_lm's rotary embedding has no parameter: the "+ positional embedding" freeze setting adds none.
            "ablate.positional_params": ",".join(positional)
            if positional
            else "none (rotary has no parameters)",
        }
    )
    ctx.log(
        f"{cfg.model.init} init, trainable={cfg.train.trainable}: {trainable:,} of {total:,} parameters train; "
        f"vocabulary {layout.size} = {layout.text_vocab_size} text + 7 special + {layout.codebook_size} image"
    )
    # Caption dropout is a text-to-image setting: an unconditional run has no caption to drop.
    train = cfg.train if cfg.data.task == "t2i" else replace(cfg.train, caption_dropout=0.0)
    probe = text_probe(ctx, model, layout)
    train_and_save(ctx, model, dataset, layout, train, cfg.optim, probe, cfg.evaluate.probe_every_tokens)
    if dist.is_main():
        log_final_values(ctx)


def log_final_values(ctx: StageContext) -> dict[str, float]:
    """final_<metric> (ablate.train.final) at the last step, into metrics.jsonl and the tracker: the
    numbers an arm's MLflow run shows. An unconditional run's only non-image targets are structural
    specials, so it has no final_text_loss (its "text" loss is no text ability)."""
    # Training steps, not the probe's step-0 row.
    rows = [r for r in ctx.metrics_log.rows() if metrics.LOSS in r]
    if not rows:
        return {}
    wanted = [m for m in FINAL_METRICS if not (m == metrics.TEXT_LOSS and ctx.cfg.data.task == "uncond")]
    finals = final_values(rows, wanted)
    step = max(int(r["step"]) for r in rows)
    ctx.log_metrics(finals, step)
    return finals


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the run config minus execution settings, alignment and sampling.

    pretrain and align are left out because their outputs are inputs: their settings reach this key
    through those stages' keys.
    """
    full = asdict(cfg)
    out = {k: v for k, v in full.items() if k not in (*EXECUTION_SECTIONS, "pretrain", "align", "evaluate")}
    for field_ in UNKEYED_FIELDS:
        section, name = field_.split(".", 1)
        out[section] = {k: v for k, v in out[section].items() if k != name}
    out["evaluate"] = {k: full["evaluate"][k] for k in PROBE_FIELDS}
    if cfg.train.caption_dropout == 0 or cfg.data.task != "t2i":  # read by t2i only; 0 keeps older keys
        del out["train"]["caption_dropout"]
    if cfg.model.config_json:  # the file's architecture, not just its path (edited in place, it differs)
        out["config_json_arch"] = arch_config(cfg)
    return out


STAGE = Stage(
    names.TRAIN,
    # 3: train.threads left the key (it is cluster.threads now); evaluate.prompts joined it.
    version=3,
    config=config,
    run=run,
    inputs=(
        names.PREPARE,
        names.IMAGE_TOKENIZER,
        names.TEXT_TOKENIZER,
        names.PRETRAIN,
        names.HELDOUT_TEXT,
        names.ALIGN,
    ),
    data_parallel=True,
    checkpoints=True,
)
