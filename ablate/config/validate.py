"""Validation of a composed config, once per arm at launch, before anything runs: one function per schema
section, then the checks that relate sections. The closed choices are checked from the schema's Literals
(ablate.schema.CHOICES); sizes use the maths of the packages that own them (sequence layout, batch plan).

`check_assets` is the other half: the files an arm needs exist (a dry run only reports them)."""

from __future__ import annotations

from pathlib import Path

from ablate import schema as S
from ablate.config.sbatch import check_cluster_sbatch
from ablate.data.sequence import min_seq_len
from ablate.data.sources import expand_shards
from ablate.errors import ConfigError
from ablate.model.args import open_lm_arch
from ablate.schema import RunConfig
from ablate.tokenize.diffusers_vq import check_vq_config
from ablate.train.schedule import sequences_per_step


def validate(cfg: RunConfig, arm: str | None = None) -> None:
    """Raise ConfigError (naming arm, key, value, allowed) for the first invalid value found: the closed
    choices first, then each section alone, then what sections must agree on."""
    validate_choices(cfg, arm=arm)
    validate_model(cfg.model, arm=arm)
    validate_data(cfg.data, arm=arm)
    validate_tokenizer(cfg.tokenizer, arm=arm)
    validate_pretrain(cfg.pretrain, arm=arm)
    validate_optim(cfg.optim, arm=arm)
    validate_train(cfg.train, arm=arm)
    _positive("align", cfg.align, ("batch_size", "steps", "lr"), arm)
    validate_evaluate(cfg.evaluate, arm=arm)
    validate_cluster(cfg.cluster, arm=arm)
    validate_tracking(cfg.tracking, arm=arm)
    validate_sizes(cfg, arm=arm)
    validate_combinations(cfg, arm=arm)


def image_tokens(cfg: RunConfig) -> int:
    """Codes per image: (image_size / downsample) squared."""
    side = cfg.data.image_size // cfg.tokenizer.downsample
    return side * side


def _positive(section: str, obj: object, names: tuple[str, ...], arm: str | None) -> None:
    """ConfigError for the first of these fields that is not > 0."""
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{section}.{name}", value, "a number > 0", arm=arm)


def validate_choices(cfg: RunConfig, arm: str | None = None) -> None:
    """ConfigError for the first closed-choice field (a Literal in the schema) holding another value."""
    for key, allowed in S.CHOICES.items():
        value: object = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in allowed:
            raise ConfigError(key, value, f"one of {list(allowed)}", arm=arm)


def validate_model(m: S.ModelConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid model setting (sizes, heads, model.config_json)."""
    _positive("model", m, ("hidden_dim", "n_layers", "n_heads", "text_vocab_size"), arm)
    if m.hidden_dim % m.n_heads:
        raise ConfigError(
            "model.n_heads", m.n_heads, f"a divisor of model.hidden_dim={m.hidden_dim}", arm=arm
        )
    validate_config_json(m, arm=arm)


def validate_config_json(m: S.ModelConfig, arm: str | None = None) -> None:
    """ConfigError if model.config_json is set and unusable: missing, not JSON, a required key missing, a
    value ModelArgs refuses, an architecture ablate does not implement, or a vocab_size that is not
    model.text_vocab_size."""
    if m.config_json is None:
        return
    try:
        arch = open_lm_arch(m.config_json)
    except ConfigError as e:
        raise ConfigError(e.key, e.value, e.allowed, arm=arm) from None
    if m.text_vocab_size != arch["vocab_size"]:
        # The stages that size the vocabulary (prepare, pretrain, train) read model.text_vocab_size.
        raise ConfigError(
            "model.text_vocab_size",
            m.text_vocab_size,
            f"{arch['vocab_size']}, the vocab_size of model.config_json ({m.config_json})",
            arm=arm,
            hint=f"set model.text_vocab_size={arch['vocab_size']}",
        )


def validate_data(d: S.DataConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid data setting (sizes; for real data its path and fractions)."""
    _positive("data", d, ("image_size", "n_train", "caption_tokens"), arm)
    if d.source == "synthetic":
        if d.eval_path:
            raise ConfigError(
                "data.eval_path",
                d.eval_path,
                "null with data=synthetic (the synthetic splits are the reference)",
                arm=arm,
                hint="data.eval_path is a reference set in data.source's format (webdataset or folder)",
            )
        return
    if not d.path:
        raise ConfigError(
            "data.path",
            d.path,
            "a directory of NNNNN.tar shards or a brace pattern (data=webdataset), or an image directory "
            "(data=folder)",
            arm=arm,
        )
    for key, frac in (("data.val_fraction", d.val_fraction), ("data.heldout_fraction", d.heldout_fraction)):
        if not 0 < frac < 0.5:
            raise ConfigError(key, frac, "a fraction in (0, 0.5)", arm=arm)
    if not 0 <= d.max_bad_fraction <= 1:
        raise ConfigError("data.max_bad_fraction", d.max_bad_fraction, "a fraction in [0, 1]", arm=arm)


def validate_tokenizer(tok: S.TokenizerConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid tokenizer setting (sizes, the paths text=path and image=path or
    diffusers need, a diffusers VQModel's config.json)."""
    _positive("tokenizer", tok, ("codebook_size", "downsample"), arm)
    if tok.text == "path" and not tok.text_path:
        raise ConfigError(
            "tokenizer.text_path", None, "a path to a tokenizer.json (e.g. GPT-NeoX's)", arm=arm
        )
    if tok.image in ("path", "diffusers") and not tok.image_path:
        what = (
            "a diffusers VQModel directory (config.json + weights)"
            if tok.image == "diffusers"
            else ("a directory holding a saved image tokenizer")
        )
        raise ConfigError("tokenizer.image_path", None, what, arm=arm)
    if tok.image == "diffusers" and tok.image_path and Path(tok.image_path).exists():
        # Reads config.json only: a wrong directory fails here, not in a job after the queue wait (a
        # missing one is check_assets' to report, at launch).
        check_vq_config(tok.image_path, tok.codebook_size, tok.downsample, arm=arm)


def validate_pretrain(p: S.PretrainConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid pretrain setting (sizes, warm-up, held-out text file type)."""
    _positive("pretrain", p, ("lr", "total_tokens", "batch_tokens", "heldout_max_tokens"), arm)
    if p.batch_tokens > p.total_tokens:  # else one step of batch_tokens trains more than the budget
        raise ConfigError(
            "pretrain.batch_tokens", p.batch_tokens, f"<= pretrain.total_tokens={p.total_tokens}", arm=arm
        )
    if p.warmup_tokens > p.total_tokens:
        raise ConfigError(
            "pretrain.warmup_tokens", p.warmup_tokens, f"<= pretrain.total_tokens={p.total_tokens}", arm=arm
        )
    if p.heldout_text_path and Path(p.heldout_text_path).suffix not in (".txt", ".jsonl"):
        raise ConfigError("pretrain.heldout_text_path", p.heldout_text_path, "a .txt or .jsonl file", arm=arm)


def validate_optim(o: S.OptimConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid optimizer setting (learning rate and its schedule)."""
    _positive("optim", o, ("lr",), arm)
    if not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError("optim.min_lr_ratio", o.min_lr_ratio, "a number in [0, 1]", arm=arm)
    if o.warmup_tokens < 0:
        raise ConfigError("optim.warmup_tokens", o.warmup_tokens, "a number >= 0", arm=arm)


def validate_train(tr: S.TrainConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid train setting (token budgets, micro-batch, caption dropout)."""
    names = ("total_tokens", "batch_tokens", "micro_batch_size", "checkpoint_every_tokens")
    _positive("train", tr, names, arm)
    if tr.total_tokens < tr.batch_tokens:
        raise ConfigError(
            "train.total_tokens", tr.total_tokens, f">= train.batch_tokens={tr.batch_tokens}", arm=arm
        )
    if not 0 <= tr.caption_dropout < 1:
        raise ConfigError("train.caption_dropout", tr.caption_dropout, "a fraction in [0, 1)", arm=arm)


def validate_evaluate(ev: S.EvaluateConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid evaluate setting (sample counts, sampling, the probe's interval)."""
    names = ("n_samples", "temperature", "batch_size", "slice_size", "probe_sequences", "completion_tokens")
    _positive("evaluate", ev, names, arm)
    if not 0 < ev.top_p <= 1:
        raise ConfigError("evaluate.top_p", ev.top_p, "a number in (0, 1]", arm=arm)
    if not ev.guidance_scale >= 1:
        raise ConfigError(
            "evaluate.guidance_scale", ev.guidance_scale, "a number >= 1 (1 disables guidance)", arm=arm
        )
    for key, value in (("evaluate.top_k", ev.top_k), ("evaluate.probe_every_tokens", ev.probe_every_tokens)):
        if value < 0:
            raise ConfigError(key, value, "an integer >= 0 (0 disables)", arm=arm)


def validate_cluster(c: S.ClusterConfig, arm: str | None = None) -> None:
    """ConfigError for the first invalid cluster setting (counts, limits, extra sbatch options)."""
    for key in (
        "max_concurrent",
        "threads",
        "timeout_min",
        "nodes",
        "tasks_per_node",
        "cpus_per_task",
        "array_parallelism",
    ):
        value = getattr(c, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"cluster.{key}", value, "an integer >= 1", arm=arm)
    for key in ("gpus_per_node", "signal_delay_s"):
        value = getattr(c, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"cluster.{key}", value, "an integer >= 0", arm=arm)
    mem = c.mem_gb
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int) or mem < 0):
        raise ConfigError(
            "cluster.mem_gb",
            mem,
            "null (the partition's default) or an integer >= 0 (0: all of a node)",
            arm=arm,
        )
    if not 0 < c.mfu <= 1:
        raise ConfigError("cluster.mfu", c.mfu, "a fraction in (0, 1] (e.g. 0.40 for 40% MFU)", arm=arm)
    if not c.poll_s > 0:
        raise ConfigError("cluster.poll_s", c.poll_s, "a number > 0", arm=arm)
    if c.gpus_per_node and c.tasks_per_node != c.gpus_per_node:
        raise ConfigError(
            "cluster.tasks_per_node",
            c.tasks_per_node,
            f"cluster.gpus_per_node={c.gpus_per_node} (one task per GPU)",
            arm=arm,
            hint="each task is one torch.distributed rank driving one GPU",
        )
    if c.signal_delay_s >= 60 * c.timeout_min:
        raise ConfigError(
            "cluster.signal_delay_s",
            c.signal_delay_s,
            f"< the time limit (cluster.timeout_min={c.timeout_min} minutes = {60 * c.timeout_min} s)",
            arm=arm,
        )
    check_cluster_sbatch(c, arm=arm)


# The tracking-store URI schemes MLflow opens (mlflow.tracking._tracking_service.utils); a path has none.
TRACKING_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


MAX_TRACKING_WAIT_S = 86_400  # a day: longer than any job waits on its store


def validate_tracking(t: S.TrackingConfig, arm: str | None = None) -> None:
    """ConfigError for a tracking URI MLflow cannot open and for non-positive intervals (else a traceback at
    launch, once the sweep's runs are being created)."""
    if t.uri is not None:
        scheme = t.uri.partition("://")[0].split("+")[0] if "://" in t.uri else ""
        if scheme not in TRACKING_SCHEMES or any(ch in t.uri for ch in "\n\r\0"):
            allowed = f"a path or a URI with a scheme of {', '.join(s for s in TRACKING_SCHEMES if s)}"
            raise ConfigError("tracking.uri", t.uri, allowed, arm=arm)
    # Bounded: the tracker's thread adds these to the clock, and a time past year 9999 kills it.
    if not 0 < t.flush_interval_s <= MAX_TRACKING_WAIT_S:
        raise ConfigError(
            "tracking.flush_interval_s", t.flush_interval_s, f"seconds in (0, {MAX_TRACKING_WAIT_S}]", arm=arm
        )
    if not 0 <= t.close_timeout_s <= MAX_TRACKING_WAIT_S:
        raise ConfigError(
            "tracking.close_timeout_s", t.close_timeout_s, f"seconds in [0, {MAX_TRACKING_WAIT_S}]", arm=arm
        )


def validate_sizes(cfg: RunConfig, arm: str | None = None) -> None:
    """ConfigError where sections disagree on sizes: image grid, sequence length, batches, warm-up, vocab."""
    d, tok, tr, p = cfg.data, cfg.tokenizer, cfg.train, cfg.pretrain
    if d.image_size % tok.downsample:
        raise ConfigError(
            "tokenizer.downsample", tok.downsample, f"a divisor of data.image_size={d.image_size}", arm=arm
        )
    need = min_seq_len(d.caption_tokens, image_tokens(cfg), d.task)
    if d.seq_len < need:
        what = (
            "one image" if d.task == "uncond" else f"one caption ({d.caption_tokens} tokens) plus one image"
        )
        raise ConfigError(
            "data.seq_len",
            d.seq_len,
            f">= {need}",
            arm=arm,
            hint=f"it must hold {what} ({image_tokens(cfg)} codes) and the special tokens",
        )
    for key, batch in (("train.batch_tokens", tr.batch_tokens), ("pretrain.batch_tokens", p.batch_tokens)):
        if batch < d.seq_len:
            raise ConfigError(key, batch, f">= one sequence (data.seq_len={d.seq_len} tokens)", arm=arm)
    validate_batch_over_ranks(cfg, arm=arm)
    if cfg.optim.warmup_tokens > tr.total_tokens:
        raise ConfigError(
            "optim.warmup_tokens",
            cfg.optim.warmup_tokens,
            f"<= train.total_tokens={tr.total_tokens}",
            arm=arm,
        )
    if tok.text == "bpe" and cfg.model.text_vocab_size < tok.text_vocab_size:
        raise ConfigError(
            "model.text_vocab_size",
            cfg.model.text_vocab_size,
            f">= tokenizer.text_vocab_size={tok.text_vocab_size}",
            arm=arm,
        )


def validate_batch_over_ranks(cfg: RunConfig, arm: str | None = None) -> None:
    """ConfigError if a training stage's batch has fewer sequences than the cluster has ranks.

    The global batch is batch_tokens / seq_len sequences whatever the ranks (ablate.train.schedule.plan_batch);
    every rank needs at least one of them.
    """
    world, seq_len = cfg.cluster.training_world_size(), cfg.data.seq_len
    if world == 1:
        return
    batches = [("train.batch_tokens", cfg.train.batch_tokens)]
    if cfg.model.needs_pretrain():  # the demo's pretrain stage runs too
        batches.append(("pretrain.batch_tokens", cfg.pretrain.batch_tokens))
    for key, tokens in batches:
        sequences = sequences_per_step(tokens, seq_len)
        if sequences < world:
            raise ConfigError(
                key,
                tokens,
                f">= {world * seq_len} (one sequence of data.seq_len={seq_len} tokens for each of the "
                f"{world} ranks)",
                arm=arm,
                hint=f"it gives {sequences} sequence(s) per step for {world} ranks "
                f"(cluster.nodes={cfg.cluster.nodes} x cluster.tasks_per_node={cfg.cluster.tasks_per_node}); "
                f"raise {key} to at least {world * seq_len} or use fewer ranks",
            )


def validate_combinations(cfg: RunConfig, arm: str | None = None) -> None:
    """ConfigError for settings that are valid alone but not together (data, tokenizer, init, guidance)."""
    m, d, tok = cfg.model, cfg.data, cfg.tokenizer
    if d.source != "synthetic" and tok.image == "vqvae":
        raise ConfigError(
            "tokenizer.image",
            tok.image,
            "path or diffusers with real data (data.source=" + d.source + ")",
            arm=arm,
            hint="the demo VQ-VAE trains on the synthetic scenes; give a trained tokenizer, e.g. "
            "tokenizer.image=diffusers tokenizer.image_path=<MoVQGAN as a diffusers VQModel directory>",
        )
    ev = cfg.evaluate
    if ev.guidance_scale != 1 and d.task == "t2i" and cfg.train.caption_dropout == 0:
        raise ConfigError(
            "evaluate.guidance_scale",
            ev.guidance_scale,
            "1 for a model trained with every caption (train.caption_dropout=0)",
            arm=arm,
            hint="guidance needs the model's image distribution without a caption: set train.caption_dropout "
            "(e.g. 0.1) too, or evaluate.guidance_scale=1",
        )
    if m.image_init == "contrastive":
        if m.init != "pretrained":
            raise ConfigError(
                "model.image_init",
                m.image_init,
                "random or mean when model.init=random",
                arm=arm,
                hint="contrastive alignment maps image codes onto a pretrained LM's text embeddings",
            )
        if d.task != "t2i":
            raise ConfigError(
                "model.image_init", m.image_init, "random or mean when data.task=uncond", arm=arm
            )
    if m.init == "pretrained" and cfg.scale == "paper" and not m.checkpoint:
        raise ConfigError(
            "model.checkpoint",
            None,
            "a path to an open_lm checkpoint (epoch_N.pt)",
            arm=arm,
            hint="model.init=pretrained at scale=paper starts from the released open_lm-1b weights",
        )


def check_assets(cfg: RunConfig, arm: str | None = None) -> None:
    """Raise the first error about a file the arm needs that is missing (data, tokenizers, checkpoint,
    held-out text): `ablate launch` calls it before submitting anything; a dry run only reports it, so
    a paper-scale arm can be looked at on a machine without its assets."""
    d, tok, m, p = cfg.data, cfg.tokenizer, cfg.model, cfg.pretrain
    if d.source == "webdataset":  # the shards exist (DataError naming what is missing otherwise)
        expand_shards(str(d.path))
    elif d.source == "folder" and not Path(str(d.path)).is_dir():
        raise ConfigError("data.path", d.path, "an existing directory of images (data=folder)", arm=arm)
    if d.eval_path and d.source == "webdataset":
        expand_shards(str(d.eval_path), key="data.eval_path")
    elif d.eval_path and not Path(str(d.eval_path)).is_dir():
        raise ConfigError(
            "data.eval_path", d.eval_path, "an existing directory of images (data=folder)", arm=arm
        )
    if tok.image == "diffusers":
        check_vq_config(tok.image_path, tok.codebook_size, tok.downsample, arm=arm)
    elif tok.image == "path" and not Path(str(tok.image_path)).is_dir():
        raise ConfigError(
            "tokenizer.image_path", tok.image_path, "an existing image tokenizer directory", arm=arm
        )
    if tok.text == "path" and not Path(str(tok.text_path)).is_file():
        raise ConfigError(
            "tokenizer.text_path", tok.text_path, "an existing tokenizer.json (e.g. GPT-NeoX's)", arm=arm
        )
    if m.init == "pretrained" and m.checkpoint and not Path(m.checkpoint).is_file():
        raise ConfigError(
            "model.checkpoint",
            m.checkpoint,
            "an existing open_lm checkpoint file (epoch_N.pt)",
            arm=arm,
            hint="the released open_lm-1b weights, downloaded once (nothing is fetched at run time)",
        )
    fid = cfg.evaluate.fid_weights
    if fid and d.source != "synthetic" and d.eval_path and not Path(fid).is_file():
        from ablate.evaluate.fid import FID_WEIGHTS_FILE, FID_WEIGHTS_URL  # here: it imports torch

        raise ConfigError(
            "evaluate.fid_weights",
            fid,
            f"an existing {FID_WEIGHTS_FILE} (torch-fidelity's InceptionV3 weights)",
            arm=arm,
            hint=f"downloaded once from {FID_WEIGHTS_URL}; or unset it for no FID",
        )
    if p.heldout_text_path and not Path(p.heldout_text_path).is_file():
        raise ConfigError(
            "pretrain.heldout_text_path",
            p.heldout_text_path,
            "an existing .txt or .jsonl file of held-out text",
            arm=arm,
            hint="e.g. a slice of the Pile's validation set; the forgetting probe tokenizes it",
        )
