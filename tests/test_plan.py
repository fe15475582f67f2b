"""Stage planning: which stages an arm needs, in which order, and what changes their keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scales import tiny

from ablate.config.compose import compose_config, to_run_config
from ablate.config.validate import validate
from ablate.data.sequence import VocabLayout
from ablate.errors import CheckpointError, ConfigError
from ablate.model.transformer import Transformer
from ablate.stages.common import model_args
from ablate.stages.context import StageContext
from ablate.stages.plan import plan_stages
from ablate.stages.registry import STAGE_ORDER
from ablate.stages.train import build_model
from ablate.tracking import NullTracker
from ablate.train.checkpoint import save_checkpoint


def cfg(*overrides: str):
    c = to_run_config(compose_config(list(overrides)))
    validate(c)
    return c


def stages(*overrides: str) -> dict[str, str]:
    return {s.name: s.key for s in plan_stages(cfg(*overrides))}


def test_stage_order_and_dependencies():
    plan = plan_stages(cfg("model.init=pretrained", "model.image_init=contrastive"))
    names = [s.name for s in plan]
    assert names == [
        "synth",
        "text_tokenizer",
        "image_tokenizer",
        "prepare",
        "pretrain",
        "align",
        "train",
        "evaluate",
    ]
    assert names == [n for n in STAGE_ORDER if n in names]
    by = {s.name: s for s in plan}
    assert by["align"].deps == {
        "prepare": by["prepare"].key,
        "text_tokenizer": by["text_tokenizer"].key,
        "pretrain": by["pretrain"].key,
    }
    assert by["train"].deps["align"] == by["align"].key
    assert by["evaluate"].deps["train"] == by["train"].key
    # Every dependency comes earlier in the plan.
    for i, s in enumerate(plan):
        assert set(s.deps) <= set(names[:i])


def test_only_contrastive_arms_align_and_only_pretrained_ones_pretrain():
    assert "align" not in stages("model.init=pretrained")
    assert "pretrain" not in stages("model.init=random") and "align" not in stages("model.init=random")
    assert "pretrain" not in stages("model.init=pretrained", "model.checkpoint=/ckpt/epoch_1.pt")


def test_sampling_settings_re_evaluate_without_retraining():
    base = stages()
    hotter = stages("evaluate.temperature=0.7", "evaluate.top_k=20")
    assert hotter["train"] == base["train"] and hotter["evaluate"] != base["evaluate"]
    # The text probe runs inside training, so its interval is part of the train stage.
    probe = stages("evaluate.probe_every_tokens=50000")
    assert probe["train"] != base["train"] and probe["evaluate"] != base["evaluate"]
    # Execution settings never change a key; alignment settings only matter to contrastive arms.
    assert stages("cluster=debug", "align.steps=7") == base
    c = ("model.image_init=contrastive",)
    assert stages(*c, "align.steps=7")["align"] != stages(*c)["align"]
    assert stages(*c, "align.steps=7")["train"] != stages(*c)["train"]


def test_caption_dropout_and_guidance_key_only_the_arms_they_change():
    """At their paper defaults (no dropout, no guidance) they are left out of the keys, so runs made before
    they existed keep theirs; set (the demo sets both), they change the text-to-image arm's train
    (dropout) or evaluate (guidance) key, and no unconditional arm's."""
    from ablate.stages import evaluate, train

    off = ("train.caption_dropout=0", "evaluate.guidance_scale=1")
    assert "caption_dropout" not in train.config(cfg(*off))["train"]
    assert "guidance_scale" not in evaluate.config(cfg(*off))
    base = stages(*off)
    dropout = stages("train.caption_dropout=0.1", "evaluate.guidance_scale=1")
    guided = stages("train.caption_dropout=0.1", "evaluate.guidance_scale=3")
    assert dropout["train"] != base["train"] and dropout["prepare"] == base["prepare"]
    assert guided["train"] == dropout["train"] and guided["evaluate"] != dropout["evaluate"]
    uncond = ("data.task=uncond",)
    assert stages(*uncond, "train.caption_dropout=0.1", "evaluate.guidance_scale=3") == stages(*uncond, *off)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.init=random", "model.image_init=contrastive"], "model.init=random"),
        (["data.task=uncond", "model.image_init=contrastive"], "data.task=uncond"),
        (["evaluate.top_p=0"], "evaluate.top_p"),
        (["evaluate.temperature=0"], "evaluate.temperature"),
        (["align.batch_size=0"], "align.batch_size"),
        (["train.caption_dropout=1.0"], "train.caption_dropout"),
        (["train.caption_dropout=0.1", "evaluate.guidance_scale=0.5"], "evaluate.guidance_scale"),
        (["train.caption_dropout=0", "evaluate.guidance_scale=3"], "train.caption_dropout"),  # no dropout
    ],
)
def test_invalid_evaluate_and_align_settings_are_config_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        cfg(*overrides)


TINY = tiny(
    "model.hidden_dim=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.text_vocab_size=64",
    "tokenizer.text_vocab_size=64",
)


def _ctx(tmp_path: Path, *overrides: str) -> tuple[StageContext, VocabLayout]:
    c = cfg(*TINY, *overrides)
    layout = VocabLayout(text_vocab_size=64, codebook_size=c.tokenizer.codebook_size)
    lm = Transformer(model_args(c, 64))
    save_checkpoint(tmp_path / "pretrain" / "model.pt", {"state_dict": lm.state_dict()})
    ctx = StageContext(
        stage="train",
        cfg=c,
        out_dir=tmp_path / "train",
        inputs={"pretrain": tmp_path / "pretrain", "align": tmp_path / "align"},
        tracker=NullTracker(),
        labels=["test"],
        should_stop=lambda: False,
    )
    return ctx, layout


def test_contrastive_init_copies_the_aligned_image_rows(tmp_path):
    ctx, layout = _ctx(tmp_path, "model.image_init=contrastive")
    table = torch.randn(layout.codebook_size, 16)
    save_checkpoint(tmp_path / "align" / "image_embeddings.pt", {"image_embeddings": table})
    model = build_model(ctx, layout)
    emb = model.tok_embeddings.weight.detach()  # (V, D)
    assert emb.shape[0] == layout.size
    assert torch.equal(emb[layout.image_offset :], table)
    # The text rows are the language model's, untouched.
    lm = torch.load(tmp_path / "pretrain" / "model.pt", weights_only=True)["state_dict"]
    assert torch.equal(emb[:64], lm["tok_embeddings.weight"])
    # The random-image-row arm from the same LM differs exactly in those rows.
    ctx_random, _ = _ctx(tmp_path / "r", "model.image_init=random")
    other = build_model(ctx_random, layout).tok_embeddings.weight.detach()
    assert not torch.equal(other[layout.image_offset :], table)


def test_contrastive_init_rejects_embeddings_of_another_shape(tmp_path):
    ctx, layout = _ctx(tmp_path, "model.image_init=contrastive")
    save_checkpoint(
        tmp_path / "align" / "image_embeddings.pt", {"image_embeddings": torch.zeros(layout.codebook_size, 8)}
    )
    with pytest.raises(CheckpointError, match="relaunch"):
        build_model(ctx, layout)


def test_the_registry_holds_every_stage_module_once_with_its_inputs_before_it():
    from ablate.stages import names, registry

    folder = Path(registry.__file__).parent
    modules = sorted(p.stem for p in folder.glob("*.py") if "\nSTAGE = Stage(" in p.read_text())
    assert sorted(registry.STAGE_ORDER) == modules  # a stage module left out of the registry fails here
    assert set(registry.STAGE_ORDER) == {
        v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)
    }
    assert set(names.ARM_STAGES) <= set(registry.STAGE_ORDER)
    for i, stage in enumerate(registry.STAGES):
        assert set(stage.inputs) <= set(registry.STAGE_ORDER[:i]), stage.name
    with pytest.raises(Exception, match="unknown stage 'nope'"):
        registry.get("nope")


def test_a_stage_logs_the_params_its_record_names():
    from ablate.stages import registry

    align = registry.get("align")
    assert align.logs_param("align.steps") and align.logs_param("model.checkpoint")
    assert not align.logs_param("model.init") and not align.logs_param("data.seq_len")
    assert not align.logs_param("alignment.x")  # a section is matched whole, not by prefix
    assert registry.get("train").logs_param("evaluate.temperature")  # train logs the whole config
    parallel = {s.name for s in registry.STAGES if s.data_parallel}
    assert parallel == {s.name for s in registry.STAGES if s.checkpoints} == {"pretrain", "train"}
