"""Arms: a sweep's override lists composed into validated configs, identified by their run key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ablate.config.compose import compose_arm, flatten, run_key
from ablate.config.keys import UnknownKeyError
from ablate.config.validate import validate
from ablate.errors import AblateError, ConfigError, SweepError
from ablate.schema import EXECUTION_SECTIONS, ClusterConfig, RunConfig, TrackingConfig
from ablate.sweep import Sweep
from ablate.sweep_yaml import read_yaml


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


def resolve_arms(sweep: Sweep, command_line: Sequence[str] = ()) -> list[ResolvedArm]:
    """Compose and validate every arm; arms with the same resolved config collapse into one.

    `command_line`: the overrides given after the sweep file, so that an unknown key is blamed on them
    rather than on the file and the first arm.
    """
    out: dict[str, ResolvedArm] = {}
    labels: dict[str, str] = {}  # label -> run key
    first: tuple[str, RunConfig] | None = None
    for arm in sweep.arms:
        try:
            cfg, config = compose_arm(arm.overrides, arm=arm.label)
        except UnknownKeyError as e:
            raise _locate_unknown_key(e, sweep, arm.label, command_line) from None
        validate(config, arm=arm.label)
        # Before arms collapse: two arms that differ only in execution settings have one run key.
        first = first or (arm.label, config)
        _check_same_execution(first, (arm.label, config))
        key = run_key(cfg)
        if labels.setdefault(arm.label, key) != key:  # the runs, status and figures know arms by label
            raise SweepError(
                f"{sweep.path}: two different arms are labelled {arm.label!r} (run keys {labels[arm.label]} "
                f"and {key}); give each its own 'label', or drop the labels to have them named from their values"
            )
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


def _locate_unknown_key(
    err: UnknownKeyError, sweep: Sweep, arm: str, command_line: Sequence[str]
) -> UnknownKeyError:
    """The error said of the command line (every arm has the key) or of the sweep file and line with it."""
    if any(_key_of(text) == err.key for text in command_line):
        return err.located("command line", None)
    found = _find_key(sweep.path, err.key, set())
    return err.located(f"{found[0]}:{found[1]}" if found else str(sweep.path), arm)


def _key_of(text: str) -> str:
    return text.partition("=")[0].strip().lstrip("+~")


def _find_key(path: Path, key: str, seen: set[Path]) -> tuple[Path, int] | None:
    """(file, line) of the first place a sweep file or one it includes sets `key` (base, grid, arms)."""
    if path in seen:
        return None
    seen.add(path)
    try:
        data, lines = read_yaml(path)
    except AblateError:  # already read once by load_sweep; a file changed since is not worth a traceback
        return None
    if not isinstance(data, dict):
        return None
    todo: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while todo:
        at, node = todo.pop(0)
        if isinstance(node, dict):
            for k, v in node.items():
                if str(k).strip().lstrip("+~") == key and (at[:1] != ("exclude",)):
                    return path, lines.get((*at, str(k)), lines.get(at, 1))
                todo.append(((*at, str(k)), v))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if at == ("base",) and isinstance(v, str) and _key_of(v) == key:
                    return path, lines.get((*at, str(i)), lines.get(at, 1))
                todo.append(((*at, str(i)), v))
    includes = data.get("include") or []
    for given in includes if isinstance(includes, list) else []:
        found = _find_key(path.parent / str(given), key, seen) if isinstance(given, str) else None
        if found:
            return found
    return None
