"""The layering beyond import-linter's contract (pyproject ``[tool.importlinter]``, run by ``make test``).

import-linter sees the ``benchsuite`` folder only; the plugins live in attacks/, defenses/ and plugins/.
Checked here: a plugin imports only the contracts and the methods' shared machinery, the core never
imports a plugin, and no module-level import circle exists anywhere (type-only imports included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a plugin may build on: the contracts and the methods' shared machinery (plus other plugins' modules)
PLUGIN_MAY_IMPORT = {"api", "core", "data", "nets", "ssl", "eval", "poison_search", "sslcleanse", "decree", "distill",
                     "encoder_attacks", "triggers",
                     "attacks", "defenses"}
PLUGIN_PACKAGES = {"attacks", "defenses"}


def imported_benchsuite_parts(source: str) -> set[str]:
    """The ``benchsuite.<part>`` subpackages a module's source imports anywhere (functions, TYPE_CHECKING)."""
    parts = set()
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "benchsuite" and len(pieces) > 1:
                parts.add(pieces[1])
            elif pieces == ["benchsuite"] and isinstance(node, ast.ImportFrom):
                parts.update(a.name for a in node.names)
    return parts


def _sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_the_checker_sees_imports_inside_functions_and_type_checking_blocks():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from benchsuite.stages import Stages\n"
              "def f():\n    import benchsuite.engine.grid\n    from benchsuite import protocols\n")
    assert imported_benchsuite_parts(source) == {"stages", "engine", "protocols"}


@pytest.mark.parametrize("path", _sources("attacks", "defenses", "plugins"), ids=lambda p: p.name)
def test_plugins_import_only_contracts_and_machinery(path):
    forbidden = imported_benchsuite_parts(path.read_text()) - PLUGIN_MAY_IMPORT
    assert not forbidden, f"{path.name} imports benchsuite.{', benchsuite.'.join(sorted(forbidden))}"


def test_the_core_imports_no_plugin():
    offenders = [p.relative_to(ROOT) for p in _sources("benchsuite")
                 if imported_benchsuite_parts(p.read_text()) & PLUGIN_PACKAGES]
    assert not offenders, f"these core modules import a plugin's internals: {offenders}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph`` (components of more than one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:  # iterative Tarjan: the graph is deep enough for Python's recursion limit
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_type_only_imports_included():
    graph = grimp.build_graph("benchsuite", include_external_packages=False)  # TYPE_CHECKING imports count
    modules = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert strongly_connected(modules) == []
