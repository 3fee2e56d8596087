"""No module outside a party touches its private members.

An AST scan: the private members of SecAggServer and SecAggClient are the ``_names`` their classes
define (methods) or assign on ``self``; no code outside their own modules may read one as
``<expr>._name`` where ``<expr>`` is not ``self``/``cls`` (``super()._name`` counts), nor subclass
the parties to reach them. The parties are every protocol's client and server and their shared
skeleton (:mod:`secagg.protocols.base`). ``self._x`` inside other classes and module-private functions are fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTIES = {
    "SecAggServer": ROOT / "secagg/protocols/secagg/server.py",
    "SecAggClient": ROOT / "secagg/protocols/secagg/client.py",
    "CkksServer": ROOT / "secagg/protocols/ckks/server.py",
    "CkksClient": ROOT / "secagg/protocols/ckks/client.py",
    "_Party": ROOT / "secagg/protocols/base.py",
    "ClientParty": ROOT / "secagg/protocols/base.py",
    "ServerParty": ROOT / "secagg/protocols/base.py",
}
SCANNED = ("secagg", "benchmarks", "fedlm", "tests")


def private_members(path: Path, name: str) -> set[str]:
    """The ``_names`` class ``name`` defines or assigns on ``self`` (dunders excluded)."""
    tree = ast.parse(path.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)
    found = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            found.add(node.attr)
    return {n for n in found if n.startswith("_") and not n.startswith("__")}


def violations(path: Path, private: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                out.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if ast.unparse(base).split(".")[-1] in PARTIES:
                    out.append(f"{where}:{node.lineno}: class {node.name} subclasses {ast.unparse(base)}")
    return out


def test_private_members_are_found() -> None:
    server = private_members(PARTIES["SecAggServer"], "SecAggServer")
    client = private_members(PARTIES["SecAggClient"], "SecAggClient")
    assert {"_inbox", "_tag_key", "_channels", "_send", "_close_unmask"} <= server
    assert {"_masked_vector", "_neighbours", "_held", "_channel"} <= client
    assert not {"receive", "advance", "open", "seal", "view", "handle"} & (server | client)


def test_the_scan_flags_what_it_should(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def _helper(): pass\n"
        "class A:\n    def f(self, server):\n        self._inbox = _helper()\n        return server._tag_key, other._x\n"
        "class B(SecAggServer):\n    def g(self):\n        return super()._inbox\n"
    )
    found = sorted(f.split(": ", 1)[1] for f in violations(sample, {"_inbox", "_tag_key", "_helper"}))
    assert found == ["class B subclasses SecAggServer", "server._tag_key", "super()._inbox"]


def test_no_module_outside_a_party_touches_its_private_members() -> None:
    private = set().union(*(private_members(path, name) for name, path in PARTIES.items()))
    own = set(PARTIES.values())
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path not in own and ".venv" not in path.parts:
                found += violations(path, private)
    assert not found, "private members of a party used outside it:\n" + "\n".join(found)
