"""The shape the architecture promises (docs/architecture.md): small modules, classes
with a narrow public face, and a provider contract whose required part is small.
The import layers themselves are checked by lint-imports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from computesdkd.providers import base

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "daemon" / "computesdkd", ROOT / "clients" / "python" / "computesdk"]
MAX_LINES = 450
MAX_PUBLIC_METHODS = 25


def _modules() -> list[Path]:
    return [
        p
        for root in SOURCES
        for p in root.rglob("*.py")
        if "agentpb" not in p.parts and not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
    ]


def test_no_module_is_large() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"split these modules (over {MAX_LINES} lines): {big}"


def test_no_class_has_a_wide_public_face() -> None:
    wide = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            public = [
                f.name
                for f in node.body
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                and not f.name.startswith("_")
                and not any(_is_property(d) for d in f.decorator_list)
            ]
            if len(public) > MAX_PUBLIC_METHODS:
                wide[f"{p.relative_to(ROOT)}:{node.name}"] = len(public)
    assert not wide, f"over {MAX_PUBLIC_METHODS} public methods: {wide}"


def _is_property(decorator: ast.expr) -> bool:
    """Properties are attributes to the caller, not methods."""
    return (isinstance(decorator, ast.Name) and decorator.id == "property") or (
        isinstance(decorator, ast.Attribute) and decorator.attr in ("setter", "getter")
    )


def test_the_provider_contract_requires_little() -> None:
    required = [
        name
        for name, fn in inspect.getmembers(base.Provider, inspect.isfunction)
        if getattr(fn, "__isabstractmethod__", False)
    ]
    assert 0 < len(required) < 15, required


def test_no_import_cycle_between_modules() -> None:
    """lint-imports keeps the layers; this finds a cycle anywhere, within a layer too
    (strongly connected components of the module graph, by grimp, import-linter's
    own graph builder)."""
    import grimp

    graph = grimp.build_graph("computesdkd")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    assert not cycles, cycles
