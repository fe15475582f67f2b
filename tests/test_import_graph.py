"""The import graph of ablate/ (every import, function-local ones too): no circle between modules, no two
packages that import each other (data flows one way: config -> data/model/tokenize -> train -> stages ->
launch -> tracking -> analysis), and the side effects at the edges (only ablate/tracking imports mlflow,
only ablate/launch submitit)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABLATE = ROOT / "ablate"


def _modules() -> dict[str, Path]:
    out = {}
    for p in ABLATE.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Full names of what `node` imports (a module, or a package when it imports a name from it)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".")
    if node.level:
        base = base if MODULES[module].name == "__init__.py" else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(ablate module -> ablate modules it imports, ablate module -> top-level third-party packages)."""
    edges: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(module, node):
                if not name.startswith("ablate"):
                    external[module].add(name.split(".")[0])
                    continue
                while name and name not in MODULES:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges[module].add(name)
    return edges, external


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(MODULES):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _package(module: str) -> str:
    """ablate.<package> for a module inside a subpackage, else the module itself (ablate.sweep)."""
    parts = module.split(".")
    sub = len(parts) > 2 or MODULES[module].name == "__init__.py"
    return ".".join(parts[:2]) if sub else module


EDGES, EXTERNAL = _graph()


def test_no_module_imports_itself_through_others():
    assert _circles(EDGES) == []


def test_no_two_packages_import_each_other():
    between: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, targets in EDGES.items():
        for b in targets:
            if _package(a) != _package(b):
                between[(_package(a), _package(b))].append(f"{a} -> {b}")
    both = {pair: between[pair] for pair in between if pair[::-1] in between}
    assert both == {}


def test_only_tracking_imports_mlflow_and_only_launch_imports_submitit():
    for library, home in (("mlflow", "ablate.tracking"), ("submitit", "ablate.launch")):
        users = {m for m, libs in EXTERNAL.items() if library in libs}
        assert users and all(m.startswith(home) for m in users), sorted(users)
