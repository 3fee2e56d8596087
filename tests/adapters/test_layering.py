"""Layering: flwr is imported by the Flower adapter modules and nowhere else in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import secagg


def test_only_the_flower_adapters_import_flwr() -> None:
    root = Path(secagg.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "flwr" or n.startswith("flwr.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"adapters/flower.py", "adapters/flower_node.py", "adapters/flower_strategy.py"}
