"""The layout of benchmarks/: scripts import only library modules, every script's --help works, no file is long.

A script is a file with an `if __name__ == "__main__":` block; the rest of benchmarks/ (harness.py, naive.py,
the study modules) are libraries. Scripts share code only through libraries, so no file under benchmarks/
may import a script, and every script has the same shape: `add_cli_args(parser)`, `main(args)`, and a
`__main__` block of three statements that builds the parser, adds the options and calls main.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
FILES = sorted([*BENCH.glob("*.py"), *(BENCH / "adhoc").glob("*.py")])
MAX_LINES = 600


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def main_block(tree: ast.Module) -> ast.If | None:
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
                and node.test.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                                            for c in node.test.comparators)):
            return node
    return None


TREES = {path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in FILES}
SCRIPTS = [path for path, tree in TREES.items() if main_block(tree) is not None]


def imported_modules(path: Path, tree: ast.Module) -> set[str]:
    """Every module `path` imports, absolute (`from benchmarks import x` counts as benchmarks.x; relative imports resolved)."""
    package = module_name(path).rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def test_the_layout_has_scripts_and_libraries():
    names = {p.name for p in SCRIPTS}
    assert {"run_speed.py", "run_gpu.py", "run_scale.py", "reproduce.py", "ablations.py", "generation_study.py"} <= names
    assert {"harness.py", "naive.py"} <= {p.name for p in FILES} - names


def test_no_file_imports_a_script():
    scripts = {module_name(p): p for p in SCRIPTS}
    offenders = [f"{path.relative_to(ROOT)} imports {name}" for path, tree in TREES.items()
                 for name in sorted(imported_modules(path, tree) & set(scripts)) if scripts[name] != path]
    assert not offenders, "scripts must share code through library modules:\n" + "\n".join(offenders)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(BENCH)))
def test_script_shape(path):
    """add_cli_args(parser) + main(args) + a three-statement __main__ block (parser, options, main)."""
    tree = TREES[path]
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "add_cli_args" in functions and "main" in functions, f"{path.name}: needs add_cli_args(parser) and main(args)"
    assert [a.arg for a in functions["main"].args.args] == ["args"], f"{path.name}: main takes the parsed args"
    block = main_block(tree)
    assert len(block.body) == 3, f"{path.name}: the __main__ block builds the parser, adds the options and calls main"
    assert "add_cli_args" in ast.unparse(block.body[1]) and "main(" in ast.unparse(block.body[2])


@pytest.fixture(scope="module")
def helps() -> dict[Path, subprocess.CompletedProcess]:
    """Every script's --help, each in its own interpreter, a few at a time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "120"}

    def run(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(path), "--help"], cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SCRIPTS, pool.map(run, SCRIPTS)))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(BENCH)))
def test_help_works(helps, path):
    proc = helps[path]
    assert proc.returncode == 0, f"{path.name} --help exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    assert proc.stdout.startswith("usage: "), proc.stdout[:500]


def test_no_long_files():
    long = {str(p.relative_to(ROOT)): n for p in sorted(BENCH.rglob("*.py")) if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
