"""Compose a RunConfig from Hydra overrides (compose API; ablate owns the CLI, no @hydra.main)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ablate.config.overrides import CONF_DIR, CONFIG_GROUPS, check_overrides, group_options, is_group
from ablate.errors import ConfigError
from ablate.schema import EXECUTION_SECTIONS, RunConfig, register_configs

# What Hydra and OmegaConf raise on a bad override besides their own exception types (e.g. ValueError
# "Config group override must be a string" for `hydra=nan`, RecursionError on a self-referencing value).
_COMPOSE_ERRORS = (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError, RecursionError)

# A whole-value reference to another key, the only interpolation the plain path resolves itself.
_LINK = re.compile(r"\$\{([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\}")
_SLOW = object()  # "take Hydra's path": an override or config the plain path does not handle
_registered = False


@dataclasses.dataclass
class _Base:
    """Hydra's composition for one tuple of config-group overrides (defaults list, 13 YAML files, merges),
    shared by every arm with those choices. The YAML tree does not change while a process runs."""

    cfg: DictConfig
    """Unresolved, as Hydra composed it."""
    plain: dict[str, Any]
    """Its container, interpolations kept as strings."""
    links: dict[tuple[str, ...], tuple[str, ...]]
    """Leaf -> the key its `${...}` names."""
    link_types: dict[tuple[str, ...], type]
    """Each linked leaf's type once OmegaConf resolved it (a different type after overrides: Hydra's path)."""
    simple: bool
    """Every interpolation is a whole-value `${key}` (else every arm takes Hydra's path)."""
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Override text -> the value OmegaConf stores for it (typed, validated), or _SLOW."""


_bases: dict[tuple[str, ...], _Base] = {}


def _base(groups: tuple[str, ...], arm: str | None) -> _Base:
    found = _bases.get(groups)
    if found is not None:
        return found
    cfg = compose_with_hydra(list(groups), arm)
    plain = _plain(cfg, resolve=False)
    links: dict[tuple[str, ...], tuple[str, ...]] = {}
    simple = True
    for path, value in _leaves(plain):
        if any("${" in text for text in _strings(value)):
            m = _LINK.fullmatch(value) if isinstance(value, str) else None
            if m:
                links[path] = tuple(m.group(1).split("."))
            else:
                simple = False
    resolved = _plain(finish(copy.deepcopy(cfg), list(groups), arm), resolve=True)
    types = {path: type(_get(resolved, path)) for path in links}
    found = _bases[groups] = _Base(cfg, plain, links, types, simple)
    return found


def compose_with_hydra(overrides: list[str], arm: str | None = None) -> DictConfig:
    """Hydra's compose API on the whole override list, unresolved (the reference composition)."""
    global _registered
    if not _registered:
        register_configs()
        _registered = True
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("config", overrides=list(overrides))
    except _COMPOSE_ERRORS as e:
        raise _explain(e, overrides, arm) from None
    finally:
        GlobalHydra.instance().clear()


def compose_config(overrides: list[str], arm: str | None = None) -> DictConfig:
    """Compose the config tree with Hydra override strings; bad overrides raise ConfigError naming the arm.

    Hydra composes once per distinct tuple of config-group overrides; the value overrides are then applied
    to a copy the way Hydra applies them after its own composition (in order, struct mode, +/++/~), so the
    result equals composing everything with Hydra (tests/test_sweep_limits.py compares every sweep's arms).
    """
    parsed = check_overrides(overrides, arm)
    groups = tuple(t for t, o in zip(overrides, parsed, strict=True) if is_group(o))
    cfg = copy.deepcopy(_base(groups, arm).cfg)
    try:
        ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if not is_group(o)], cfg)
    except _COMPOSE_ERRORS as e:
        raise _explain(e, overrides, arm) from None
    return finish(cfg, overrides, arm)


def compose_arm(overrides: list[str], arm: str | None = None) -> tuple[dict[str, Any], RunConfig]:
    """An arm's resolved config as plain nested dicts and as the typed RunConfig: what compose_config and
    to_run_config give, without OmegaConf for the usual arm (value overrides of existing keys).

    Each distinct override is applied once, by OmegaConf, to a copy of its section (so its value is typed
    and validated as Hydra's would be) and remembered; an arm is then a copy of the composition's plain
    dicts with those values set and its `${key}` links followed. Anything else (+, ++, ~, an override
    that fails or holds `${`, other interpolations) takes Hydra's path, which also gives the errors.
    """
    plain = _compose_plain(overrides, arm)
    if plain is not None:
        return plain, _build(RunConfig, plain)
    cfg = compose_config(overrides, arm)
    return _plain(cfg, resolve=True), to_run_config(cfg, arm)


def _compose_plain(overrides: list[str], arm: str | None) -> dict[str, Any] | None:
    """compose_arm's plain path; None where it does not apply."""
    parsed = check_overrides(overrides, arm)
    groups = tuple(t for t, o in zip(overrides, parsed, strict=True) if is_group(o))
    base = _base(groups, arm)
    if not base.simple:
        return None
    plain = _copy(base.plain)
    links = dict(base.links)
    for text, ov in zip(overrides, parsed, strict=True):
        if is_group(ov):
            continue
        if text not in base.values:
            base.values[text] = _stored_value(base, ov)
        value = base.values[text]
        if value is _SLOW:
            return None
        path = tuple(ov.key_or_group.split("."))
        _set(plain, path, _copy(value))
        links.pop(path, None)
    for path in list(links):
        value = _follow(plain, path, links, base.links)
        if value is _SLOW or type(value) is not base.link_types[path]:
            return None
        _set(plain, path, _copy(value))
    return plain


def _stored_value(base: _Base, ov: Any) -> Any:
    """The value OmegaConf stores for a plain `key=value` override of an existing leaf, else _SLOW."""
    path = tuple(ov.key_or_group.split("."))
    if ov.is_add() or ov.is_force_add() or ov.is_delete() or ov.package is not None or len(path) < 2:
        return _SLOW
    if not _is_leaf(base.plain, path) or any("${" in text for text in _strings(ov.value())):
        return _SLOW
    section = copy.deepcopy(base.cfg[path[0]])
    try:
        OmegaConf.update(section, ".".join(path[1:]), ov.value(), merge=True)  # as Hydra applies it
        value = _get(_plain(section, resolve=False), path[1:])
    except _COMPOSE_ERRORS:
        return _SLOW
    if value == "???" or any("${" in text for text in _strings(value)):
        return _SLOW
    return value


def _follow(
    plain: dict[str, Any],
    path: tuple[str, ...],
    links: dict[tuple[str, ...], tuple[str, ...]],
    all_links: dict[tuple[str, ...], tuple[str, ...]],
    depth: int = 0,
) -> Any:
    """The value a `${key}` leaf resolves to (following chains of links); _SLOW if it cannot tell."""
    target = links.get(path)
    if target is None:
        return _get(plain, path)
    if depth > 8 or not _is_leaf(plain, target):
        return _SLOW
    value = _follow(plain, target, links, all_links, depth + 1)
    if value is not _SLOW:
        _set(plain, target, _copy(value))
        links.pop(target, None)
    return value


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for k, v in data.items():
        if isinstance(v, dict):
            out.extend(_leaves(v, (*prefix, k)))
        else:
            out.append(((*prefix, k), v))
    return out


def _is_leaf(data: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        node = node[part]
    return node


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _copy(value: Any) -> Any:
    """A copy of plain config data (dicts, lists, scalars), faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _build(cls: Any, data: dict[str, Any]) -> Any:
    """The dataclass tree of a resolved container (what OmegaConf.to_object gives for the schema)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        value = data[f.name]
        kwargs[f.name] = _build(sub, value) if dataclasses.is_dataclass(sub) else _copy(value)
    return cls(**kwargs)


def finish(cfg: DictConfig, overrides: list[str], arm: str | None = None) -> DictConfig:
    """Refuse keys the schema lacks (`+foo=1`), then resolve interpolations; errors name the key."""
    _check_known_keys(cfg, RunConfig, "", overrides, arm)
    try:
        OmegaConf.resolve(cfg)
    except _COMPOSE_ERRORS as e:
        key = _failing_key(cfg) or _full_key(e)
        raise ConfigError(
            key,
            _value_of(key, overrides),
            "a value whose ${...} names a key of the config",
            arm=arm,
            hint=_first_line(e),
        ) from None
    return cfg


def _failing_key(cfg: DictConfig) -> str | None:
    """The first key whose interpolation does not resolve (looked for only once resolving has failed)."""
    todo: list[tuple[str, Any]] = [("", cfg)]
    while todo:
        prefix, node = todo.pop(0)
        for k in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            name = f"{prefix}{k!s}"
            try:
                child = node[k]
            except _COMPOSE_ERRORS:
                return name
            if isinstance(child, DictConfig | ListConfig):
                todo.append((name + ".", child))
    return None


def _full_key(e: BaseException) -> str:
    """The dotted key an OmegaConf error is about ('config' if it says none)."""
    return str(getattr(e, "full_key", None) or "config")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _value_of(key: str, overrides: list[str]) -> str | None:
    value = None
    for o in overrides:
        k, _, v = o.partition("=")
        if k.lstrip("+~") == key:
            value = v
    return value


def _check_known_keys(node: Any, schema: Any, prefix: str, overrides: list[str], arm: str | None) -> None:
    """ConfigError for a key the dataclass schema does not have (Hydra's `+key=` adds it silently)."""
    if not dataclasses.is_dataclass(schema) or not isinstance(node, DictConfig):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for k in node.keys():
        name = f"{prefix}{k!s}"
        if k not in fields:
            raise ConfigError(
                name,
                _value_of(name, overrides),
                f"a key of {prefix.rstrip('.') or 'the config'}: {', '.join(fields)}",
                arm=arm,
            )
        f = fields[str(k)]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            _check_known_keys(node._get_node(k), sub, name + ".", overrides, arm)


def _explain(e: Exception, overrides: list[str], arm: str | None) -> ConfigError:
    """Turn Hydra's composition error into a ConfigError naming the key, the value and what is allowed."""
    text = str(e)
    cause = e.__cause__ or e.__context__
    detail = _first_line(cause if cause else e)
    m = re.search(r"override '?([\w.]+)'?", text) or re.search(r"Could not find '([\w/]+)'", text)
    key = m.group(1).split("/")[0] if m else "?"
    value = _value_of(key, overrides)
    if "Could not override" in text:
        section, _, _ = key.rpartition(".")
        keys = _keys_of(section)
        if keys or not section:
            allowed = f"one of the keys {keys}" if keys else "a key of RunConfig"
            return ConfigError(key, value, allowed, arm=arm, hint="unknown key " + detail)
        return ConfigError(
            key, value, f"an existing key of {section}", arm=arm, hint=f"a new key is added with +{key}=..."
        )
    if "Could not find" in text and key in CONFIG_GROUPS:
        return ConfigError(key, value, f"one of {group_options(key)}", arm=arm, hint=detail)
    if m is None:
        return ConfigError(
            "override", " ".join(overrides), "key=value in Hydra's override grammar", arm=arm, hint=detail
        )
    return ConfigError(key, value, "a value of the key's type", arm=arm, hint=detail)


def _keys_of(section: str) -> list[str]:
    """Field names of a RunConfig section (for error messages); [] if it is not a dataclass section."""
    node: Any = RunConfig
    for part in section.split("."):
        if not dataclasses.is_dataclass(node):
            return []
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return []
        node = fields[part].default_factory
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def to_run_config(cfg: DictConfig, arm: str | None = None) -> RunConfig:
    """The typed dataclass view of a composed config (a missing mandatory value is a ConfigError)."""
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except _COMPOSE_ERRORS as e:
        raise ConfigError(_full_key(e), None, "a value", arm=arm, hint=_first_line(e)) from None


def _plain(cfg: DictConfig, resolve: bool) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg, resolve=resolve)
    if not isinstance(data, dict):
        raise TypeError(f"expected a mapping config, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def _container(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config as plain nested dicts (a copy of them if it already is)."""
    return _plain(cfg, resolve=True) if isinstance(cfg, DictConfig) else _copy(cfg)


def flatten(cfg: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested config into dotted keys: {'model.init': 'pretrained', ...}."""
    data = _container(cfg) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short content hash of a JSON-serialisable object (key order independent)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def run_key(cfg: DictConfig | dict[str, Any]) -> str:
    """An arm's identity: hash of its resolved config minus where/how it executes."""
    data = _container(cfg)
    for section in EXECUTION_SECTIONS:
        data.pop(section, None)
    return stable_hash(data)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild the typed config from its resolved container (as jobs receive it)."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), data)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
