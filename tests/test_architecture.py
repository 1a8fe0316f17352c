"""Imports run one way: every package imports only from the layers below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import hepfm

#: Package (or top-level module) -> layer; a module may import only from a strictly lower layer.
LAYERS = {
    "errors": 0, "_version": 0,
    "contracts": 1, "registry": 1, "options": 1, "io": 1, "fastjet_quiet": 1,
    "data": 2, "nn": 2, "losses": 2, "evaluation": 2,
    "configs": 3, "physics": 3, "generation": 3,
    "models": 4, "heads": 4,
    "objectives": 5,
    "training": 6,
    "workflows": 7,
    "studies": 8,
    "cli": 9,
    "__init__": 10,  # the package root (``hepfm.load``)
}
ROOT = Path(hepfm.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The hepfm packages a module imports (at any depth: lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n.split(".")[1] for n in names if n.startswith("hepfm.")}
        if any(n == "hepfm" for n in names):
            out.add("__init__")
    return out


def test_every_package_has_a_layer():
    packages = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")}
    assert packages == set(LAYERS)


def test_imports_run_downward_only():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        own = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for target in imports_of(path) - {own}:
            if LAYERS[target] >= LAYERS[own]:
                upward.append(f"{path.relative_to(ROOT)} imports hepfm.{target}")
    assert not upward, upward


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from hepfm.workflows.classify import train\n")
    assert imports_of(bad) == {"workflows"}
