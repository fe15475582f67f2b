"""A sweep file's YAML, read within limits so that no file can hang or exhaust the launcher, with the line
of each key for error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ablate.errors import SweepError

MAX_SWEEP_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000  # YAML nodes with aliases expanded: a 9-line alias bomb is 10^9
_OPEN = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSE = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def _lines(root: yaml.Node | None) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line number, for error messages.

    An aliased node is walked once (its first path), so aliases cost nothing here.
    """
    out: dict[tuple[str, ...], int] = {}
    seen: set[int] = set()
    todo: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())] if root is not None else []
    while todo:
        node, path = todo.pop()
        out.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out.setdefault(path + (str(k.value),), k.start_mark.line + 1)
                todo.append((v, path + (str(k.value),)))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((v, path + (str(i),)) for i, v in enumerate(node.value))
    return out


def _check_size(root: yaml.Node, where: str) -> None:
    """SweepError if the document has a recursive alias or expands to more than MAX_NODES nodes."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
            if size[id(node)] > MAX_NODES:
                raise SweepError(
                    f"{where}:{node.start_mark.line + 1}: YAML expands to more than {MAX_NODES:,} values "
                    "(aliases *name repeat what they point to); a sweep file is a few lines"
                )
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            raise SweepError(
                f"{where}:{node.start_mark.line + 1}: recursive YAML alias (a node that contains itself)"
            )
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _check_unique_keys(root: yaml.Node, where: str) -> None:
    """SweepError for a mapping that names a key twice: YAML loaders keep the last value silently, so the
    first line the reader sees would never take effect."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for k, _ in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                    continue
                if k.value in lines:
                    raise SweepError(
                        f"{where}:{k.start_mark.line + 1}: key {k.value[:60]!r} is given twice in one mapping "
                        f"(first on line {lines[k.value]}); keep one"
                    )
                lines[k.value] = k.start_mark.line + 1
        todo.extend(_children(node))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """A sweep file's data and key lines, within the module's size, depth and alias limits."""
    try:
        if not path.is_file():  # a folder, or a device or FIFO that never ends or never answers
            raise SweepError(f"{path}: not a regular file; a sweep file is a .yaml file")
        with path.open("rb") as f:
            raw = f.read(MAX_SWEEP_BYTES + 1)
        if len(raw) > MAX_SWEEP_BYTES:
            raise SweepError(f"{path}: more than {MAX_SWEEP_BYTES:,} bytes; a sweep file is a few lines")
    except (OSError, RuntimeError) as e:
        raise SweepError(f"{path}: cannot read sweep file ({getattr(e, 'strerror', None) or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SweepError(
            f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); save it as UTF-8"
        ) from None
    try:
        depth = 0
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            depth += isinstance(token, _OPEN) - isinstance(token, _CLOSE)
            if depth > MAX_DEPTH:
                raise SweepError(
                    f"{path}:{token.start_mark.line + 1}: YAML nested more than {MAX_DEPTH} levels deep"
                )
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None, {}
            _check_size(root, str(path))
            _check_unique_keys(root, str(path))
            return loader.construct_document(root), _lines(root)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SweepError(f"{where}: YAML error: {e.problem or e}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise SweepError(f"{path}: YAML error: {e or type(e).__name__}") from None
