"""faiss interop: the one module of vecz that imports faiss (an optional extra, `vecz[faiss]`).

`import_faiss()` returns the faiss module or raises `MissingDependency` with the pip command;
every other module (the benchmark's faiss side included) gets faiss through it.
"""

from __future__ import annotations

from typing import Any

from .errors import MissingDependency

__all__ = ["import_faiss"]


def import_faiss() -> Any:
    """The faiss module; `MissingDependency` if faiss-cpu is not installed."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependency(
            f"this needs faiss, which is not installed ({exc}); expected it from `pip install 'vecz[faiss]'` "
            "(or 'vecz[bench]' for the benchmark)"
        ) from None
    return faiss
