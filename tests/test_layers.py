"""The package's shape: every import of a quantlib module points down the layers, and there is no cycle.

Layers, top to bottom: cli -> commands -> stages -> engine -> meta -> backtest -> sleeve -> portfolio -> data -> core.
A module may import its own layer or a lower one; own-module imports sit at the top of files. (`cli` names
its commands as "module:function" strings and imports one only when it runs: no static import to check.)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quantlib"
LAYERS = ["core", "data", "portfolio", "sleeve", "backtest", "meta", "engine", "stages", "commands", "cli"]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported quantlib module, imported at the top of the file) for every import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantlib."):
            names = [f"{node.module}.{a.name}" for a in node.names]
            targets = [n for n in names if (PACKAGE.parent / n.replace(".", "/")).with_suffix(".py").exists()
                       or (PACKAGE.parent / n.replace(".", "/")).is_dir()] or [node.module]
            out += [(t, id(node) in top) for t in targets]
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("quantlib.")]
    return out


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py")) if _module(p) != "quantlib"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_sit_at_the_top(module):
    for target, at_top in _imports(MODULES[module]):
        assert _layer(target) <= _layer(module), f"{module} imports {target}: an upward import"
        assert at_top, f"{module} imports {target} inside a function: move it to the top of the file"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle a depth-first walk of `graph` meets (each as the modules on it)."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    graph = {m: {t for t, _ in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    assert _cycles(graph) == []


def test_no_module_holds_several_concepts():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 620}
    assert not long, f"modules over ~600 lines (split them by concept): {long}"
