"""The import graph, read from the source (``ast``; nothing is imported): the data plane never
imports the control plane, the contract at the bottom imports neither, Core ML compression sits
above the backends, and no module depends on itself round a cycle.

Every import counts, a function's lazy one too (deferring an import defers loading torch, not
the dependency); only an import under ``if TYPE_CHECKING:`` is left out of the cycle check,
because it never runs (it still counts for the planes: a type is a dependency too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "orchestrator", "workers")
# What the bottom may not pull in: either plane, or a heavy library a coordinator host lacks.
CONTRACT_FORBIDDEN = (
    "orchestrator",
    "workers",
    "torch",
    "diffusers",
    "transformers",
    "coremltools",
    "numpy",
    "sqlalchemy",
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported name, resolved to the longest module of ours when it is one
    line: int
    typing_only: bool  # under ``if TYPE_CHECKING:``: never runs


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _ours(name: str, modules: dict[str, Path]) -> str:
    """``name`` as the module of ours it lives in (``workers.task.run_job`` -> ``workers.task``),
    or as written when it is not ours."""
    probe = name
    while probe:
        if probe in modules:
            return probe
        probe = probe.rpartition(".")[0]
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            hidden = typing_only or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, _ours(alias.name, modules), child.lineno, hidden)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*up, base] if base else up)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in modules else _ours(base, modules)
                    yield Import(module, target, child.lineno, hidden)
            yield from walk(child, hidden)

    for found in walk(tree, False):
        if found.target != module:
            yield found


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = module_files()
    found = (i for name, path in modules.items() for i in imports_of(name, path, modules))
    return list(dict.fromkeys(found))  # ``from a import b, c`` names module ``a`` once


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _where(i: Import) -> str:
    return f"{i.source} (line {i.line}) imports {i.target}"


def test_the_data_plane_never_imports_the_control_plane(graph: list[Import]) -> None:
    wrong = [
        _where(i) for i in graph if _under(i.source, "workers") and _under(i.target, "orchestrator")
    ]
    assert wrong == [], "workers/ must not import orchestrator/:\n" + "\n".join(wrong)


def test_the_contract_imports_neither_plane_nor_a_heavy_library(graph: list[Import]) -> None:
    wrong = [
        _where(i)
        for i in graph
        if _under(i.source, "contract")
        and any(_under(i.target, name) for name in CONTRACT_FORBIDDEN)
    ]
    assert wrong == [], "contract/ must stay at the bottom:\n" + "\n".join(wrong)


def test_compression_builds_on_the_backends_never_the_reverse(graph: list[Import]) -> None:
    wrong = [
        _where(i)
        for i in graph
        if _under(i.source, "workers.backends") and _under(i.target, "workers.compression")
    ]
    assert wrong == [], "workers/backends must not import workers/compression:\n" + "\n".join(wrong)


def cycles(edges: list[Import]) -> list[list[Import]]:
    """One cycle through each strongly connected group of modules, as its imports in order."""
    out: dict[str, dict[str, Import]] = {}
    for i in edges:
        out.setdefault(i.source, {}).setdefault(i.target, i)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in out.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(out):
        if v not in index:
            visit(v)
    found = []
    for group in groups:
        start = min(group)
        # the shortest way back to ``start`` inside the group (breadth first)
        came: dict[str, Import] = {}
        frontier = [start]
        while frontier and start not in came:
            nxt = []
            for v in frontier:
                for w, i in sorted(out.get(v, {}).items()):
                    if w in group and w not in came:
                        came[w] = i
                        nxt.append(w)
            frontier = nxt
        path, v = [], start
        while True:
            path.append(came[v])
            v = came[v].source
            if v == start:
                break
        found.append(path[::-1])
    return found


def test_no_import_cycle(graph: list[Import]) -> None:
    ours = module_files()
    found = cycles([i for i in graph if not i.typing_only and i.target in ours])
    shown = ["\n".join("  " + _where(i) for i in cycle) for cycle in found]
    assert found == [], "import cycles:\n" + "\n\n".join(shown)


def test_the_cycle_check_sees_a_cycle() -> None:
    a_b = Import("a", "b", 1, False)
    b_c = Import("b", "c", 2, False)
    c_a = Import("c", "a", 3, False)
    assert cycles([a_b, b_c, c_a]) == [[a_b, b_c, c_a]]
    assert cycles([a_b, b_c]) == []


def test_the_store_knows_the_job_only_through_the_contract(graph: list[Import]) -> None:
    wrong = [
        _where(i)
        for i in graph
        if (_under(i.source, "orchestrator.store") or i.source == "orchestrator.models")
        and _under(i.target, "workers")
    ]
    assert wrong == [], "the store must not learn columns from workers/:\n" + "\n".join(wrong)
