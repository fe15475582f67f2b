"""Compose a RunConfig from Hydra overrides (compose API; ablate owns the CLI, no @hydra.main)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ablate.config.schema import EXECUTION_SECTIONS, RunConfig, register_configs
from ablate.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"

_registered = False


def compose_config(overrides: list[str], arm: str | None = None) -> DictConfig:
    """Compose the config tree with Hydra override strings; bad overrides raise ConfigError naming the arm."""
    global _registered
    if not _registered:
        register_configs()
        _registered = True
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise _explain(e, overrides, arm) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.resolve(cfg)
    return cfg


def _explain(e: Exception, overrides: list[str], arm: str | None) -> ConfigError:
    """Turn Hydra's composition error into a ConfigError naming the key, the value and what is allowed."""
    text = str(e)
    cause = e.__cause__ or e.__context__
    detail = (str(cause) if cause else text).strip().splitlines()[0]
    m = re.search(r"override '?([\w.]+)'?", text) or re.search(r"Could not find '([\w/]+)'", text)
    key = m.group(1).split("/")[0] if m else "?"
    value = None
    for o in overrides:
        k, _, v = o.partition("=")
        if k.lstrip("+~") == key:
            value = v
    if "Could not override" in text:
        section, _, _ = key.rpartition(".")
        allowed = f"one of the keys {_keys_of(section)}" if section else "a key of RunConfig"
        return ConfigError(key, value, allowed, arm=arm, hint="unknown key " + detail)
    if "Could not find" in text:
        options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        return ConfigError(key, value, f"one of {options}", arm=arm, hint=detail)
    if m is None:
        return ConfigError(
            "override", " ".join(overrides), "key=value in Hydra's override grammar", arm=arm, hint=detail
        )
    return ConfigError(key, value, "a value of the key's type", arm=arm, hint=detail)


def _keys_of(section: str) -> list[str]:
    """Field names of a RunConfig section (for error messages)."""
    import dataclasses

    node: Any = RunConfig
    for part in section.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return []
        node = fields[part].default_factory
    return [f.name for f in dataclasses.fields(node)]


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The typed dataclass view of a composed config."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain nested dicts (a DictConfig's container is always a dict)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(data, dict):
        raise TypeError(f"expected a mapping config, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


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


def run_key(cfg: DictConfig) -> str:
    """An arm's identity: hash of its resolved config minus where/how it executes."""
    data = _container(cfg)
    for section in EXECUTION_SECTIONS:
        data.pop(section, None)
    return stable_hash(data)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild the typed config from its resolved container (as jobs receive it)."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), data)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
