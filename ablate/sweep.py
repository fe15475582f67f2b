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
    exclude:                        # drop arms whose values match every key of an entry (keys of
      - {model.init: random, train.trainable: emb_out}  #   'grid' or 'arms' only)
    max_arms: 5000                  # optional; the most arms the file may expand to (default 1,000)
    seeds: 3                        # optional; every arm (included ones too) once per train.seed 0..N-1;
                                    #   or per scale, {demo: 3} (a scale not named: 1)

Command-line overrides apply to every arm, last (they win).
Every arm remembers the sweeps it belongs to: its file's name and the names of the files including it.

Limits, so that no file can hang or exhaust the launcher: a sweep file is at most 1 MiB of UTF-8, nests at
most 32 levels and expands to at most 100,000 YAML nodes with its aliases (no recursive alias); a grid
expands to at most `max_arms` arms, counted before any is built; `name` is 1-64 letters, digits, - or _;
an included file is a `.yaml` file under the folder of the sweep named on the command line or under the
project's sweeps/ (symbolic links resolved first).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException

from ablate.errors import SweepError
from ablate.schema import SCALES
from ablate.sweep_yaml import read_yaml

TOP_LEVEL_KEYS = (
    "name",
    "description",
    "include",
    "base",
    "grid",
    "scale_grid",
    "arms",
    "exclude",
    "max_arms",
    "seeds",
)
SEED_KEY = "train.seed"  # what `seeds: N` varies: the training run's initialisation and data order
DEFAULT_SCALE = "demo"  # the config tree's default (conf/config.yaml)
# A sweep's arms, unless its file's `max_arms` says otherwise: a dry run costs milliseconds per arm and a
# launch one MLflow run per stage, so a typo such as range(0,1000000) is refused before it starts.
DEFAULT_MAX_ARMS = 1000
MAX_SEEDS = 100
# Experiment, manifest folder and job names are built from it: short and safe in a path and a shell.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
KEY_RE = re.compile(r"[+~]{0,2}[A-Za-z_][\w.@/-]*")
SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"  # the project's sweep files


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


def _show(value: Any, n: int = 60) -> str:
    """repr of a value from a sweep file, cut to n characters for an error line."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _fmt(value: Any) -> str:
    """A YAML scalar as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Parser:
    """Parses one sweep file, remembering where each key is for errors."""

    def __init__(self, path: Path, root: Path, max_arms: int = DEFAULT_MAX_ARMS) -> None:
        self.path = path
        self.root = root
        """The folder of the sweep file named on the command line: its includes stay under it."""
        self.data, self.lines = read_yaml(path)
        self.overrides = OverridesParser.create()
        self.max_arms = max_arms

    def error(self, msg: str, *keypath: str) -> SweepError:
        line = None
        for n in range(len(keypath), -1, -1):
            line = self.lines.get(tuple(keypath[:n]))
            if line is not None:
                break
        where = f"{self.path}:{line}" if line else str(self.path)
        return SweepError(f"{where}: {msg}")

    def seeds_of(self, scale: str) -> int:
        """The file's `seeds` at `scale` (a positive integer, or a mapping of scale names to one, a scale
        it leaves out taking 1), else 1: each arm once, with the config's seed."""
        value = self.data.get("seeds", 1) if isinstance(self.data, dict) else 1
        if isinstance(value, dict):
            unknown = [k for k in value if k not in SCALES]
            if unknown:
                raise self.error(
                    f"seeds: unknown scale {_show(unknown[0])}; allowed: {', '.join(SCALES)}", "seeds"
                )
            for name, n in value.items():
                self._check_seeds(n, "seeds", str(name))
            return int(value.get(scale, 1))
        return self._check_seeds(value, "seeds")

    def _check_seeds(self, value: Any, *keypath: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEEDS:
            raise self.error(
                f"'seeds' is an integer from 1 to {MAX_SEEDS} (or a mapping of scales to one), got {_show(value)}",
                *keypath,
            )
        return value

    def max_arms_of(self) -> int:
        """The file's `max_arms` (a positive integer), else DEFAULT_MAX_ARMS."""
        value = (
            self.data.get("max_arms", DEFAULT_MAX_ARMS) if isinstance(self.data, dict) else DEFAULT_MAX_ARMS
        )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(f"'max_arms' is a positive integer, got {_show(value)}", "max_arms")
        return value

    def key(self, key: Any, *keypath: str) -> str:
        """A config key written in the file (grid, arms, exclude, scale_grid), e.g. model.init."""
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise self.error(f"{_show(key)} is not a config key such as model.init", *keypath)
        return key

    def check_override(self, text: str, *keypath: str) -> None:
        try:
            self.overrides.parse_overrides([text])
        except HydraException as e:
            raise self.error(f"override {_show(text)} does not parse: {_last_line(e)}", *keypath) from None

    def canonical(self, key: str, value: Any, *keypath: str) -> str:
        """The value as Hydra reads it (so `1e-4` in a grid and `0.0001` in an exclusion compare equal)."""
        text = f"{key}={_fmt(value)}"
        try:
            (ov,) = self.overrides.parse_overrides([text])
        except HydraException as e:
            raise self.error(f"override {_show(text)} does not parse: {_last_line(e)}", *keypath) from None
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
                f"grid value {_show(text)} does not parse: {_last_line(e)}", "grid", key
            ) from None
        if not ov.is_sweep_override():
            return [ov.get_value_element_as_str()]
        sweep = ov.value()
        if isinstance(sweep, IntervalSweep):
            raise self.error(f"grid key {key!r}: interval() has no finite values; list them", "grid", key)
        if isinstance(sweep, RangeSweep):
            n = _range_length(sweep)
            if n is None:
                raise self.error(
                    f"grid key {key!r}: range() needs finite bounds and a finite, non-zero step", "grid", key
                )
            if n > self.max_arms:
                raise self.too_many(n, f"grid key {key!r} alone has {n:,} values", "grid", key)
        elif not isinstance(sweep, ChoiceSweep):
            raise self.error(
                f"grid key {key!r}: {_show(_fmt(value))} is not a list, a,b, choice() or range()", "grid", key
            )
        try:
            vals = list(ov.sweep_string_iterator())
        except (HydraException, ValueError, TypeError) as e:  # glob() needs Hydra's config loader
            raise self.error(
                f"grid value {_show(text)}: {_last_line(e)}; give a list, a,b, choice() or range()",
                "grid",
                key,
            ) from None
        if not vals:
            raise self.error(f"grid key {key!r} has no values", "grid", key)
        return vals

    def too_many(self, n: int, what: str, *keypath: str) -> SweepError:
        return self.error(
            f"{what}, more than the {self.max_arms:,} arm(s) a sweep may have; narrow the grid, or raise the "
            "limit with a top-level 'max_arms: N' in the sweep file named on the command line",
            *keypath,
        )

    def scale_values(self, keys: list[str], scale: str) -> dict[str, list[str]]:
        """Grid values replaced at `scale` by the file's scale_grid (checked for every scale it names)."""
        table = self.data.get("scale_grid") or {}
        if not isinstance(table, dict):
            raise self.error("'scale_grid' maps a scale name to grid keys and their values", "scale_grid")
        out: dict[str, list[str]] = {}
        for name, entries in table.items():
            if not isinstance(name, str) or name not in SCALES:
                raise self.error(
                    f"scale_grid: unknown scale {_show(name)}; allowed: {', '.join(SCALES)}",
                    "scale_grid",
                    str(name),
                )
            if not isinstance(entries, dict) or not entries:
                raise self.error(
                    f"scale_grid.{name}: give grid keys and their values", "scale_grid", str(name)
                )
            for key, value in entries.items():
                key = self.key(key, "scale_grid", name)
                if key not in keys:
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
                f"unknown top-level key {_show(unknown[0])}; allowed: {', '.join(TOP_LEVEL_KEYS)}",
                str(unknown[0]),
            )
        name = d.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise self.error(
                f"'name' must be 1 to 64 letters, digits, - and _ (starting with a letter or digit), got "
                f"{_show(name)}",
                "name",
            )
        description = d.get("description", "")
        if not isinstance(description, str | int | float):
            raise self.error("'description' is one line of text", "description")
        base = d.get("base") or []
        if not isinstance(base, list) or not all(isinstance(b, str | int | float | bool) for b in base):
            raise self.error("'base' must be a list of overrides like model.init=random", "base")
        base = [str(b) for b in base]
        for i, b in enumerate(base):
            self.check_override(b, "base", str(i))

        arms: list[Arm] = []
        if "grid" in d:
            grid = d["grid"]
            if not isinstance(grid, dict) or not grid:
                raise self.error("'grid' is empty: give at least one key with values", "grid")
            keys = [self.key(k, "grid") for k in grid]
            at_scale = self.scale_values(keys, scale)
            values = [at_scale.get(k) or self.sweep_values(k, grid[k]) for k in keys]
            n = math.prod(len(v) for v in values)
            if n > self.max_arms:
                raise self.too_many(n, f"'grid' expands to {n:,} arms", "grid")
            for combo in itertools.product(*values):
                arms.append(Arm(label="", assignments=dict(zip(keys, combo, strict=True))))
        entries = d.get("arms") or []
        if not isinstance(entries, list):
            raise self.error("'arms' is a list of mappings key: value", "arms")
        if len(arms) + len(entries) > self.max_arms:
            raise self.too_many(len(arms) + len(entries), "'grid' and 'arms' give more arms", "arms")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry:
                raise self.error("each entry of 'arms' is a mapping key: value", "arms", str(i))
            entry = dict(entry)  # an alias may share it with another entry
            label = entry.pop("label", "")
            if not isinstance(label, str | int | float):
                raise self.error("an arm's 'label' is a short text", "arms", str(i), "label")
            assignments = {}
            for k, v in entry.items():
                k = self.key(k, "arms", str(i))
                assignments[k] = self.canonical(k, v, "arms", str(i), k)
            arms.append(Arm(label=str(label), assignments=assignments))

        excludes = d.get("exclude") or []
        if not isinstance(excludes, list) or not all(isinstance(e, dict) for e in excludes):
            raise self.error("'exclude' must be a list of mappings key: value (or key: [values])", "exclude")
        varied = list(dict.fromkeys(k for a in arms for k in a.assignments))
        canon = []
        for i, e in enumerate(excludes):
            entry = {}
            for k, v in e.items():
                k = self.key(k, "exclude", str(i))
                if k not in varied:
                    raise self.error(
                        f"exclude: {k!r} is not a key of 'grid' or 'arms', so it excludes nothing (keys: "
                        f"{', '.join(varied) or 'none'})",
                        "exclude",
                        str(i),
                        k,
                    )
                entry[k] = [
                    self.canonical(k, x, "exclude", str(i), k) for x in (v if isinstance(v, list) else [v])
                ]
            canon.append(entry)
        arms = [a for a in arms if not any(_matches(a.assignments, e) for e in canon)]

        includes = d.get("include") or []
        if not isinstance(includes, list) or not all(isinstance(p, str) for p in includes):
            raise self.error("'include' must be a list of sweep files", "include")
        inc_paths = [self.include(p, i) for i, p in enumerate(includes)]
        if "scale_grid" in d and "grid" not in d:
            raise self.error(
                "'scale_grid' replaces values of 'grid' keys, but there is no 'grid'", "scale_grid"
            )
        if not arms and not inc_paths and "grid" not in d:
            raise self.error("the sweep has no arms: give a 'grid', 'arms' or 'include'")
        if not arms and not inc_paths:
            raise self.error("every arm is excluded by 'exclude'", "exclude")
        return name, str(description), base, arms, inc_paths

    def include(self, given: str, i: int) -> Path:
        """An included file: a .yaml file under the command line's sweep folder or the project's sweeps/.

        The error never shows the file's content: a path outside those folders is refused before it is read.
        """
        try:
            path = (self.path.parent / given).resolve(strict=True)
        except (OSError, RuntimeError) as e:  # missing, or a symbolic link loop
            reason = "does not exist" if isinstance(e, FileNotFoundError) else f"cannot be resolved ({e})"
            raise self.error(f"included sweep file {given!r} {reason}", "include", str(i)) from None
        roots = [r for r in (self.root, SWEEPS_DIR) if path.is_relative_to(r)]
        if path.suffix != ".yaml" or not roots or not path.is_file():
            raise self.error(
                f"included sweep file {given!r} ({path}) is not a .yaml file under {self.root} or "
                f"{SWEEPS_DIR}; only sweep files there can be included",
                "include",
                str(i),
            )
        return path


def _last_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


def _range_length(sweep: RangeSweep) -> int | None:
    """How many values range(start, stop, step) has, without listing them; None for a zero step or an
    infinite or NaN argument."""
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if start is None or stop is None or not step:
        return None
    if not all(math.isfinite(x) for x in (start, stop, step)):  # range(0,inf), range(0,nan)
        return None
    return max(0, math.ceil((stop - start) / step))


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
    _limits: tuple[Path, int] | None = None,
) -> Sweep:
    """Parse and expand a sweep file (and its includes) into arms with their full override lists.

    An arm's overrides are, in order: the including files' `base`, this file's `base`, the arm's own
    assignments, then the command line's (which win). `_outer` carries the including files' bases;
    `_limits` the top file's folder (includes stay under it or sweeps/) and its `max_arms`.
    """
    try:
        path = Path(path).resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise SweepError(f"{path}: cannot read sweep file ({getattr(e, 'strerror', None) or e})") from None
    if path in _seen:
        raise SweepError(f"{path}: include cycle through {' -> '.join(map(str, _seen))}")
    cli = list(cli_overrides or [])
    for c in cli:
        try:
            OverridesParser.create().parse_overrides([c])
        except HydraException as e:
            raise SweepError(f"command-line override {_show(c)} does not parse: {_last_line(e)}") from None
    if _limits is None:
        parser = _Parser(path, path.parent)
        _limits = (path.parent, parser.max_arms_of())
        parser.max_arms = _limits[1]
    else:
        parser = _Parser(path, *_limits)
        parser.max_arms_of()  # checked, though only the top file's limit counts
    outer = list(_outer)
    base_now = parser.data.get("base") if isinstance(parser.data, dict) else None
    scale = scale_of(outer + [str(b) for b in (base_now if isinstance(base_now, list) else [])] + cli)
    name, description, base, arms, includes = parser.parse(scale)

    out: list[Arm] = []
    for inc in includes:
        sub = load_sweep(inc, cli, _seen + (path,), tuple(outer + base), _limits)
        for a in sub.arms:
            sweeps = a.sweeps + ((name,) if name not in a.sweeps else ())
            out.append(Arm(a.label, a.assignments, a.overrides, sweeps))
        if len(out) > _limits[1]:
            raise parser.too_many(len(out), f"with {inc.name} the sweep has {len(out):,} arms", "include")
    for a in arms:
        overrides = outer + base + [f"{k}={v}" for k, v in a.assignments.items()] + cli
        out.append(Arm(a.label or label_of(a.assignments), a.assignments, overrides, (name,)))
    seeds = parser.seeds_of(scale)
    if seeds > 1:
        out = _with_seeds(out, seeds, parser)
    if len(out) > _limits[1]:
        raise parser.too_many(len(out), f"the sweep has {len(out):,} arms")
    return Sweep(name=name, path=path, description=description, arms=out)


def _with_seeds(arms: list[Arm], seeds: int, parser: _Parser) -> list[Arm]:
    """Each arm once per seed 0..seeds-1 (SEED_KEY), the seed in its label, after the arm's own overrides."""
    if len(arms) * seeds > parser.max_arms:
        raise parser.too_many(len(arms) * seeds, f"{len(arms):,} arms x {seeds} seeds", "seeds")
    out = []
    for a in arms:
        if SEED_KEY in a.assignments or any(o.split("=", 1)[0].lstrip("+~") == SEED_KEY for o in a.overrides):
            raise parser.error(
                f"arm {a.label!r} sets {SEED_KEY} itself, and 'seeds' sets it too: drop one of them", "seeds"
            )
        for seed in range(seeds):
            assignments = {**a.assignments, SEED_KEY: str(seed)}
            out.append(
                Arm(f"{a.label} seed={seed}", assignments, [*a.overrides, f"{SEED_KEY}={seed}"], a.sweeps)
            )
    return out
