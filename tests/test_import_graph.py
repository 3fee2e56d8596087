"""The import graph of ``secagg`` and ``fedlm``: no cycles (counting imports inside functions, which
only hide a cycle), and no layer imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("secagg", "fedlm")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body (``from . import x`` names x)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name, edges = _module(path), set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                        base = base[: len(base) - (node.level - 1)]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    if target.split(".")[0] not in PACKAGES:
                        continue
                    subs = [f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")]
                    edges.update(subs or [target])
                elif isinstance(node, ast.Import):
                    edges.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
            graph[name] = {e for e in edges if _exists(e) and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_scanner_sees_the_packages_and_would_see_a_cycle() -> None:
    graph = import_graph()
    assert "secagg.protocols.secagg.server" in graph and "fedlm.loop" in graph
    assert "secagg.hazmat.shamir" in graph["secagg.protocols.secagg.server"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_upward_imports() -> None:
    """hazmat knows only itself and the errors; protocols never reach the drivers, audit, adapters or
    CLI above them; nothing in secagg imports fedlm."""
    above_protocols = ("secagg.simulation", "secagg.router", "secagg.audit", "secagg.adapters", "secagg.cli")
    for module, targets in import_graph().items():
        for target in targets:
            if module.startswith("secagg.hazmat"):
                assert target.startswith("secagg.hazmat") or target == "secagg.errors", (module, target)
            if module.startswith("secagg.protocols"):
                assert not target.startswith(above_protocols), (module, target)
            if module.startswith("secagg"):
                assert not target.startswith("fedlm"), (module, target)
