"""Override strings vetted before composition: hydra.* keys, sweeps, resolvers and odd config-group
choices are refused with a ConfigError naming the key (Hydra would accept, ignore or crash on them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import grammar_parser
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

from ablate.config.keys import check_key
from ablate.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"
# The config groups (model=tiny, scale=paper, ...): the folders of the YAML tree.
CONFIG_GROUPS = tuple(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))
_RESOLVER_HINT = (
    "sweep files and overrides may reference config keys (${model.init}) but not call resolvers such as "
    "oc.env: the resolved value is logged to MLflow as a param, so a shared sweep file could copy "
    "environment variables (tokens included) into the tracking store"
)
# Parsing an override (Hydra's ANTLR grammar) costs a millisecond; a grid repeats the same few strings.
_parsed: dict[str, Override] = {}


def group_options(group: str) -> list[str]:
    """The options of a config group (its YAML files), e.g. ['open_lm_1b', 'tiny'] for model."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _raw_value(text: str) -> str:
    return text.partition("=")[2]


def _strings(value: Any) -> list[str]:
    """Every string inside a parsed override value (lists and dicts included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _calls_resolver(text: str) -> bool:
    """True if an OmegaConf string calls a resolver (`${oc.env:X}`, `${now:}`, `${${a}:b}`)."""
    if "${" not in text:
        return False
    try:
        tree = grammar_parser.parse(text)
    except GrammarParseError:
        return False  # not an interpolation OmegaConf runs; the value stays a plain string
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            return True
        todo.extend(node.getChildren() if hasattr(node, "getChildren") else ())
    return False


def is_group(ov: Override) -> bool:
    return ov.key_or_group.split("/")[0].split("@")[0] in CONFIG_GROUPS and "." not in ov.key_or_group


def check_overrides(overrides: list[str], arm: str | None = None) -> list[Override]:
    """Parse overrides and refuse what ablate does not compose: hydra.* keys, sweeps, resolvers, odd groups."""
    out = []
    for text in overrides:
        ov = _parsed.get(text)
        if ov is None:
            try:
                (ov,) = OverridesParser.create().parse_overrides([text])
            except HydraException as e:
                raise ConfigError(
                    "override", text, "key=value in Hydra's override grammar", arm=arm, hint=last_line(e)
                ) from None
            _parsed[text] = ov
        key = ov.key_or_group
        value = _raw_value(text)
        if re.split(r"[./@]", key)[0] == "hydra":
            raise ConfigError(
                key,
                value,
                "a key of RunConfig",
                arm=arm,
                hint="hydra.* settings do nothing here: ablate "
                "composes configs itself and owns the command line (`ablate config` prints every key)",
            )
        if ov.is_sweep_override():
            raise ConfigError(
                key,
                value,
                "one value",
                arm=arm,
                hint="a sweep over values belongs under a sweep file's 'grid'",
            )
        if is_group(ov):
            _check_group(ov, value, arm)
        else:
            if "/" not in key and "@" not in key:  # a group path or a package: Hydra's error says more
                check_key(key, value, arm)
            if any(_calls_resolver(s) for s in _strings(ov.value())):
                raise ConfigError(
                    key, value, "a value without resolvers (${name:...})", arm=arm, hint=_RESOLVER_HINT
                )
        out.append(ov)
    return out


def _check_group(ov: Override, value: str, arm: str | None) -> None:
    """A config-group override is `group=option`: one existing option, no package, no removal."""
    key = ov.key_or_group
    group = key.split("/")[0].split("@")[0]
    options = group_options(group)
    allowed = f"one of {', '.join(options)} (the files of config group {group!r})"
    if "/" in key or ov.package is not None:
        raise ConfigError(
            key,
            value,
            f"a config group ({', '.join(CONFIG_GROUPS)}) or a key",
            arm=arm,
            hint=f"choose an option with {group}=<option>",
        )
    if ov.is_delete() or ov.is_add() or ov.is_force_add():
        raise ConfigError(
            key,
            value,
            allowed,
            arm=arm,
            hint=f"every config group has exactly one option: write {group}=<option> without +, ++ or ~",
        )
    choice = ov.value()
    if not isinstance(choice, str) or choice not in options:
        raise ConfigError(group, value, allowed, arm=arm)


def last_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__
