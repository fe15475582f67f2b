"""Arms: a sweep's override lists composed into validated configs, identified by their run key."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from ablate.config.compose import compose_config, run_key, to_run_config
from ablate.config.schema import RunConfig
from ablate.config.validate import validate
from ablate.sweep import Sweep


@dataclass
class ResolvedArm:
    """An arm with its composed, validated config and its identity."""

    label: str
    overrides: list[str]
    cfg: DictConfig
    config: RunConfig
    key: str
    sweeps: tuple[str, ...] = ()
    """Every sweep this arm belongs to (an arm given twice, e.g. by two included files, keeps both)."""


def resolve_arms(sweep: Sweep) -> list[ResolvedArm]:
    """Compose and validate every arm; arms with the same resolved config collapse into one."""
    out: dict[str, ResolvedArm] = {}
    for arm in sweep.arms:
        cfg = compose_config(arm.overrides, arm=arm.label)
        config = to_run_config(cfg)
        validate(config, arm=arm.label)
        key = run_key(cfg)
        if key not in out:
            out[key] = ResolvedArm(arm.label, arm.overrides, cfg, config, key, arm.sweeps)
        else:
            seen = out[key]
            seen.sweeps = seen.sweeps + tuple(s for s in arm.sweeps if s not in seen.sweeps)
    return list(out.values())
