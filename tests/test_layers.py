"""The library's layering: no module outside cli/ imports the CLI or draws with rich, and no floor imports a higher one.

Imports inside functions count too (they are read from the source, not from
sys.modules), since probekit keeps heavy imports lazy.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import probekit

ROOT = Path(probekit.__file__).resolve().parent

# Floors, lowest first. A module may import its own floor and those below it.
FLOORS = [
    {"errors", "cache", "io", "outputs", "progress", "config", "metrics"},
    {"data", "models", "cpu_dtype", "store"},
    {"extract"},
    {"probe"},
    {"eval"},
    {"filter"},
    {"generate"},
    {"pipeline", "sweep"},
    {"demo", "__main__"},
]

def _floor(module: str) -> int:
    top = module.split(".")[1] if module.startswith("probekit.") else module
    for i, names in enumerate(FLOORS):
        if top in names:
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_layers.py")


def _library_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out.append((name, path))
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (annotations only: no run-time dependency)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("name,path", _library_modules(), ids=lambda x: str(x))
def test_library_module_never_imports_cli_or_rich(name, path):
    if name == "probekit.__main__":  # the `python -m probekit` shim is the CLI's entry point
        return
    bad = [m for m in _imports(path) if m == "cli" or m.startswith("cli.") or m == "rich" or m.startswith("rich.")]
    assert not bad, f"{name} imports {bad}: the library takes a progress callback and returns data; the CLI draws"


@pytest.mark.parametrize("name,path", _library_modules(), ids=lambda x: str(x))
def test_no_floor_imports_a_higher_floor(name, path):
    if name in ("probekit", "probekit.probe", "probekit.extract", "probekit.data", "probekit.eval", "probekit.filter", "probekit.generate"):
        return
    own = _floor(name)
    upward = [m for m in _imports(path) if m.startswith("probekit.") and _floor(m) > own]
    assert not upward, f"{name} (floor {own}) imports higher floors: {upward}"


def test_every_library_module_imports_without_the_cli():
    """Importing the whole library loads neither cli nor rich.console (a fresh interpreter, so nothing is preloaded)."""
    import subprocess
    import sys

    names = [n for n, _ in _library_modules() if n != "probekit.__main__"]
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "bad = [m for m in sys.modules if m == 'cli' or m.startswith('cli.') or m == 'rich.console']\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "", f"importing the library loaded {out.stdout.strip()}"


def test_every_library_module_is_importable():
    for mod in pkgutil.walk_packages(probekit.__path__, "probekit."):
        if mod.name != "probekit.__main__":
            importlib.import_module(mod.name)
