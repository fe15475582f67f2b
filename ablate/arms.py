"""Arms: a sweep's override lists composed into validated configs, identified by their run key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ablate.config.compose import compose_arm, flatten, run_key
from ablate.config.schema import EXECUTION_SECTIONS, ClusterConfig, RunConfig, TrackingConfig
from ablate.config.validate import validate
from ablate.errors import ConfigError
from ablate.sweep import Sweep


@dataclass
class ResolvedArm:
    """An arm with its composed, validated config and its identity."""

    label: str
    overrides: list[str]
    cfg: dict[str, Any]
    """The resolved config as plain nested dicts."""
    config: RunConfig
    key: str
    sweeps: tuple[str, ...] = ()
    """Every sweep this arm belongs to (an arm given twice, e.g. by two included files, keeps both)."""
    assignments: dict[str, str] = field(default_factory=dict)
    """The arm's own keys (its grid point or `arms` entry), without the sweep's base and command line."""


def resolve_arms(sweep: Sweep) -> list[ResolvedArm]:
    """Compose and validate every arm; arms with the same resolved config collapse into one."""
    out: dict[str, ResolvedArm] = {}
    first: tuple[str, RunConfig] | None = None
    for arm in sweep.arms:
        cfg, config = compose_arm(arm.overrides, arm=arm.label)
        validate(config, arm=arm.label)
        # Before arms collapse: two arms that differ only in execution settings have one run key.
        first = first or (arm.label, config)
        _check_same_execution(first, (arm.label, config))
        key = run_key(cfg)
        if key not in out:
            out[key] = ResolvedArm(
                arm.label, arm.overrides, cfg, config, key, arm.sweeps, dict(arm.assignments)
            )
        else:
            seen = out[key]
            seen.sweeps = seen.sweeps + tuple(s for s in arm.sweeps if s not in seen.sweeps)
    return list(out.values())


def execution_settings(arms: list[ResolvedArm]) -> tuple[ClusterConfig, TrackingConfig]:
    """The sweep's cluster and tracking settings, which every arm shares (resolve_arms checks it): a sweep
    is launched once, on one cluster, into one store."""
    for arm in arms[1:]:
        _check_same_execution((arms[0].label, arms[0].config), (arm.label, arm.config))
    return arms[0].config.cluster, arms[0].config.tracking


def _check_same_execution(first: tuple[str, RunConfig], other: tuple[str, RunConfig]) -> None:
    """ConfigError naming the keys and arms where two arms' cluster or tracking settings differ."""
    if all(getattr(first[1], s) == getattr(other[1], s) for s in EXECUTION_SECTIONS):
        return
    for section in EXECUTION_SECTIONS:
        want = flatten(asdict(getattr(first[1], section)), section + ".")
        have = flatten(asdict(getattr(other[1], section)), section + ".")
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        if differ:
            key = differ[0]
            raise ConfigError(
                key,
                have.get(key),
                f"the same value in every arm ({want.get(key)!r} in arm '{first[0]}')",
                arm=other[0],
                hint=f"{section} settings are the sweep's, not an arm's (they differ in {', '.join(differ)}); "
                "set them in the sweep's base or on the command line, not in the grid or arms",
            )
