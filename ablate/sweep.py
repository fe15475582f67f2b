"""Sweep files -> arms.

A sweep file (sweeps/*.yaml) has:

    name: demo                      # required; experiment and manifest name
    description: ...                # optional
    include: [t2i_init.yaml]        # optional; arms of other sweep files (paths relative to this one)
    base: [data.task=t2i]           # optional; overrides every arm shares
    grid:                           # Cartesian product; a value is a YAML list or a Hydra sweep string
      model.init: pretrained,random #   ("a,b", "choice(a,b)", "range(1,4)")
    scale_grid:                     # optional; per scale, grid keys whose values differ at that scale
      demo: {optim.lr: [1.0e-3]}    #   (the scale is the last `scale=` override, else demo)
    arms:                           # explicit arms, each a mapping of key: value (optional `label`)
      - {model.init: pretrained, train.trainable: emb_out}
    exclude:                        # drop arms whose values match every key of an entry
      - {model.init: random, train.trainable: emb_out}

Command-line overrides given after the file apply to every arm, last (they win).
Every arm remembers the sweeps it belongs to: its file's name and the names of the files including it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from ablate.config.schema import SCALES
from ablate.errors import SweepError

TOP_LEVEL_KEYS = ("name", "description", "include", "base", "grid", "scale_grid", "arms", "exclude")
DEFAULT_SCALE = "demo"  # the config tree's default (conf/config.yaml)


@dataclass
class Arm:
    """One point of the grid: the overrides that define it and a readable label."""

    label: str
    assignments: dict[str, str]
    overrides: list[str] = field(default_factory=list)
    sweeps: tuple[str, ...] = ()
    """Names of the sweep files this arm belongs to (its own file first, then the including ones)."""


@dataclass
class Sweep:
    """A parsed sweep file with its arms expanded (before composition)."""

    name: str
    path: Path
    description: str
    arms: list[Arm]


def _lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line number, for error messages."""
    out: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[path + (str(k.value),)] = k.start_mark.line + 1
                walk(v, path + (str(k.value),))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (str(i),))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return out


def _fmt(value: Any) -> str:
    """A YAML scalar as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Parser:
    """Parses one sweep file, remembering where each key is for errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text()
        except OSError as e:
            raise SweepError(f"{path}: cannot read sweep file ({e.strerror})") from None
        try:
            self.data = yaml.safe_load(text)
            self.lines = _lines(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise SweepError(f"{where}: YAML error: {e.problem or e}") from None
        except yaml.YAMLError as e:
            raise SweepError(f"{path}: YAML error: {e}") from None
        self.overrides = OverridesParser.create()

    def error(self, msg: str, *keypath: str) -> SweepError:
        line = None
        for n in range(len(keypath), -1, -1):
            line = self.lines.get(tuple(keypath[:n]))
            if line is not None:
                break
        where = f"{self.path}:{line}" if line else str(self.path)
        return SweepError(f"{where}: {msg}")

    def check_override(self, text: str, *keypath: str) -> None:
        try:
            self.overrides.parse_overrides([text])
        except HydraException as e:
            raise self.error(
                f"override {text!r} does not parse: {str(e).strip().splitlines()[-1]}", *keypath
            ) from None

    def canonical(self, key: str, value: Any, *keypath: str) -> str:
        """The value as Hydra reads it (so `1e-4` in a grid and `0.0001` in an exclusion compare equal)."""
        text = f"{key}={_fmt(value)}"
        try:
            (ov,) = self.overrides.parse_overrides([text])
        except HydraException as e:
            raise self.error(
                f"override {text!r} does not parse: {str(e).strip().splitlines()[-1]}", *keypath
            ) from None
        if ov.is_sweep_override():
            raise self.error(f"{text!r}: a sweep value belongs under 'grid'", *keypath)
        return ov.get_value_element_as_str()

    def sweep_values(self, key: str, value: Any) -> list[str]:
        """Values of one grid key: a YAML list, or a Hydra sweep string like 'a,b' / choice() / range()."""
        if isinstance(value, list):
            if not value:
                raise self.error(f"grid key {key!r} has no values", "grid", key)
            return [self.canonical(key, v, "grid", key) for v in value]
        if isinstance(value, dict):
            raise self.error(
                f"grid key {key!r}: expected a list or a sweep string, got a mapping", "grid", key
            )
        text = f"{key}={_fmt(value)}"
        try:
            (ov,) = self.overrides.parse_overrides([text])
        except HydraException as e:
            raise self.error(
                f"grid value {text!r} does not parse: {str(e).strip().splitlines()[-1]}", "grid", key
            ) from None
        if ov.is_sweep_override():
            vals = list(ov.sweep_string_iterator())
        else:
            vals = [ov.get_value_element_as_str()]
        if not vals:
            raise self.error(f"grid key {key!r} has no values", "grid", key)
        return vals

    def scale_values(self, keys: list[str], scale: str) -> dict[str, list[str]]:
        """Grid values replaced at `scale` by the file's scale_grid (checked for every scale it names)."""
        table = self.data.get("scale_grid") or {}
        if not isinstance(table, dict):
            raise self.error("'scale_grid' maps a scale name to grid keys and their values", "scale_grid")
        out: dict[str, list[str]] = {}
        for name, entries in table.items():
            if name not in SCALES:
                raise self.error(
                    f"scale_grid: unknown scale {name!r}; allowed: {', '.join(SCALES)}",
                    "scale_grid",
                    str(name),
                )
            if not isinstance(entries, dict) or not entries:
                raise self.error(
                    f"scale_grid.{name}: give grid keys and their values", "scale_grid", str(name)
                )
            for key, value in entries.items():
                if str(key) not in keys:
                    raise self.error(
                        f"scale_grid.{name}.{key}: not a key of 'grid' (grid keys: {', '.join(keys)})",
                        "scale_grid",
                        str(name),
                        str(key),
                    )
                values = self.sweep_values(str(key), value)
                if name == scale:
                    out[str(key)] = values
        return out

    def parse(self, scale: str = DEFAULT_SCALE) -> tuple[str, str, list[str], list[Arm], list[Path]]:
        d = self.data
        if not isinstance(d, dict):
            raise self.error("a sweep file is a mapping with keys " + ", ".join(TOP_LEVEL_KEYS))
        unknown = [k for k in d if k not in TOP_LEVEL_KEYS]
        if unknown:
            raise self.error(
                f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}", str(unknown[0])
            )
        name = d.get("name")
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise self.error(f"'name' must be a word (letters, digits, - and _), got {name!r}", "name")
        base = d.get("base") or []
        if not isinstance(base, list):
            raise self.error("'base' must be a list of overrides like model.init=random", "base")
        base = [str(b) for b in base]
        for i, b in enumerate(base):
            self.check_override(b, "base", str(i))

        arms: list[Arm] = []
        if "grid" in d:
            grid = d["grid"]
            if not isinstance(grid, dict) or not grid:
                raise self.error("'grid' is empty: give at least one key with values", "grid")
            keys = [str(k) for k in grid]
            at_scale = self.scale_values(keys, scale)
            values = [at_scale.get(k) or self.sweep_values(k, grid[k]) for k in keys]
            for combo in itertools.product(*values):
                arms.append(Arm(label="", assignments=dict(zip(keys, combo, strict=True))))
        for i, entry in enumerate(d.get("arms") or []):
            if not isinstance(entry, dict) or not entry:
                raise self.error("each entry of 'arms' is a mapping key: value", "arms", str(i))
            label = str(entry.pop("label", ""))
            assignments = {
                str(k): self.canonical(str(k), v, "arms", str(i), str(k)) for k, v in entry.items()
            }
            arms.append(Arm(label=label, assignments=assignments))

        excludes = d.get("exclude") or []
        if not isinstance(excludes, list) or not all(isinstance(e, dict) for e in excludes):
            raise self.error("'exclude' must be a list of mappings key: value (or key: [values])", "exclude")
        canon = [
            {
                str(k): [self.canonical(str(k), x, "exclude") for x in (v if isinstance(v, list) else [v])]
                for k, v in e.items()
            }
            for e in excludes
        ]
        arms = [a for a in arms if not any(_matches(a.assignments, e) for e in canon)]

        includes = d.get("include") or []
        if not isinstance(includes, list):
            raise self.error("'include' must be a list of sweep files", "include")
        inc_paths = [(self.path.parent / str(p)).resolve() for p in includes]
        for i, p in enumerate(inc_paths):
            if not p.is_file():
                raise self.error(f"included sweep file {p} does not exist", "include", str(i))
        if "scale_grid" in d and "grid" not in d:
            raise self.error(
                "'scale_grid' replaces values of 'grid' keys, but there is no 'grid'", "scale_grid"
            )
        if not arms and not inc_paths and "grid" not in d:
            raise self.error("the sweep has no arms: give a 'grid', 'arms' or 'include'")
        if not arms and not inc_paths:
            raise self.error("every arm is excluded by 'exclude'", "exclude")
        return name, str(d.get("description", "")), base, arms, inc_paths


def _matches(assignments: dict[str, str], exclusion: dict[str, list[str]]) -> bool:
    """True if the arm has every key of the exclusion with one of its values."""
    return all(assignments.get(k) in allowed for k, allowed in exclusion.items())


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def label_of(assignments: dict[str, str]) -> str:
    """A readable label such as `init=pretrained lr=1e-4` (last key component)."""
    shorts = [_short(k) for k in assignments]
    parts = []
    for k, v in assignments.items():
        name = _short(k) if shorts.count(_short(k)) == 1 else k
        parts.append(f"{name}={v}")
    return " ".join(parts) or "base"


def scale_of(overrides: list[str]) -> str:
    """The scale a list of overrides selects: the last `scale=` among them, else the default."""
    scale = DEFAULT_SCALE
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key.strip().lstrip("+~") == "scale":
            scale = value.strip()
    return scale


def load_sweep(
    path: str | Path,
    cli_overrides: list[str] | None = None,
    _seen: tuple[Path, ...] = (),
    _outer: tuple[str, ...] = (),
) -> Sweep:
    """Parse and expand a sweep file (and its includes) into arms with their full override lists.

    An arm's overrides are, in order: the including files' `base`, this file's `base`, the arm's own
    assignments, then the command line's (which win). `_outer` carries the including files' bases.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise SweepError(f"{path}: include cycle through {' -> '.join(map(str, _seen))}")
    cli = list(cli_overrides or [])
    for c in cli:
        try:
            OverridesParser.create().parse_overrides([c])
        except HydraException as e:
            raise SweepError(
                f"command-line override {c!r} does not parse: {str(e).strip().splitlines()[-1]}"
            ) from None
    parser = _Parser(path)
    outer = list(_outer)
    base_now = parser.data.get("base") if isinstance(parser.data, dict) else None
    scale = scale_of(outer + [str(b) for b in (base_now if isinstance(base_now, list) else [])] + cli)
    name, description, base, arms, includes = parser.parse(scale)

    out: list[Arm] = []
    for inc in includes:
        sub = load_sweep(inc, cli, _seen + (path,), tuple(outer + base))
        for a in sub.arms:
            sweeps = a.sweeps + ((name,) if name not in a.sweeps else ())
            out.append(Arm(a.label, a.assignments, a.overrides, sweeps))
    for a in arms:
        overrides = outer + base + [f"{k}={v}" for k, v in a.assignments.items()] + cli
        out.append(Arm(a.label or label_of(a.assignments), a.assignments, overrides, (name,)))
    return Sweep(name=name, path=path, description=description, arms=out)
