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
    {"data", "models", "placement", "cpu_dtype", "store", "store_schema"},
    {"extract"},
    {"probe"},
    {"eval"},
    {"filter"},
    {"generate"},
    {"reward"},
    {"serve", "integrations"},
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
    bad = [m for m in _imports(path) if m == "cli" or m.startswith("probekit_cli.") or m == "rich" or m.startswith("rich.")]
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
            "bad = [m for m in sys.modules if m == 'cli' or m.startswith('probekit_cli.') or m == 'rich.console']\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "", f"importing the library loaded {out.stdout.strip()}"


def test_every_library_module_is_importable():
    for mod in pkgutil.walk_packages(probekit.__path__, "probekit."):
        if mod.name != "probekit.__main__":
            importlib.import_module(mod.name)


def _module_graph() -> dict[str, set[str]]:
    """Library module -> the library modules it imports (top level, in functions and in `from pkg import module`)."""
    names = {n for n, _ in _library_modules()}
    graph = {}
    for name, path in _library_modules():
        deps = set()
        for m in _imports(path):
            if m in names:
                deps.add(m)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # `from probekit.generate import decoding` imports the module decoding
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in names}
        # The package root is the face: its `__getattr__` hands out `RewardProbe` on first use (lazy, so that
        # `import probekit` loads no torch); modules below may read `probekit.__version__` from it.
        graph[name] = set() if name == "probekit" else deps - {name}
    return graph


def test_the_package_root_imports_nothing_of_probekit_at_import_time():
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not top, "probekit/__init__.py imports at the top; re-export lazily in __getattr__"
    import probekit.reward

    assert probekit.RewardProbe is probekit.reward.RewardProbe


def test_no_module_imports_another_in_a_circle():
    """Every import counts, at the top or inside a function: a circle hidden behind a local import is still a circle."""
    graph = _module_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]


@pytest.mark.parametrize("folder", ["probekit", "cli", "benchmarks", "tests"])
def test_no_private_name_is_imported_across_modules(folder):
    """A name with a leading underscore is its module's business: what another module needs gets a public name."""
    bad = {str(p.relative_to(ROOT.parent)): names for p in sorted((ROOT.parent / folder).rglob("*.py")) if (names := _private_imports(p))}
    assert not bad, f"private names imported across modules: {bad}"


def test_the_top_level_holds_the_ground_floor_shared_resources_and_runners_only():
    """Everything after `fit` lives in a wing; at most 15 modules besides the packages sit at the top."""
    top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 15, f"{len(top)} modules at the top of probekit/: {top}"
    wings = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    assert wings == ["data", "eval", "extract", "filter", "generate", "integrations", "probe", "reward", "serve"]


@pytest.mark.parametrize("folder", ["probekit", "cli"])
def test_no_source_file_is_over_600_lines(folder):
    long = {str(p.relative_to(ROOT.parent)): n for p in sorted((ROOT.parent / folder).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, f"files over 600 lines (split them by job): {long}"


# Imports that stay inside functions, each for its measured start-up cost (seconds on the 2-core CI machine, on top of
# whatever the module already imports): the CLI loads configs, scoring and goals at start-up, and `probekit --help`
# answers in well under a second only while these stay out of it.
LAZY_IMPORTS = {
    "torch": 1.6,  # in modules the CLI loads at start-up (probe.scoring, probe.goals via filter.config)
    "transformers": 0.9,
    "sklearn": 1.2,  # logistic-regression baselines only
    "scipy": 1.9,  # scipy.stats: the filter's t-tests only (filter.significance; measured on the 2-core machine under load)
    "matplotlib": 0.5,  # only when a figure is drawn
    "faiss": 0.16,  # k-means goals only; probe.goals is on the CLI's start-up path
    "safetensors": 0.0,  # with torch, where torch is lazy
    "pydantic": 0.11,  # io.validated only: io is on the CLI's start-up path, the formats' models are not
}


@pytest.mark.parametrize("name,path", _library_modules(), ids=lambda x: str(x))
def test_imports_sit_at_the_top_unless_their_cost_is_measured(name, path):
    """probekit's own modules and the standard library are imported at the top of a file; only LAZY_IMPORTS wait for use."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    skip = _type_checking_nodes(tree)
    if name == "probekit":  # the root's lazy re-export (test_the_package_root_imports_nothing_of_probekit_at_import_time)
        skip |= {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in ast.walk(f)}
    local = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top and id(node) not in skip:
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if mod.split(".")[0] not in LAZY_IMPORTS:
                local.append(f"line {node.lineno}: {mod}")
    assert not local, f"{name} imports inside functions without a measured reason: {local}"


def test_the_cli_starts_without_torch():
    """`probekit --help` must answer fast: the CLI's modules load configs, never torch or transformers."""
    import subprocess
    import sys

    code = "import probekit_cli.main, sys; print(','.join(m for m in ('torch', 'transformers', 'matplotlib', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "", f"the CLI's start-up imported {out.stdout.strip()}"


def test_the_distribution_installs_every_package_and_the_cli_under_its_own_name():
    """pyproject lists the packages by hand (the CLI folder is mapped to probekit_cli): a new wing must be listed too."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    conf = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = sorted(".".join(p.parent.relative_to(ROOT.parent).parts) for p in ROOT.rglob("__init__.py"))
    assert sorted(set(conf["packages"]) - {"probekit_cli"}) == folders
    assert conf["package-dir"] == {"probekit_cli": "cli"} and "probekit_cli" in conf["packages"]
    assert "cli" not in conf["packages"]
