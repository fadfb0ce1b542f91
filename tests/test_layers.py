"""The folder tree is the architecture: every import inside the library points down the layers, and no module
imports itself back through others (README, Layout; docs/design.md, The library's layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from brats_seg.orchestration.provenance import PROJECT_ROOT

SRC = PROJECT_ROOT / "src"
# Bottom to top: a module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("brats_seg", "brats_seg.errors", "brats_seg.console", "brats_seg.progress", "brats_seg.runtime"),
    ("brats_seg.io",),
    ("brats_seg.config", "brats_seg.base_params", "brats_seg.params_file"),
    ("brats_seg.orchestration",),
    ("brats_seg.data",),
    ("brats_seg.models",),
    ("brats_seg.inference",),
    ("brats_seg.evaluation",),
    ("brats_seg.training",),
    ("brats_seg.registry",),
    ("brats_seg.sections",),
    ("brats_seg.reporting",),
    ("brats_seg.runners",),
    ("brats_seg.predict", "brats_seg.cli"),
)
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "brats_seg").rglob("*.py"))}


def layer(module: str) -> int:
    """The index in LAYERS of the longest prefix naming ``module`` or a package holding it."""
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank is not None, f"{module} is in no layer of tests/test_layers.py: add its package to LAYERS"
    return rank


def imports(module: str) -> set[str]:
    """The library modules ``module`` imports anywhere in its file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {name for name in found if name in MODULES and name != module}


GRAPH = {m: imports(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    up = sorted(dep for dep in GRAPH[module] if layer(dep) > layer(module))
    assert not up, f"{module} (layer {layer(module)}) imports a higher layer: {', '.join(up)}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [module, dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_300_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(PROJECT_ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_the_checks_catch_an_upward_import_and_a_cycle(monkeypatch):
    """The checks above can fail: an upward import and a two-module cycle, planted in the graph."""
    monkeypatch.setitem(GRAPH, "brats_seg.io.atomic", GRAPH["brats_seg.io.atomic"] | {"brats_seg.registry.tracking"})
    with pytest.raises(AssertionError, match="imports a higher layer: brats_seg.registry.tracking"):
        test_imports_point_down_the_layers("brats_seg.io.atomic")
    monkeypatch.setitem(GRAPH, "brats_seg.errors", GRAPH["brats_seg.errors"] | {"brats_seg.io.atomic"})
    with pytest.raises(pytest.fail.Exception, match="import cycle: .*brats_seg.errors"):
        test_no_import_cycle()
