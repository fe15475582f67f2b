"""Shard lists: what data.path (or data.eval_path) names for the webdataset source."""

from __future__ import annotations

import re
from pathlib import Path

from ablate.errors import ConfigError, DataError

_PATH_HELP = (
    "a directory of NNNNN.tar shards, a brace pattern such as /data/cc12m/{00000..01242}.tar or "
    "/data/{a,b}.tar, or one .tar file"
)
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def _expand_brace(body: str, pattern: str, key: str) -> list[str]:
    """The alternatives of one brace group: a zero-padded numeric range a..b or a comma list."""
    m = _RANGE.match(body)
    if m:
        lo_s, hi_s = m.groups()
        lo, hi = int(lo_s), int(hi_s)
        if lo > hi:
            raise ConfigError(key, pattern, _PATH_HELP, hint=f"the range {{{body}}} runs backwards")
        # {00000..01242} pads to the width written; {0..12} does not pad.
        width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
        return [str(i).zfill(width) for i in range(lo, hi + 1)]
    if "," in body:
        return body.split(",")
    raise ConfigError(key, pattern, _PATH_HELP, hint=f"{{{body}}} is neither a range a..b nor a list a,b")


def _check_braces(pattern: str, key: str) -> None:
    """ConfigError unless every brace opens before it closes and none nests."""
    depth = 0
    for ch in pattern:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise ConfigError(key, pattern, _PATH_HELP, hint="unbalanced or nested braces")
    if depth:
        raise ConfigError(key, pattern, _PATH_HELP, hint="unbalanced or nested braces")


def _expand(pattern: str, whole: str, key: str) -> list[str]:
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [
        head + alt + rest
        for alt in _expand_brace(m.group(1), whole, key)
        for rest in _expand(tail, whole, key)
    ]


def expand_pattern(pattern: str, key: str = "data.path") -> list[str]:
    """Every path a brace pattern names, in pattern order (several groups multiply, as in the shell)."""
    _check_braces(pattern, key)
    return _expand(pattern, pattern, key)


def expand_shards(path: str | Path, key: str = "data.path") -> list[Path]:
    """The tar shards that `path` names: a directory's *.tar (sorted by name), a brace pattern, or one .tar.

    `key` is the config key quoted in errors (data.path or data.eval_path).
    """
    text = str(path)
    if "{" in text or "}" in text:
        shards = [Path(p) for p in expand_pattern(text, key)]
        missing = [p for p in shards if not p.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise DataError(
                f"{key}={text!r} names {len(shards)} shards but {len(missing)} do not exist ({shown}); "
                "fix the range or fetch the missing shards"
            )
        return shards
    p = Path(text)
    if p.is_dir():
        shards = sorted(q for q in p.iterdir() if q.suffix == ".tar" and q.is_file())
        if not shards:
            raise DataError(f"{key}={text!r} is a directory without .tar shards; expected {_PATH_HELP}")
        return shards
    if p.is_file():
        if p.suffix != ".tar":
            raise ConfigError(key, text, _PATH_HELP, hint="the file is not a .tar")
        return [p]
    raise DataError(f"{key}={text!r}: nothing exists there; expected {_PATH_HELP}")
