"""The stages an arm needs, each keyed by the config it reads and the keys of its inputs (the registry's
records say which). Two arms that read the same config for a stage get the same key and share its output
directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablate.cache import stage_dir
from ablate.config.compose import stable_hash
from ablate.rundir import RunDir
from ablate.schema import RunConfig
from ablate.stages import registry
from ablate.stages.stage import Stage


@dataclass
class StageSpec:
    """One stage of one arm: its name, key, and the keys of the stages it reads."""

    name: str
    key: str
    deps: dict[str, str] = field(default_factory=dict)
    units: tuple[str, ...] = ()
    """The stage's units of work (Stage.units), each a job of its own; () for a one-job stage."""

    def dir(self, results: Path) -> Path:
        return stage_dir(results, self.name, self.key)

    def done(self, results: Path) -> bool:
        return RunDir(self.dir(results)).is_complete()


def stage_key(stage: Stage, cfg: RunConfig, deps: dict[str, str]) -> str:
    """Hash of the stage's name, version, config slice and its inputs' keys."""
    return stable_hash(
        {"stage": stage.name, "version": stage.version, "config": stage.config(cfg), "deps": deps}
    )


def plan_stages(cfg: RunConfig) -> list[StageSpec]:
    """The stages of one arm in run order; an input an arm does not need (pretrain, align) is left out."""
    keys: dict[str, str] = {}
    specs: list[StageSpec] = []
    for stage in registry.STAGES:
        if not stage.applies(cfg):
            continue
        deps = {name: keys[name] for name in stage.inputs if name in keys}
        keys[stage.name] = stage_key(stage, cfg, deps)
        units = stage.units(cfg) if stage.units is not None else ()
        specs.append(StageSpec(stage.name, keys[stage.name], deps, tuple(units)))
    return specs
