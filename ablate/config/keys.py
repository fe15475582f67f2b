"""The schema's dotted keys, and the error for an override key it lacks: names the key and suggests the
nearest existing one (`optim.lrr` -> `optim.lr`), else lists the keys that exist there."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any

from ablate.errors import ConfigError
from ablate.schema import RunConfig


class UnknownKeyError(ConfigError):
    """An override names a key the schema does not have; `fix` suggests the nearest key or lists them."""

    def __init__(self, key: str, value: Any, fix: str, arm: str | None = None, where: str = "") -> None:
        super().__init__(key, value, fix, arm=arm)
        self.fix, self.where = fix, where
        # One line a user can act on: where (file:line or command line), which arm, the key, the fix.
        prefix = f"{where}: " if where else ""
        arm_part = f"arm '{arm}': " if arm else ""
        self.args = (f"{prefix}{arm_part}unknown key '{key}'; {fix}",)

    def located(self, where: str, arm: str | None) -> UnknownKeyError:
        """The same error, said of a place (a sweep file's line, the command line) and arm (None: every arm)."""
        return UnknownKeyError(self.key, self.value, self.fix, arm=arm, where=where)


def _children(cls: Any) -> dict[str, Any]:
    """A dataclass's fields -> the dataclass below each (None for a value)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        out[f.name] = sub if dataclasses.is_dataclass(sub) else None
    return out


def _free_form(cls: Any, name: str) -> bool:
    """A field whose value is a dict or list (cluster.additional_parameters, evaluate.prompts): any key or
    index below it is Hydra's to check."""
    (f,) = (f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory in (dict, list)


@functools.cache
def schema_keys() -> tuple[str, ...]:
    """Every dotted key of RunConfig: sections ('optim') and values ('optim.lr'), in schema order."""
    out: list[str] = []
    todo: list[tuple[str, Any]] = [("", RunConfig)]
    while todo:
        prefix, cls = todo.pop(0)
        for name, sub in _children(cls).items():
            out.append(prefix + name)
            if sub is not None:
                todo.append((f"{prefix}{name}.", sub))
    return tuple(out)


@functools.cache
def unknown_key_fix(key: str) -> str | None:
    """None if `key` is a schema key (or lies under a free-form field); else what to write instead."""
    parts = key.split(".")
    cls: Any = RunConfig
    for i, part in enumerate(parts):
        children = _children(cls)
        if part not in children:
            return _fix(parts, i, cls)
        if children[part] is None:
            if i == len(parts) - 1 or _free_form(cls, part):
                return None
            # `optim.lr.x`: a value has no keys below it
            return f"did you mean '{'.'.join(parts[: i + 1])}'? ('{parts[i]}' is a value, not a section)"
        cls = children[part]
    # The key is a whole section (`optim=...`): Hydra checks the mapping it is given.
    return None


def _fix(parts: list[str], bad: int, cls: Any) -> str:
    """The fix for a key whose component `bad` is not a field of `cls`."""
    keys = schema_keys()
    depth = len(parts)
    key = ".".join(parts)
    same_depth = [k.split(".") for k in keys if k.count(".") == depth - 1]
    # Compared per component, so that a long right section does not outweigh a wrong name (`optim.wd` is
    # not `optim.lr`); the components before the bad one exist, so they stay as typed.
    near = [
        ".".join(k)
        for k in same_depth
        if k[:bad] == parts[:bad] and all(_close(a, b) for a, b in zip(parts[bad:], k[bad:], strict=True))
    ]
    if not near and depth > 1:
        # The right name in the wrong section: `train.lr` -> `optim.lr`.
        near = [".".join(k) for k in same_depth if k[-1] == parts[-1]]
    if near:
        near.sort(key=lambda k: -difflib.SequenceMatcher(None, key, k).ratio())
        quoted = [f"'{k}'" for k in near[:3]]
        return (
            "did you mean " + (", ".join(quoted[:-1]) + " or " if len(quoted) > 1 else "") + quoted[-1] + "?"
        )
    section = ".".join(parts[:bad])
    names = ", ".join(_children(cls))
    if section:
        return f"the keys of {section} are: {names} (`ablate config` prints every key with its value)"
    return f"the sections are: {names} (`ablate config` prints every key with its value)"


def _close(typed: str, name: str) -> bool:
    return typed == name or bool(difflib.get_close_matches(typed, [name], n=1, cutoff=0.75))


def check_key(key: str, value: Any, arm: str | None = None) -> None:
    """UnknownKeyError if an override's key is not in the schema."""
    fix = unknown_key_fix(key)
    if fix is not None:
        raise UnknownKeyError(key, value, fix, arm=arm)
