"""The import graph of engine/, trt/, calibration/ (bench/ and demos/ as importers): no cycle, not
even through a lazy import inside a function, and the layer rules of the architecture hold.

``python tests/import_graph.py`` prints the modules per layer and any cycle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import ImportGraph, build_graph, cycles, describe_cycle, layer

# Layers (tests/import_graph.layer) a layer must not import: imports point down, never up or sideways
# into a sibling. "cli" is the verbs and their shared leaf; "reference" the official code of the
# parity tests and benchmarks, which the product never imports.
FORBIDDEN: dict[str, set[str]] = {
    "models": {"core", "stream", "3D", "demo", "serve", "cli", "trt", "calibration", "reference"},
    "core": {"stream", "3D", "demo", "serve", "cli", "reference"},
    "stream": {"3D", "demo", "serve", "cli", "reference"},
    "3D": {"stream", "demo", "serve", "cli", "reference"},
    "trt": {"stream", "3D", "demo", "serve", "cli", "calibration", "reference"},
    "calibration": {"models", "stream", "3D", "demo", "serve", "reference"},
    "demo": {"serve", "cli", "reference"},
    "serve": {"demo", "cli", "reference"},
    "cli": {"reference"},
}
# What models may use from the core: the tensor contract's constants (a leaf module).
MODELS_MAY_IMPORT = {"engine.contract"}


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph()


def test_the_walk_covers_the_packages_and_scripts(graph: ImportGraph) -> None:
    for module in ("engine.cli_common", "engine.frame_source", "engine.export.onnx_export", "trt.build",
                   "calibration.intrinsics", "bench.bench_backends", "demos.live_select"):
        assert module in graph.files
    assert "engine.cli_common" in graph.edges["engine.cli"]
    assert "engine.predictor" in graph.edges["engine.cli_common"]  # a lazy import inside a function


def test_no_import_cycle(graph: ImportGraph) -> None:
    found = [describe_cycle(graph, c) for c in cycles(graph)]
    assert not found, "import cycles (break each by moving what both need into a module below them):\n" + \
        "\n".join(found)


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_layer_rules(graph: ImportGraph, importer: str) -> None:
    bad = [f"{a} (line {line}) imports {b} [{layer(b)}]"
           for a, targets in sorted(graph.edges.items()) if layer(a) == importer
           for b, line in targets.items()
           if layer(b) in FORBIDDEN[importer] and not (importer == "models" and b in MODELS_MAY_IMPORT)]
    assert not bad, f"{importer} imports a layer above or beside it:\n" + "\n".join(bad)


def test_nothing_imports_tests_demos_or_bench(graph: ImportGraph) -> None:
    bad = [f"{a} imports {t}" for a, targets in sorted(graph.foreign.items()) for t in targets
           if not (a.startswith("bench.") and t.startswith("bench."))]
    assert not bad, "\n".join(bad)


def test_the_cli_leaf_is_a_leaf(graph: ImportGraph) -> None:
    assert not [t for t in graph.edges["engine.cli_common"] if layer(t) == "cli"]
    assert not [a for a, targets in graph.edges.items() if "engine.cli" in targets], "import engine.cli_common instead"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_lazy_or_type_checking_cycle_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "engine/__init__.py": "",
        "engine/a.py": "def f():\n    from engine.b import g\n",
        "engine/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine import c\n",
        "engine/c.py": "from . import a\n",
        "engine/d.py": "import engine.a\n",
        "trt/__init__.py": "",
        "calibration/__init__.py": "",
        "demos/app.py": "import tests.refs\nfrom engine import d\n",
    })
    graph = build_graph(root)
    (cycle,) = cycles(graph)
    assert cycle == ["engine.a", "engine.b", "engine.c", "engine.a"]
    assert describe_cycle(graph, cycle) == "engine.a (line 2) -> engine.b (line 3) -> engine.c (line 1) -> engine.a"
    assert graph.edges["demos.app"] == {"engine.d": 2} and graph.foreign["demos.app"] == {"tests.refs": 1}
