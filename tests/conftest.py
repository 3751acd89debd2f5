"""Shared fixtures: the real datasets in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VECZ_DATA", REPO.parent / "shared" / "data"))


class Dataset:
    def __init__(self, name: str, n_queries: int) -> None:
        folder = DATA / name
        self.name = name
        self.base = np.load(folder / "base.npy", allow_pickle=False).astype(np.float32)
        self.queries = np.load(folder / "queries.npy", allow_pickle=False)[:n_queries].astype(np.float32)
        self.gt = np.load(folder / "gt_ids.npy", allow_pickle=False)[:n_queries].astype(np.int64)


_cache: dict[str, Dataset] = {}


def _dataset(name: str, n_queries: int) -> Dataset:
    if not (DATA / name / "base.npy").exists():
        pytest.skip(f"dataset {name} not found under {DATA} (set VECZ_DATA or place ../shared/data)")
    key = f"{name}:{n_queries}"
    if key not in _cache:
        _cache[key] = Dataset(name, n_queries)
    return _cache[key]


@pytest.fixture(scope="session")
def minilm() -> Dataset:
    """wordnet-minilm (117,647 x 384) with its first 1000 queries."""
    return _dataset("wordnet-minilm", 1000)


@pytest.fixture(scope="session")
def gemma() -> Dataset:
    """wordnet-gemma (24,000 x 768, Matryoshka-trained) with its first 1000 queries."""
    return _dataset("wordnet-gemma", 1000)


def _isolate_numba_cache() -> None:
    """Numba's on-disk cache keys a function on its own file only, so editing
    kernels/topk.py leaves stale machine code in callers cached from other modules. Tests
    key the cache directory on a hash of every kernel source, so they always run the code
    on disk."""
    import hashlib

    digest = hashlib.sha256(b"vecz.kernels")  # cached code records the module name it was compiled in
    for path in sorted((REPO / "kernels").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache" / digest.hexdigest()[:16]))
    # pytest imports numba.core.errors for pyproject's filterwarnings before this file runs,
    # so numba has read its environment already: re-read it (the kernels, whose cache
    # locators are chosen when they are decorated, are imported later, by the tests).
    import numba

    numba.config.reload_config()


_isolate_numba_cache()

# Imported once the cache directory is set (importing vecz decorates the kernels, which fixes
# where they are cached): the one recall@k of vecz, which test_quality.py imports from here.
from vecz.engine.bench.metrics import recall_at  # noqa: E402,F401
