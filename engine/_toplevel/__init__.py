"""vecz: compressed vector storage — compact codes in RAM, exact vectors on disk.

The public surface::

    from vecz import Store, Codec
    store = Store.create("idx/", dim=384, metric="cosine", codec="RB1", dense="f32")
    ids = store.add(vectors)
    scores, ids = store.search(queries, k=10, rerank=50)

`vecz.errors` holds the typed errors (all rooted in `VeczError`). The package is built
from the repository's folders (pyproject.toml, ``[tool.setuptools.package-dir]``):
`vecz.engine` from engine/ (the store, codecs, CLI, benchmark), `vecz.kernels` from
kernels/ (Numba kernels on plain arrays), `vecz.formats` from formats/ (bytes on disk);
this file is engine/_toplevel/__init__.py. Importing vecz compiles nothing: Numba loads
(or compiles, the first time on a CPU) each kernel when it first runs.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .engine import parallel as _parallel  # noqa: F401  first: picks Numba's threading layer
from . import errors
from .engine.codecs import Codec, SearchResult, SearchStats, code_size, format_spec, parse_spec
from .engine.store import Store, check_store
from .errors import VeczError

__all__ = [
    "__version__",
    "Store",
    "Codec",
    "SearchResult",
    "SearchStats",
    "check_store",
    "code_size",
    "format_spec",
    "parse_spec",
    "errors",
    "VeczError",
]
