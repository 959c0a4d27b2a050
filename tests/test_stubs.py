"""The type stubs are generated (tests/stubgen.py) and must stay what the generator makes of the
current code; the compiled module's public names and the stub's must be the same."""

from __future__ import annotations

import ast

import pytest

import fusedopt
from fusedopt import _core
from stubgen import PACKAGE, ROOT, STUBS


@pytest.mark.parametrize("path", list(STUBS), ids=[str(p.relative_to(ROOT)) for p in STUBS])
def test_stub_is_current(path):
    want = STUBS[path]()
    got = path.read_text() if path.exists() else ""
    assert got == want, f"{path.relative_to(ROOT)} is stale: run python tests/stubgen.py"


def _stub_names(tree, cls=None):
    body = tree.body if cls is None else next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    names = set()
    for n in body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Assign):
            names.update(t.id for t in n.targets if isinstance(t, ast.Name))
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
    return {x for x in names if not x.startswith("_")}


def _public(obj):
    return {x for x in dir(obj) if not x.startswith("_")}


def test_core_stub_names_what_the_module_has():
    tree = ast.parse((PACKAGE / "_core.pyi").read_text())
    module = _public(_core) - {"cpu", "cuda"}
    assert _stub_names(tree) - {"cpu", "cuda", "Algorithm"} == module
    assert _stub_names(tree, "cpu") == _public(_core.cpu)
    for cls in ("Bound", "Calls"):
        stub = {n.name for n in next(c for c in tree.body if isinstance(c, ast.ClassDef)
                                     and c.name == cls).body if isinstance(n, ast.FunctionDef)}
        assert {x for x in stub if not x.startswith("_")} == _public(getattr(_core, cls))
    if fusedopt.build_info()["cuda"]:
        assert _stub_names(tree, "cuda") == _public(_core.cuda)
