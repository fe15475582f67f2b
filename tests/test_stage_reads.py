"""Every config field a stage's code reads is covered by its key, so a changed field never reuses stale cache.

Each stage of the registry runs (at tiny sizes) on a config that records every field read. A field is
covered when changing it changes the stage's key: through the stage's own config slice or through the key
of one of its inputs (the slice a key hashes is a free-form function, so coverage is measured by
perturbing fields, not by comparing names).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import realdata
from scales import tiny

from ablate.config.compose import compose_config, stable_hash, to_run_config
from ablate.config.validate import validate
from ablate.data.shards import ShardDataset
from ablate.rundir import RunDir
from ablate.schema import UNKEYED_FIELDS, RunConfig
from ablate.stages import names, registry
from ablate.stages.context import StageContext
from ablate.stages.plan import plan_stages
from ablate.stages.stage import Stage
from ablate.tracking import NullTracker

TINY = tiny(
    "data.n_train=128",
    "data.n_val=32",
    "data.n_heldout=32",
    "tokenizer.vq_steps=10",
    "tokenizer.vq_hidden=16",
    "tokenizer.text_vocab_size=300",
    "model.text_vocab_size=300",
    "pretrain.corpus_max_chars=40000",
    "pretrain.total_tokens=2304",
    "pretrain.batch_tokens=1152",
    "pretrain.warmup_tokens=0",
    "train.total_tokens=2304",
    "train.batch_tokens=1152",
    "train.checkpoint_every_tokens=1152",
    "optim.warmup_tokens=0",
    "model.hidden_dim=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "align.steps=3",
    "align.batch_size=16",
    "evaluate.n_samples=2",
    "evaluate.grid_images=2",
    "evaluate.probe_every_tokens=1152",
    "evaluate.probe_sequences=2",
    "evaluate.completion_tokens=2",
    # Every stage runs: the demo pretrain (init=pretrained, no checkpoint) and align (contrastive).
    "model.init=pretrained",
    "model.image_init=contrastive",
)


def recording(obj: Any, reads: set[str], prefix: str = "") -> Any:
    """A copy of the dataclass `obj` (and its nested dataclasses) that adds the dotted path of every
    non-dataclass field read to `reads`; an instance of a subclass, so isinstance and asdict still work."""
    cls = type(obj)
    fields = {f.name for f in dataclasses.fields(obj)}

    def getattribute(self: Any, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in fields and not dataclasses.is_dataclass(value):
            reads.add(prefix + name)
        return value

    sub = type(f"Recording{cls.__name__}", (cls,), {"__getattribute__": getattribute})
    copy_ = object.__new__(sub)
    for name in fields:
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            value = recording(value, reads, f"{prefix}{name}.")
        object.__setattr__(copy_, name, copy.deepcopy(value))
    return copy_


def leaf_paths(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every non-dataclass field of a (nested) dataclass."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += leaf_paths(value, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _changed(value: Any) -> Any:
    """A different value of the same kind (a key hashes values, never validates them)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "_changed"
    if isinstance(value, list):
        return [*value, "changed"]
    if isinstance(value, dict):
        return {**value, "changed": "1"}
    if value is None:
        return "changed"
    raise TypeError(f"no perturbation for {value!r}")


def perturbed(cfg: RunConfig, path: str) -> RunConfig:
    """A copy of cfg with the field at `path` changed."""
    out = copy.deepcopy(cfg)
    *sections, name = path.split(".")
    node: Any = out
    for s in sections:
        node = getattr(node, s)
    setattr(node, name, _changed(getattr(node, name)))
    return out


def covered_fields(stage: str, cfg: RunConfig) -> set[str]:
    """The fields whose change changes the stage's key: those its own config slice hashes, and those of
    the stages whose keys its key holds (its planned inputs, recursively)."""
    plan = {s.name: s for s in plan_stages(cfg)}
    record = registry.get(stage)
    base = stable_hash(record.config(cfg))
    covered = {p for p in leaf_paths(cfg) if stable_hash(record.config(perturbed(cfg, p))) != base}
    for dep in plan[stage].deps:
        covered |= covered_fields(dep, cfg)
    return covered


def uncovered_reads(stage: Stage, cfg: RunConfig, ctx_for: Any) -> set[str]:
    """Run the stage on a recording copy of cfg; the fields it read that its key does not cover."""
    reads: set[str] = set()
    stage.run(ctx_for(recording(cfg, reads)))
    return reads - covered_fields(stage.name, cfg)


@pytest.fixture(scope="module")
def tiny() -> RunConfig:
    return to_run_config(compose_config(TINY))


def _context(tmp: Path, stage: str, cfg: RunConfig, plan: dict[str, Any]) -> StageContext:
    spec = plan[stage]
    out = tmp / stage
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(
        stage=stage,
        cfg=cfg,
        out_dir=out,
        inputs={name: tmp / name for name in spec.deps},
        tracker=NullTracker(),
    )


def _run_every_planned_stage(cfg: RunConfig, tmp: Path) -> dict[str, set[str]]:
    """Run the arm's stages in order on recording configs; the fields each read that its key misses."""
    plan = {s.name: s for s in plan_stages(cfg)}
    missing: dict[str, set[str]] = {}
    reads_of: dict[str, set[str]] = {}
    for name in plan:
        reads: set[str] = set()
        stage = registry.get(name)
        for unit in plan[name].units:  # a stage split into units: each unit's job, then the stage's own
            assert stage.run_unit is not None
            ctx = _context(tmp, name, recording(cfg, reads), plan)
            ctx.out_dir, ctx.unit = RunDir(ctx.out_dir).unit(unit).path, unit
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            stage.run_unit(ctx)
            RunDir(ctx.out_dir).mark_complete()  # as the runner does after a unit
        stage.run(_context(tmp, name, recording(cfg, reads), plan))
        reads_of[name] = reads
        # UNKEYED_FIELDS say how a stage computes, not what (precision, compile, recomputation): exempt.
        if reads - covered_fields(name, cfg) - set(UNKEYED_FIELDS):
            missing[name] = reads - covered_fields(name, cfg) - set(UNKEYED_FIELDS)
    assert not missing, f"stages read fields their keys do not cover: {missing}"
    return reads_of


def test_every_stage_reads_only_fields_its_key_covers(tiny: RunConfig, tmp_path: Path) -> None:
    # The demo arm: its own pretrained LM (pretrain) and contrastive image rows (align).
    demo = _run_every_planned_stage(tiny, tmp_path / "demo")
    # A given checkpoint (the demo's LM stands in for open_lm-1b) with held-out text from a file.
    text = tmp_path / "heldout.txt"
    text.write_text(
        "\n\n".join(f"Document {i} says that the sky is blue and water is wet." for i in range(60))
    )
    paper_like = dataclasses.replace(
        tiny,
        model=dataclasses.replace(
            tiny.model, checkpoint=str(tmp_path / "demo" / names.PRETRAIN / "model.pt")
        ),
        pretrain=dataclasses.replace(tiny.pretrain, heldout_text_path=str(text)),
    )
    given = _run_every_planned_stage(paper_like, tmp_path / "given")
    # eval_set reads a reference set of real data: the real-data test below runs it.
    assert set(demo) | set(given) | {names.EVAL_SET} == set(registry.STAGE_ORDER), "some stage was never run"
    assert names.PRETRAIN not in given and names.HELDOUT_TEXT in given
    # The recorder saw real reads (a recorder that records nothing would pass the checks above).
    assert {"data.n_train", "data.seed"} <= demo[names.SYNTH]
    assert {"optim.beta2", "evaluate.prompts", "train.trainable"} <= demo[names.TRAIN]
    assert "align.steps" in demo[names.ALIGN]
    assert set(UNKEYED_FIELDS) <= demo[names.TRAIN]  # the exemption is for fields that are really read
    assert not set(UNKEYED_FIELDS) & covered_fields(names.TRAIN, tiny)  # and no key hashes them
    assert "pretrain.heldout_text_path" in given[names.HELDOUT_TEXT]
    # With the checkpoint, the probe measured forgetting on the file's text.
    assert (tmp_path / "given" / names.TRAIN / "completions.jsonl").is_file()


def test_every_stage_on_real_data_reads_only_fields_its_key_covers(tmp_path: Path) -> None:
    # data.eval_path: a reference set (MS-COCO at paper scale) in the same format, prompts of evaluate.
    reference = realdata.write_webdataset(tmp_path / "eval", shards=1, per_shard=6, seed=3, planted=False)[0]
    overrides = [
        *TINY,
        *realdata.overrides(tmp_path / "assets"),
        f"data.eval_path={reference}",
        "evaluate.slice_size=1",  # the evaluate array: one prompt per slice, assembled by the stage's job
    ]
    real = to_run_config(compose_config(overrides))
    validate(real)
    plan = plan_stages(real)
    prepare = next(s for s in plan if s.name == names.PREPARE)
    assert names.SYNTH not in {s.name for s in plan} and prepare.units == ("00000", "00001", "00002")
    reads = _run_every_planned_stage(real, tmp_path / "real")
    assert {"data.path", "data.val_fraction", "data.min_image_side"} <= reads[names.PREPARE]
    counts = json.loads((tmp_path / "real" / names.PREPARE / "units" / "00000" / "unit.json").read_text())
    skipped = {k[len("skipped_") :]: v for k, v in counts["skips"].items() if k.startswith("skipped_") and v}
    assert skipped == realdata.PLANTED_BAD
    # The combined dataset reads across the units: every kept sample is in exactly one split.
    total = sum(
        ShardDataset(tmp_path / "real" / names.PREPARE / split).__len__()
        for split in ("train", "val", "heldout")
    )
    assert total == 3 * 40 + 2  # the planted grayscale and CMYK images are usable
    assert "data.eval_path" in reads[names.EVAL_SET] and "evaluate.slice_size" in reads[names.EVALUATE]
    evaluate = next(s for s in plan if s.name == names.EVALUATE)
    assert real.evaluate.n_samples == 2 and evaluate.units == ("s0000", "s0001")
    samples = np.load(tmp_path / "real" / names.EVALUATE / "samples.npz")
    assert samples["codes"].shape[0] == 2  # both slices' samples, assembled
    assert samples["grid_images"].shape[1:] == (realdata.IMAGE_SIZE, realdata.IMAGE_SIZE, 3)


def test_a_planted_read_outside_the_key_is_caught(tiny: RunConfig, tmp_path: Path) -> None:
    plan = {s.name: s for s in plan_stages(tiny)}
    synth = registry.get(names.SYNTH)

    def planted(ctx: StageContext) -> None:
        synth.run(ctx)
        _ = ctx.cfg.evaluate.temperature  # sampling temperature: nothing synth's key hashes

    stage = dataclasses.replace(synth, run=planted)
    assert uncovered_reads(stage, tiny, lambda c: _context(tmp_path, names.SYNTH, c, plan)) == {
        "evaluate.temperature"
    }
    assert uncovered_reads(synth, tiny, lambda c: _context(tmp_path, names.SYNTH, c, plan)) == set()


def test_coverage_counts_fields_reaching_the_key_through_inputs(tiny: RunConfig) -> None:
    covered = covered_fields(names.IMAGE_TOKENIZER, tiny)
    assert "tokenizer.vq_steps" in covered  # its own slice
    assert "data.seed" in covered  # through synth's key, which it reads the images of
    assert "cluster.threads" not in covered and "evaluate.temperature" not in covered
