"""What the benchmark runs on: named datasets, files, and exact ground truth with its cache.

Role and contract. `load_named` opens a named dataset (`DATASETS`: the sample shipped as
`vecz.sample`, and the wordnet sets under ``$VECZ_DATA`` or ``../shared/data``) with its
texts and, under ip (the metric it was made for), its gt_ids.npy; `load_files` opens BASE
and QUERIES files (.npy without pickle, .fvecs, .parquet, .arrow; read by
`vecz.formats.importers`, float16/float64 converted to float32). `ground_truth` returns the
given truth or computes the exact top-`GT_DEPTH` (`exact.exact_topk`) once and caches it in
the user's cache directory (``$XDG_CACHE_HOME/vecz/gt``, else ``~/.cache/vecz/gt``), or in
the folder the caller names; it never writes beside the input unless that folder is named.
`dataset_truth` gives the scripts in bench/ a dataset's first queries and rows with the
truth of the metric they search with, by the same rule and from the same cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from pathlib import Path

import numpy as np

from ...formats.importers import read_ids, read_texts, read_vectors
from ..errors import DatasetNotFound, DimensionMismatch, InvalidInput, VeczError
from .exact import GT_DEPTH, exact_topk

__all__ = [
    "DATASETS",
    "GT_DEPTH",
    "Dataset",
    "dataset_dir",
    "load_files",
    "load_named",
    "dataset_folder",
    "dataset_truth",
    "default_gt_cache_dir",
    "gt_cache_path",
    "ground_truth",
]

DATASETS = ("sample", "wordnet-minilm", "wordnet-gemma")


def _repo_root() -> Path:
    """The checkout holding engine/ (for an editable install; a wheel has none)."""
    return Path(__file__).resolve().parents[2]


def dataset_dir(name: str) -> Path:
    """Folder of a named dataset.

    ``sample`` ships inside the package (`vecz.sample`, from the repository's
    ``bench/sample``); ``wordnet-minilm`` and ``wordnet-gemma`` live under ``$VECZ_DATA``
    when that is set (as in the tests), else in ``../shared/data`` beside the checkout.
    """
    if name == "sample":
        from importlib import resources

        return Path(str(resources.files("vecz.sample")))
    if name in ("wordnet-minilm", "wordnet-gemma"):
        root = os.environ.get("VECZ_DATA")
        base = Path(root) if root else _repo_root().parent / "shared" / "data"
        return base / name
    raise DatasetNotFound(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)} or BASE QUERIES files")


@dataclasses.dataclass
class Dataset:
    """Vectors, queries, optional ground truth and texts of one benchmark run.

    Attributes
    ----------
    name : str
        Dataset name or the base file's path.
    base, queries : float32 (n, dim), (nq, dim)
    gt : int64 (nq, depth) or None
        Exact neighbours in rank order; computed by `ground_truth` when None.
    base_texts, query_texts : list of str or None
        Line i describes row i.
    gt_source : str
        Where the ground truth comes from (a path, or "exact" once computed).
    base_path : Path or None
        The base file; its name prefixes a cached ground-truth file (`gt_cache_path`).
    """

    name: str
    base: np.ndarray
    queries: np.ndarray
    gt: np.ndarray | None = None
    base_texts: list[str] | None = None
    query_texts: list[str] | None = None
    gt_source: str = "exact"
    base_path: Path | None = None


def load_files(
    base: str | Path,
    queries: str | Path,
    *,
    gt: str | Path | None = None,
    texts: str | Path | None = None,
    query_texts: str | Path | None = None,
    nq: int | None = None,
    name: str | None = None,
) -> Dataset:
    """Load a benchmark dataset from files (see `vecz.formats.importers.read_vectors`,
    `read_ids`, `read_texts`).

    Parameters
    ----------
    nq : int, optional
        Keep only the first `nq` queries (and their ground truth and texts).
    """
    if (texts is None) != (query_texts is None):
        raise InvalidInput("--texts and --query-texts go together: give both or neither")
    xb = read_vectors(base, "base")
    xq = read_vectors(queries, "queries")
    if xb.shape[0] == 0 or xq.shape[0] == 0:
        raise InvalidInput(f"expected at least one base vector and one query, found {xb.shape[0]} and {xq.shape[0]}")
    if xb.shape[1] != xq.shape[1]:
        raise DimensionMismatch(f"queries {str(queries)!r} have width {xq.shape[1]}, base has {xb.shape[1]}")
    n_all = xq.shape[0]
    if nq is not None:
        if nq < 1:
            raise InvalidInput(f"--nq must be >= 1, found {nq}")
        xq = xq[:nq]
    ds = Dataset(name or str(base), xb, np.ascontiguousarray(xq), base_path=Path(base))
    if gt is not None:
        ds.gt = read_ids(gt, xq.shape[0], xb.shape[0], file_queries=n_all)
        ds.gt_source = str(gt)
    if texts is not None:
        ds.base_texts = read_texts(texts, xb.shape[0], "base texts")
        ds.query_texts = read_texts(query_texts, n_all, "query texts")[: xq.shape[0]]  # type: ignore[arg-type]
    return ds


def load_named(
    name: str,
    *,
    nq: int | None = None,
    gt: str | Path | None = None,
    texts: str | Path | None = None,
    query_texts: str | Path | None = None,
    metric: str = "cosine",
) -> Dataset:
    """A named dataset (`DATASETS`) with its texts, and its gt_ids.npy when it ships one.

    Explicit `gt`, `texts` and `query_texts` replace the dataset's own files. The shipped
    gt_ids.npy is the exact inner-product top-100 of the float16 rows, so it serves ip only:
    those rows' norms are 1 only to float16 precision (0.99991-1.00008 on wordnet-minilm),
    which reorders near ties under cosine (a perfect cosine search scored recall@10 0.9997
    against it). For cosine and l2 the truth is computed by `ground_truth` and cached (once:
    about 40 s for wordnet-minilm's 10,000 queries on 2 shared cores).
    """
    folder = dataset_dir(name)
    if not (folder / "base.npy").is_file():
        raise DatasetNotFound(f"dataset {name!r}: expected {folder / 'base.npy'}, not found")
    if texts is None and query_texts is None:
        texts = folder / "base_texts.txt.gz"
        query_texts = folder / "query_texts.txt.gz"
        if not (Path(texts).is_file() and Path(query_texts).is_file()):
            texts = query_texts = None
    if gt is None:
        gt = _shipped_truth(folder, metric)
    return load_files(
        folder / "base.npy",
        folder / "queries.npy",
        gt=gt,
        texts=texts,
        query_texts=query_texts,
        nq=nq,
        name=name,
    )


def dataset_folder(source: str | Path) -> Path:
    """`dataset_dir(source)` for a name in `DATASETS`, else `source` as a folder."""
    return dataset_dir(str(source)) if str(source) in DATASETS else Path(source)


def _shipped_truth(folder: Path, metric: str) -> Path | None:
    """The folder's gt_ids.npy when it serves `metric`: ip only (see `load_named`)."""
    path = folder / "gt_ids.npy"
    return path if metric == "ip" and path.is_file() else None


def dataset_truth(
    source: str | Path,
    metric: str,
    *,
    nq: int | None = None,
    rows: int | None = None,
    depth: int = GT_DEPTH,
    cache: bool | str | Path = True,
) -> Dataset:
    """A dataset's first `nq` queries and first `rows` base rows, with their exact top-`depth`
    under `metric` in ``gt`` (the benchmark scripts' truth; no texts are read).

    `source` is a name in `DATASETS` or a folder laid out like one (`dataset_folder`:
    base.npy, queries.npy, and gt_ids.npy when it ships one). The truth is the shipped
    gt_ids.npy for ip over all rows (the metric it was made for, `load_named`); otherwise
    `ground_truth` over all the queries, computed once and cached under the same key as
    `vecz bench`'s on the whole dataset (so every `nq` reads one file), then cut to the
    first `nq`. With `rows` the base is that prefix, whose truth (ip's too) is computed and
    cached for it.
    """
    name = str(source)
    folder = dataset_folder(source)
    if not (folder / "base.npy").is_file():
        raise DatasetNotFound(f"dataset {name!r}: expected {folder / 'base.npy'}, not found")
    if nq is not None and nq < 1:
        raise InvalidInput(f"nq must be >= 1, found {nq}")
    shipped = _shipped_truth(folder, metric) if rows is None else None
    if shipped is not None and np.load(shipped, mmap_mode="r").shape[1] >= depth:
        data = load_files(folder / "base.npy", folder / "queries.npy", gt=shipped, nq=nq, name=name)
        data.gt = np.ascontiguousarray(data.gt[:, :depth])  # type: ignore[index]
        return data
    data = load_files(folder / "base.npy", folder / "queries.npy", name=name)
    if rows is not None:
        if not 0 < rows <= len(data.base):
            raise InvalidInput(f"rows must be in 1..{len(data.base)}, found {rows}")
        data.base = data.base[:rows]
    gt = ground_truth(data, metric, depth, cache=cache)
    if nq is not None:
        data.queries, data.gt = data.queries[:nq], gt[:nq]
    return data


# --------------------------------------------------------------------------- ground truth


def default_gt_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vecz/gt`` (when set to an absolute path, as the XDG spec asks), else
    ``~/.cache/vecz/gt``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return root / "vecz" / "gt"


def _gt_key(base: np.ndarray, queries: np.ndarray, metric: str, depth: int) -> str:
    h = hashlib.sha256(f"vecz-gt-1 {metric} {depth} {base.shape} {queries.shape}".encode())
    h.update(np.ascontiguousarray(base, dtype=np.float32).data)
    h.update(np.ascontiguousarray(queries, dtype=np.float32).data)
    return h.hexdigest()[:20]


def gt_cache_path(data: Dataset, metric: str, depth: int = GT_DEPTH, cache: bool | str | Path = True) -> Path | None:
    """The file computed ground truth is cached in, or None when `cache` is False.

    `cache`: True for `default_gt_cache_dir()`, a folder to use that one, False for none.
    The name, ``<base stem>.gt-<metric>-top<depth>-<hash>.npy``, carries a hash of the
    base, the queries, the metric and the depth, so a stale file is never used.
    """
    if cache is False or cache is None:
        return None
    folder = default_gt_cache_dir() if cache is True else Path(cache)
    depth = min(depth, len(data.base))
    key = _gt_key(data.base, data.queries, metric, depth)
    stem = data.base_path.name.split(".")[0] if data.base_path is not None else "data"
    return folder / f"{stem}.gt-{metric}-top{depth}-{key}.npy"


def ground_truth(data: Dataset, metric: str, depth: int = GT_DEPTH, *, cache: bool | str | Path = True) -> np.ndarray:
    """`data.gt`, or the exact top-`depth` ids computed once and cached (`gt_cache_path`).

    Fills `data.gt` and `data.gt_source`. A cached file is read with the same checks as
    `--gt` (shape, id range, no pickle); a damaged one is recomputed and replaced. A cache
    that cannot be written is said in `data.gt_source`, not raised.
    """
    if data.gt is not None:
        return data.gt
    path = gt_cache_path(data, metric, depth, cache)
    want = min(depth, len(data.base))
    if path is not None and path.is_file():
        try:
            gt = read_ids(path, len(data.queries), len(data.base))
        except (VeczError, ValueError, OSError):
            gt = None
        if gt is not None and gt.shape[1] == want:
            data.gt, data.gt_source = gt, f"exact top-{want} (float32), cached in {path}"
            return gt
    t0 = time.perf_counter()
    gt = exact_topk(data.base, data.queries, metric, depth)[1]
    took = time.perf_counter() - t0
    data.gt, data.gt_source = gt, f"exact top-{gt.shape[1]} (float32), computed in {took:.1f} s"
    if path is not None:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, gt, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            data.gt_source += f", not cached ({path.parent}: {exc.strerror or exc})"
        else:
            data.gt_source += f", cached in {path}"
    return gt
