"""The project's import graph, read with ``ast`` (nothing is imported or run).

Nodes are the modules of the packages ``engine``, ``trt`` and ``calibration`` plus the scripts of
``bench/`` and ``demos/``. An edge ``a -> b`` means module ``a`` imports project module ``b``
anywhere in its file: at the top, lazily inside a function, or under ``if TYPE_CHECKING:`` (a type
annotation is a dependency too, and such a cycle only waits for someone to drop the guard).
``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``; importing ``a.b.c`` is an edge to ``a.b.c`` only (Python runs the parent packages'
``__init__`` first, but that is a consequence of the layout, not a dependency the module chose).

Run as a script for the figures of a tree: ``python tests/import_graph.py [ROOT]`` prints the
modules per layer, the lines per layer and every cycle.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("engine", "trt", "calibration")
SCRIPT_DIRS = ("bench", "demos")  # importers only: nothing may import them
REPO = Path(__file__).resolve().parents[1]


@dataclass
class ImportGraph:
    """``edges[a]``: project modules that ``a`` imports, with the line of the first such import."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    foreign: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # e.g. tests.*

    def lines(self, module: str) -> int:
        return len(self.files[module].read_text(encoding="utf-8").splitlines())


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted target, line) of every import in ``tree``; for ``from X import a, b`` both ``X.a`` and
    ``X.b`` (resolved against the module list later)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.extend((f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno)
                         for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def build_graph(root: Path = REPO) -> ImportGraph:
    graph = ImportGraph(root)
    paths = [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    paths += [p for d in SCRIPT_DIRS if (root / d).is_dir() for p in sorted((root / d).glob("*.py"))]
    for path in paths:
        graph.files[module_name(root, path)] = path
    for module, path in graph.files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for target, line in _imports(tree, module, path.name == "__init__.py"):
            resolved = target if target in graph.files else target.rpartition(".")[0]
            top = target.split(".")[0]
            if resolved in graph.files and resolved != module:
                graph.edges[module].setdefault(resolved, line)
            elif top in ("tests", *SCRIPT_DIRS):
                graph.foreign[module].setdefault(target if top == "tests" else resolved or target, line)
    return graph


def components(graph: ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (each a set of mutual importers)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan, recursive: the graph is a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.edges.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph.files):
        if v not in index:
            strongconnect(v)
    return sorted(components)


def cycles(graph: ImportGraph) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` per strongly connected component."""
    return [_cycle_in(graph, comp) for comp in components(graph)]


def _cycle_in(graph: ImportGraph, comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (BFS)."""
    members, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.edges.get(v, {})):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp  # unreachable for a true component


def describe_cycle(graph: ImportGraph, cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph.edges[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def layer(module: str) -> str:
    """The ARCHITECTURE.md layer of a module (``cli`` for the verbs, which sit on top)."""
    parts = module.split(".")
    if parts[0] in ("bench", "demos", "trt", "calibration"):
        return "trt (cli)" if module == "trt.cli" else parts[0]
    if module in ("engine.cli", "engine.cli_common") or parts[-1] in ("cli", "cli_io", "track_cli"):
        return "cli"
    return _ENGINE_LAYERS.get(parts[1] if len(parts) > 1 else "", "core")


_ENGINE_LAYERS = {"models": "models", "stream": "stream", "gaze": "stream", "lift": "3D", "realsense": "3D",
                  "demo": "demo", "serve": "serve", "reference": "reference"}


def report(root: Path) -> str:
    graph = build_graph(root)
    by_layer: dict[str, list[str]] = defaultdict(list)
    for m in graph.files:
        by_layer[layer(m)].append(m)
    out = ["layer          modules  lines"]
    for name in sorted(by_layer):
        out.append(f"{name:<14} {len(by_layer[name]):>7} {sum(graph.lines(m) for m in by_layer[name]):>6}")
    found = components(graph)
    out.append(f"import cycles: {len(found)} groups of modules that import each other")
    for comp in found:
        out.append(f"  {len(comp)} modules: {', '.join(comp)}")
        out.append(f"    e.g. {describe_cycle(graph, _cycle_in(graph, comp))}")
    out.append(f"imports of tests/bench/demos: {sum(len(v) for v in graph.foreign.values())}")
    out += [f"  {m} -> {t}" for m, ts in sorted(graph.foreign.items()) for t in ts]
    return "\n".join(out)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO))
