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
    return ["vecz"] if folder == ("engine", "_toplevel") else ["vecz", folder[0]]


def _imports(path: Path) -> set[str]:
    """Top-level modules a file imports; vecz's own imports (relative ones resolved) as
    'vecz.<subpackage>'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()

    def add(name: str) -> None:
        parts = name.split(".")
        found.add(".".join(parts[:2]) if parts[0] == "vecz" and len(parts) > 1 else parts[0])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path)[: len(_package_of(path)) - node.level + 1]
                add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                add(node.module)
    return found


@pytest.mark.parametrize("package", ["kernels", "formats"])
def test_package_imports_flow_one_way(package):
    files = sorted((REPO / package).glob("*.py"))
    assert files, f"no modules found in {package}/"
    for path in files:
        bad = _imports(path) - ALLOWED[package] - STDLIB_OK[package]
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}; allowed: {sorted(ALLOWED[package])}"


def test_faiss_stays_out_of_the_library():
    for package in ("engine", "kernels", "formats"):
        for path in (REPO / package).glob("*.py"):
            if path.name == "bench.py":  # the compression benchmark runs faiss baselines by design
                continue
            assert "faiss" not in _imports(path), f"{path.relative_to(REPO)} imports faiss"


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
