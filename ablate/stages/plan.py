r"""Stages an arm needs, each keyed by the config it reads and the keys of its inputs.

    synth ----------> image_tokenizer --> prepare ---------------> train --> evaluate
    text_tokenizer --------------------/       \                  /  /
                  \--> pretrain (init=pretrained, demo) ---------/  /
                                                  \--> align ------/  (image_init=contrastive)

Two arms that read the same config for a stage get the same key and share its output directory.
Bump a stage's VERSION when its code changes what it writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ablate.cache import is_complete, stage_dir
from ablate.config.compose import stable_hash
from ablate.config.schema import EXECUTION_SECTIONS, RunConfig

STAGE_ORDER = (
    "synth",
    "text_tokenizer",
    "image_tokenizer",
    "prepare",
    "pretrain",
    "align",
    "train",
    "evaluate",
)
VERSION = {
    "synth": 1,
    "text_tokenizer": 1,
    "image_tokenizer": 1,
    "prepare": 1,
    "pretrain": 1,
    "align": 1,
    "train": 2,
    "evaluate": 2,
}
# evaluate.* fields that change what `train` computes (the probe runs inside training); the others
# (sampling) are read by `evaluate` only, so changing them re-evaluates without retraining.
PROBE_FIELDS = ("probe_every_tokens", "probe_sequences", "completion_tokens")
# Model fields that define the architecture (what a pretrained checkpoint must match).
ARCH_FIELDS = (
    "hidden_dim",
    "n_layers",
    "n_heads",
    "text_vocab_size",
    "post_embed_norm",
    "weight_tying",
    "model_norm",
    "ffn_type",
    "qk_norm",
    "positional_embedding_type",
)


@dataclass
class StageSpec:
    """One stage of one arm: its name, key, and the keys of the stages it reads."""

    name: str
    key: str
    deps: dict[str, str] = field(default_factory=dict)

    def dir(self, results: Path) -> Path:
        return stage_dir(results, self.name, self.key)

    def done(self, results: Path) -> bool:
        return is_complete(self.dir(results))


def _key(stage: str, config: dict, deps: dict[str, str]) -> str:
    return stable_hash({"stage": stage, "version": VERSION[stage], "config": config, "deps": deps})


def needs_pretrain(cfg: RunConfig) -> bool:
    """The demo's pretrained LM is trained here; at paper scale it is model.checkpoint."""
    return cfg.model.init == "pretrained" and not cfg.model.checkpoint


def train_config(cfg: RunConfig) -> dict:
    """What the `train` stage reads: the run config minus execution settings, alignment and sampling."""
    full = asdict(cfg)
    # pretrain, align: their outputs are inputs (deps), so their settings reach the key through deps.
    out = {k: v for k, v in full.items() if k not in (*EXECUTION_SECTIONS, "pretrain", "align", "evaluate")}
    out["evaluate"] = {k: full["evaluate"][k] for k in PROBE_FIELDS}
    return out


def plan_stages(cfg: RunConfig) -> list[StageSpec]:
    """The stages of one arm in dependency order."""
    d, tok, m, p = asdict(cfg.data), asdict(cfg.tokenizer), asdict(cfg.model), asdict(cfg.pretrain)
    stages: list[StageSpec] = []
    synth_cfg = {
        k: d[k] for k in ("source", "image_size", "max_shapes", "n_train", "n_val", "n_heldout", "seed")
    }
    synth = StageSpec("synth", _key("synth", synth_cfg, {}))
    stages.append(synth)

    text_cfg = {k: tok[k] for k in ("text", "text_path", "text_vocab_size")}
    text_cfg.update(corpus_max_chars=p["corpus_max_chars"], heldout_fraction=p["heldout_fraction"])
    text_tok = StageSpec("text_tokenizer", _key("text_tokenizer", text_cfg, {}))
    stages.append(text_tok)

    img_deps = {"synth": synth.key}
    img_cfg = {k: v for k, v in tok.items() if k not in text_cfg}
    image_tok = StageSpec("image_tokenizer", _key("image_tokenizer", img_cfg, img_deps), img_deps)
    stages.append(image_tok)

    prep_deps = {"synth": synth.key, "image_tokenizer": image_tok.key, "text_tokenizer": text_tok.key}
    prep_cfg = {
        "task": d["task"],
        "seq_len": d["seq_len"],
        "caption_tokens": d["caption_tokens"],
        "text_vocab_size": m["text_vocab_size"],
    }
    prepare = StageSpec("prepare", _key("prepare", prep_cfg, prep_deps), prep_deps)
    stages.append(prepare)

    train_deps = {"prepare": prepare.key, "image_tokenizer": image_tok.key, "text_tokenizer": text_tok.key}
    if needs_pretrain(cfg):
        pre_deps = {"text_tokenizer": text_tok.key}
        pre_cfg = {
            "arch": {k: m[k] for k in ARCH_FIELDS},
            "pretrain": p,
            "seq_len": d["seq_len"],
            "optim": {k: v for k, v in asdict(cfg.optim).items() if k not in ("lr", "warmup_tokens")},
            "micro_batch_size": cfg.train.micro_batch_size,
        }
        pretrain = StageSpec("pretrain", _key("pretrain", pre_cfg, pre_deps), pre_deps)
        stages.append(pretrain)
        train_deps["pretrain"] = pretrain.key
    if m["image_init"] == "contrastive":
        align_deps = {k: train_deps[k] for k in ("prepare", "text_tokenizer", "pretrain") if k in train_deps}
        align_cfg = {"align": asdict(cfg.align), "checkpoint": m["checkpoint"]}
        align = StageSpec("align", _key("align", align_cfg, align_deps), align_deps)
        stages.append(align)
        train_deps["align"] = align.key
    train = StageSpec("train", _key("train", train_config(cfg), train_deps), train_deps)
    stages.append(train)
    eval_deps = {
        "train": train.key,
        "prepare": prepare.key,
        "image_tokenizer": image_tok.key,
        "synth": synth.key,
    }
    eval_cfg = {k: v for k, v in asdict(cfg.evaluate).items() if k not in PROBE_FIELDS}
    eval_cfg.update(task=d["task"], seq_len=d["seq_len"])
    stages.append(StageSpec("evaluate", _key("evaluate", eval_cfg, eval_deps), eval_deps))
    return stages
