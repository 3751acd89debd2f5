"""The layout stays honest: one import package `vecz` (vecz.engine from engine/, vecz.kernels
from kernels/, vecz.formats from formats/), imports flow engine -> formats -> kernels, kernels
import only numpy and numba (llvmlite is numba's own code generator, used for intrinsics),
faiss only in tests and bench, no pickle anywhere, and Numba really compiles (a disabled JIT
or a kernel without the cache preset fails here instead of passing slowly)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import numba
import pytest

REPO = Path(__file__).resolve().parents[1]

ALLOWED = {
    "kernels": {"numpy", "numba", "llvmlite", "vecz.kernels", "__future__"},
    "formats": {"numpy", "numba", "llvmlite", "pyarrow", "zstandard", "vecz.kernels", "vecz.formats", "__future__"},
}
# kernels never do I/O: they get a short list of pure stdlib modules; formats may use any.
STDLIB_OK = {
    "kernels": {"typing", "dataclasses", "math", "enum", "functools"},
    "formats": set(sys.stdlib_module_names),
}


def _package_of(path: Path) -> list[str]:
    """The installed package a repository file belongs to, e.g. engine/store.py -> vecz.engine."""
    folder = path.parent.relative_to(REPO).parts
    return ["vecz"] if folder == ("engine", "_toplevel") else ["vecz", *folder]


def _import_targets(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, at any depth (imports inside functions
    too), relative ones resolved: ``import a.b`` -> ("a.b", []); ``from .x import y`` in
    engine/store.py -> ("vecz.engine.x", ["y"])."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, list[str]]] = []
    # imports under `if TYPE_CHECKING:` are for annotations only and never run
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                module = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [alias.name for alias in node.names]))
    return out


def _imports(path: Path) -> set[str]:
    """Top-level modules a file imports; vecz's own imports (relative ones resolved) as
    'vecz.<subpackage>'."""
    found = set()
    for module, _ in _import_targets(path):
        parts = module.split(".")
        found.add(".".join(parts[:2]) if parts[0] == "vecz" and len(parts) > 1 else parts[0])
    return found


def _module_name(path: Path) -> str:
    """The dotted name a repository file is imported as, e.g. engine/bench/data.py ->
    vecz.engine.bench.data, engine/bench/__init__.py -> vecz.engine.bench."""
    package = _package_of(path)
    return ".".join(package if path.name == "__init__.py" else package + [path.stem])


@pytest.mark.parametrize("package", ["kernels", "formats"])
def test_package_imports_flow_one_way(package):
    files = sorted((REPO / package).glob("*.py"))
    assert files, f"no modules found in {package}/"
    for path in files:
        bad = _imports(path) - ALLOWED[package] - STDLIB_OK[package]
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}; allowed: {sorted(ALLOWED[package])}"


def test_faiss_stays_out_of_the_library():
    """faiss (an optional extra) is imported by engine/faiss_interop.py alone; every other
    module, the benchmark's faiss side (engine/bench/faiss_side.py) included, calls its
    import_faiss()."""
    importers = sorted(str(path.relative_to(REPO)) for package in ("engine", "kernels", "formats")
                       for path in (REPO / package).rglob("*.py") if "faiss" in _imports(path))
    assert importers == ["engine/faiss_interop.py"], f"faiss imported outside engine/faiss_interop.py: {importers}"
    assert "import_faiss" in (REPO / "engine" / "bench" / "faiss_side.py").read_text()


def test_engine_modules_import_no_cycle():
    """The modules of engine/ (the bench/ wing included) import each other without a cycle,
    counting imports inside functions; and the --budget search builds on the bench runner
    and report, never the reverse."""
    modules = {_module_name(path): path for path in sorted((REPO / "engine").rglob("*.py"))}
    assert {"vecz.engine.store", "vecz.engine.bench", "vecz.engine.bench.runner"} <= set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for module, names in _import_targets(path):
            subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}  # `from pkg import submodule`
            deps |= subs
            if module in modules and (not subs or len(subs) < len(names)):
                deps.add(module)
        graph[name] = deps - {name}
    # a package's __init__ runs before its submodules, but that is a cycle only if it imports
    # one that imports the package back, which an edge to the package itself shows here
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    budget_users = sorted(n for n, deps in graph.items() if "vecz.engine.bench.budget" in deps)
    assert budget_users == ["vecz.engine.bench", "vecz.engine.cli"], budget_users


def test_no_pickle_anywhere():
    for folder in ("engine", "kernels", "formats", "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for banned in ("import " + "pickle", "allow_" + "pickle=True"):  # split: this file stays clean
                assert banned not in text, f"{banned!r} in {path}"


def test_numba_jit_is_on_and_every_kernel_is_cached():
    assert not numba.config.DISABLE_JIT, "NUMBA_DISABLE_JIT is set: kernels would run as slow Python"
    import vecz.kernels

    dispatchers = 0
    for info in pkgutil.iter_modules(vecz.kernels.__path__):
        module = importlib.import_module(f"vecz.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.__module__ == module.__name__:
                dispatchers += 1
                assert obj._cache.__class__.__name__ == "FunctionCache", f"{module.__name__}.{name} lacks cache=True"
                assert obj.targetoptions.get("nogil"), f"{module.__name__}.{name} lacks nogil=True"
    assert dispatchers >= 20, f"expected the jitted kernels, found {dispatchers}"


def test_one_import_package_named_vecz():
    """Everything imports vecz.*: no file imports the repository folders as top-level
    packages (a PyPI package named `kernels` or `formats` would shadow them), and the tests
    run against the installed package."""
    import vecz
    import vecz.engine
    import vecz.errors

    for folder in ("engine", "kernels", "formats", "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            bad = _imports(path) & {"engine", "kernels", "formats"}
            assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)} as top-level packages; use vecz.*"
    assert vecz.__version__ and vecz.Store is vecz.engine.Store
    assert issubclass(vecz.errors.StoreLocked, vecz.errors.VeczError)
    for name in ("engine", "kernels", "formats"):
        assert name not in sys.modules, f"a top-level module {name!r} was imported"
