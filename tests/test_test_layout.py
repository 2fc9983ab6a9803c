"""The tests' own layout: no test module is a library for another.

Shared fixtures live in tests/conftest.py, shared plain helpers in tests/helpers.py (and the
store writer and tiny model builder in tests/store_factory.py, tests/tiny_model.py); a module
named test_*.py holds tests only, so none of the files under tests/ imports one, at the top or
inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TEST_MODULES = {p.stem for p in TESTS.glob("test_*.py")}


def imported_test_modules(source: str) -> list[str]:
    """The test modules (by stem) that `source` imports, wherever the import sits."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            names = [base] + [f"{base.rstrip('.')}.{a.name}" if base.strip(".") else a.name for a in node.names]
        else:
            continue
        for name in names:
            last = name.rsplit(".", 1)[-1]
            head = name[: -len(last)].strip(".")
            if last.startswith("test_") and head in ("", "tests"):
                found.append(last)
    return found


def test_the_checker_sees_every_form_of_import():
    sources = {
        "from tests.test_fit import fit": ["test_fit"],
        "import tests.test_fit": ["test_fit"],
        "import tests.test_fit as tf": ["test_fit"],
        "from tests import test_fit, helpers": ["test_fit"],
        "from .test_fit import fit": ["test_fit"],
        "from . import test_fit": ["test_fit"],
        "def f():\n    from tests.test_hostile_outputs import run_cli\n": ["test_hostile_outputs"],
        "from tests.helpers import fit\nfrom tests.store_factory import make_store\nimport tests.tiny_model": [],
        "from probekit.eval.evaluate import test_split": [],  # a name that starts with test_, not a test module
    }
    for source, expected in sources.items():
        assert sorted(set(imported_test_modules(source))) == expected, source


def test_no_test_module_imports_another():
    offenders = {}
    for path in sorted(TESTS.glob("*.py")):
        imported = sorted(set(imported_test_modules(path.read_text(encoding="utf-8"))) & TEST_MODULES)
        if imported:
            offenders[path.name] = imported
    assert not offenders, (f"test modules used as libraries: {offenders}; move what they share into tests/conftest.py "
                           "(fixtures) or tests/helpers.py (plain helpers)")


def test_helper_modules_are_not_test_modules():
    for name in ("conftest", "helpers", "store_factory", "tiny_model"):
        assert (TESTS / f"{name}.py").is_file() and not name.startswith("test_")
