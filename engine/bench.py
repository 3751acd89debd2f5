"""`vecz bench`: the compression benchmark (DESIGN.md, "How quality and speed are measured").

Role and contract. For each codec spec the benchmark trains a codec on a bounded sample of
the base, encodes the base, builds the in-memory `CodeIndex` and searches the queries from
the codes; for each re-ranking depth R > 0 the R best candidates are re-scored exactly
against the float32 vectors, standing in for the disk tier of the future store (which does
not exist yet: everything here is in memory). Every row reports

- recall@1, @10, @100 (those <= k): |returned top-r ∩ true top-r| / r, averaged over queries,
  the truth being exact search over the float32 vectors (`exact_topk`, or `--gt`);
- bytes/vector in RAM = `codec.code_size` + 8 (the int64 id);
- QPS over the whole query batch, and p50 / p99 latency of queries sent one at a time;
- build seconds (train + encode + index), rows read per query for re-ranking (= R);
- with `faiss=True`, the closest faiss index (`faiss_factory`) on the same rows, metric and
  thread count, and the ratio vecz QPS / faiss QPS measured in the same process run.

Inputs are .npy (no pickle) or .fvecs; float16 and float64 are converted to float32.
Output: a plain-text table (`format_table`), optional neighbour texts (`format_examples`)
and, with an output directory, report.md, results.csv, results.json and PNG plots
(`write_outputs`). Nothing here is hard-coded: every figure is measured when it is printed.

faiss is imported only when a faiss baseline is asked for (STYLE.md keeps it out of the
engine's import path); matplotlib only when plots are written.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from kernels import transform

from .codecs import METRICS, F16, MRL, IVF, PQ, RB, SQ, Codec, Flat, code_size, parse_spec
from formats.importers import read_fvecs, read_ids, read_texts, read_vectors

from .errors import CodecSpecError, DatasetNotFound, InvalidInput, DimensionMismatch

__all__ = [
    "DEFAULT_CODECS",
    "DATASETS",
    "GT_DEPTH",
    "LATENCY_QUERIES",
    "Dataset",
    "BenchResult",
    "read_fvecs",
    "read_vectors",
    "read_ids",
    "read_texts",
    "dataset_dir",
    "load_named",
    "load_files",
    "prepare",
    "exact_topk",
    "exact_rerank",
    "recall_at",
    "pareto_front",
    "faiss_factory",
    "parse_codecs",
    "parse_rerank",
    "set_threads",
    "set_blas_threads",
    "run_bench",
    "best_compressed",
    "format_table",
    "format_examples",
    "markdown_table",
    "machine_info",
    "write_outputs",
]

# A spread of budgets from 4 bytes/dim down to 1 bit/dim on the 384-d sample; on 2 cores it
# runs in well under a minute once the Numba kernels are compiled.
DEFAULT_CODECS = "Flat;F16;SQ8;SQ4;PQ48x8;PQ96x4;PQ24x8;RB1;RB2;RB4;MRL256,RB2"

# Exact neighbours kept per query: recall@100 is the deepest figure reported.
GT_DEPTH = 100

# Latency is measured on at most this many queries sent one at a time (each call pays the
# per-call Python overhead a single-query user pays).
LATENCY_QUERIES = 200

# Batch timing: at least 3 rounds, then repeat the whole batch until this many seconds are
# spent (a 200-query batch on the sample takes ~10 ms, too short to time once on a shared
# machine) or 100 rounds ran; QPS = queries / median round.
_BATCH_SECONDS = 0.25
_BATCH_MIN_ROUNDS = 3
_BATCH_MAX_ROUNDS = 100

# Work arrays (score blocks, gathered candidate vectors) stay within this many float32s.
_BLOCK_FLOATS = 16 << 20

# faiss RaBitQ quantizes the query to `qb` bits; 8 is the closest it gets to vecz's
# float-query tables at speed (qb = 0, float queries, takes a much slower path).
FAISS_RABITQ_QB = 8

ID_BYTES = 8


def _repo_root() -> Path:
    import engine

    return Path(engine.__file__).resolve().parents[1]


def dataset_dir(name: str) -> Path:
    """Folder of a named dataset.

    ``sample`` is shipped in the repository (``bench/sample``); ``wordnet-minilm`` and
    ``wordnet-gemma`` live in ``../shared/data`` next to the repository root, or under
    ``$VECZ_DATA`` when that is set (as in the tests).
    """
    if name == "sample":
        return _repo_root() / "bench" / "sample"
    if name in ("wordnet-minilm", "wordnet-gemma"):
        root = os.environ.get("VECZ_DATA")
        base = Path(root) if root else _repo_root().parent / "shared" / "data"
        return base / name
    raise DatasetNotFound(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)} or BASE QUERIES files")


DATASETS = ("sample", "wordnet-minilm", "wordnet-gemma")


# --------------------------------------------------------------------------- input


@dataclasses.dataclass
class Dataset:
    """Vectors, queries, optional ground truth and texts of one benchmark run.

    Attributes
    ----------
    name : str
        Dataset name or the base file's path.
    base, queries : float32 (n, dim), (nq, dim)
    gt : int64 (nq, depth) or None
        Exact neighbours in rank order; computed by `run_bench` when None.
    base_texts, query_texts : list of str or None
        Line i describes row i.
    gt_source : str
        Where the ground truth comes from (a path, or "exact" once computed).
    """

    name: str
    base: np.ndarray
    queries: np.ndarray
    gt: np.ndarray | None = None
    base_texts: list[str] | None = None
    query_texts: list[str] | None = None
    gt_source: str = "exact"


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
    """Load a benchmark dataset from files (see `read_vectors`, `read_ids`, `read_texts`).

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
    ds = Dataset(name or str(base), xb, np.ascontiguousarray(xq))
    if gt is not None:
        ds.gt = read_ids(gt, xq.shape[0], xb.shape[0])
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
) -> Dataset:
    """A named dataset (`DATASETS`) with its texts, and its gt_ids.npy when it ships one.

    Explicit `gt`, `texts` and `query_texts` replace the dataset's own files.
    """
    folder = dataset_dir(name)
    if not (folder / "base.npy").is_file():
        raise DatasetNotFound(f"dataset {name!r}: expected {folder / 'base.npy'}, not found")
    if texts is None and query_texts is None:
        texts = folder / "base_texts.txt.gz"
        query_texts = folder / "query_texts.txt.gz"
        if not (Path(texts).is_file() and Path(query_texts).is_file()):
            texts = query_texts = None
    if gt is None and (folder / "gt_ids.npy").is_file():
        gt = folder / "gt_ids.npy"
    return load_files(
        folder / "base.npy",
        folder / "queries.npy",
        gt=gt,
        texts=texts,
        query_texts=query_texts,
        nq=nq,
        name=name,
    )


# --------------------------------------------------------------------------- exact search


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Float32 vectors as the exact search sees them: unit rows for cosine, unchanged otherwise."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return transform.normalize_rows(x) if metric == "cosine" else x


def _rank(keys: np.ndarray, ids: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`depth` of each row of `keys` (higher is better), ties by smaller id."""
    if depth < keys.shape[1]:
        part = np.argpartition(-keys, depth - 1, axis=1)[:, :depth]
        keys = np.take_along_axis(keys, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((ids, -keys), axis=1)
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(ids, order, axis=1)


def exact_topk(base: np.ndarray, queries: np.ndarray, metric: str, depth: int = GT_DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`depth` neighbours in float32, in blocks of queries.

    Scores: ``<q, x>`` for ip, the same on unit rows for cosine (both descending), and
    ``|q - x|^2 = |q|^2 - 2<q, x> + |x|^2`` for l2 (ascending). Ties are broken by the
    smaller id, except at the depth cut where `np.argpartition` picks among equal scores.

    Returns
    -------
    scores : float32 (nq, min(depth, n))
    ids : int64 (nq, min(depth, n))
    """
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
    xb = prepare(base, metric)
    xq = prepare(queries, metric)
    n = xb.shape[0]
    depth = min(depth, n)
    b_sq = np.einsum("ij,ij->i", xb, xb) if metric == "l2" else None
    block = max(1, _BLOCK_FLOATS // max(1, n))
    out_s = np.empty((xq.shape[0], depth), dtype=np.float32)
    out_i = np.empty((xq.shape[0], depth), dtype=np.int64)
    all_ids = np.arange(n, dtype=np.int64)
    for start in range(0, xq.shape[0], block):
        q = xq[start : start + block]
        keys = q @ xb.T
        if b_sq is not None:
            # 2<q, x> - |x|^2 orders like -|q - x|^2; |q|^2 is added back for the score
            keys = 2 * keys - b_sq[None, :]
        s, i = _rank(keys, np.broadcast_to(all_ids, keys.shape), depth)
        if b_sq is not None:
            s = np.einsum("ij,ij->i", q, q)[:, None] - s
        out_s[start : start + len(q)] = s
        out_i[start : start + len(q)] = i
    return out_s, out_i


def exact_rerank(base: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ids exactly and keep the best `k` (the store's disk-tier step).

    Parameters
    ----------
    base : float32 (n, dim)
        Vectors already `prepare`d for the metric (the stand-in for the disk tier).
    queries : float32 (nq, dim)
        Prepared the same way.
    candidates : int64 (nq, R)
        Ids from the codes, -1 for empty slots (which stay last).
    k : int

    Returns
    -------
    scores : float32 (nq, k)
        Exact scores, descending (ip/cosine) or ascending squared distances (l2); empty
        slots hold -1 with the metric's worst score.
    ids : int64 (nq, k)
    """
    nq, r = candidates.shape
    is_l2 = metric == "l2"
    worst = np.float32(np.inf if is_l2 else -np.inf)
    out_s = np.full((nq, k), worst, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    keep = min(k, r)
    block = max(1, _BLOCK_FLOATS // max(1, r * base.shape[1]))
    for start in range(0, nq, block):
        c = candidates[start : start + block]
        q = queries[start : start + block]
        valid = c >= 0
        vecs = base[np.where(valid, c, 0)]
        if is_l2:
            diff = vecs - q[:, None, :]
            keys = -np.einsum("brd,brd->br", diff, diff)
        else:
            keys = np.einsum("brd,bd->br", vecs, q)
        keys = np.where(valid, keys, -np.inf).astype(np.float32)
        order = np.argsort(-keys, axis=1, kind="stable")[:, :keep]
        s = np.take_along_axis(keys, order, axis=1)
        i = np.take_along_axis(np.where(valid, c, -1), order, axis=1)
        out_s[start : start + len(c), :keep] = -s if is_l2 else s
        out_i[start : start + len(c), :keep] = i
    return out_s, out_i


def recall_at(found: np.ndarray, truth: np.ndarray, r: int) -> float:
    """recall@r = |found[:, :r] ∩ truth[:, :r]| / r, averaged over queries (DESIGN.md).

    Empty slots (-1) never count as hits.
    """
    if truth.shape[1] < r:
        raise InvalidInput(f"recall@{r} needs at least {r} true neighbours per query, found {truth.shape[1]}")
    f = np.asarray(found)[:, :r]
    t = np.asarray(truth)[:, :r]
    hits = 0
    block = max(1, (4 << 20) // (r * r))
    for start in range(0, len(t), block):
        fb, tb = f[start : start + block], t[start : start + block]
        match = (fb[:, :, None] == tb[:, None, :]).any(axis=2) & (fb >= 0)
        hits += int(match.sum())
    return hits / (r * len(t)) if len(t) else float("nan")


# --------------------------------------------------------------------------- Pareto front


def pareto_front(rows: Sequence[dict[str, Any]], key: str = "recall@10") -> list[bool]:
    """Mark the rows on the recall-versus-memory front, separately for each re-ranking depth.

    Within a group of rows with the same ``rerank``, a row is marked when it has the best
    `key` among all rows at or under its ``bytes_per_vector`` budget, i.e. its recall beats
    (strictly) every row that costs no more memory. Among equal rows the cheaper (then the
    earlier) is marked. Re-ranked rows form their own groups because they also read R rows
    from disk per query, which bytes/vector does not count. Rows whose `key` is None are
    never marked.

    Returns
    -------
    list of bool, aligned with `rows`.
    """
    marks = [False] * len(rows)
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get(key) is not None:
            groups.setdefault(row.get("rerank", 0), []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: (rows[i]["bytes_per_vector"], -rows[i][key], i))
        best = -math.inf
        for i in members:
            if rows[i][key] > best:
                marks[i] = True
                best = rows[i][key]
    return marks


# --------------------------------------------------------------------------- faiss


def faiss_factory(spec: str, dim: int) -> str | None:
    """The faiss `index_factory` string closest to a vecz spec, or None when there is none.

    | vecz | faiss |
    | --- | --- |
    | `PQ<M>x8` | `PQ<M>np` (IndexPQ, no polysemous training) |
    | `PQ<M>x4` | `PQ<M>x4fs` (IndexPQFastScan) |
    | `SQ8`, `SQ4`, `F16` | `SQ8`, `SQ4`, `SQfp16` (IndexScalarQuantizer) |
    | `Flat` | `Flat` (IndexFlat) |
    | `RB<b>` | `RR<dim>,RaBitQ<b>` (random rotation + IndexRaBitQ, b bits) |
    | `IVF<n>,...` | `IVF<n>,...` (IndexIVFPQ, IndexIVFPQFastScan, IndexIVFScalarQuantizer, IndexIVFFlat, IndexIVFRaBitQ) |
    | `MRL<d>,...` | none |
    """
    stages = parse_spec(spec)
    if any(isinstance(s, MRL) for s in stages):
        return None
    q = stages[-1]
    if isinstance(q, PQ):
        # "np": no polysemous training, which index_factory otherwise adds to PQ and IVFPQ
        # (it reorders codes for Hamming filtering that the search here never uses, and costs
        # ~20x the training time); the IndexPQ constructor, as in bench/harness.py, skips it too.
        body = f"PQ{q.m}np" if q.nbits == 8 else f"PQ{q.m}x4fs"
    elif isinstance(q, SQ):
        body = f"SQ{q.nbits}"
    elif isinstance(q, F16):
        body = "SQfp16"
    elif isinstance(q, Flat):
        body = "Flat"
    elif isinstance(q, RB):
        body = f"RaBitQ{q.levels}"
    else:  # pragma: no cover - parse_spec admits no other quantizer
        return None
    coarse = next((s for s in stages if isinstance(s, IVF)), None)
    if coarse is not None:
        body = f"IVF{coarse.nlist},{body}"
    if isinstance(q, RB):
        # RaBitQ's estimator assumes randomly rotated data; faiss leaves the rotation to a
        # pre-transform (as bench/harness.py does), timed at search like vecz's rotation.
        body = f"RR{dim},{body}"
    return body


@contextlib.contextmanager
def _captured_stderr_fd() -> Iterator[list[str]]:
    """Capture what C++ code writes to file descriptor 2 (faiss's clustering warnings)."""
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real descriptor 2 (embedded interpreters): capture nothing
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _faiss_inner_indexes(index: Any) -> Iterator[Any]:
    import faiss

    index = faiss.downcast_index(index)
    while True:
        yield index
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return


# --------------------------------------------------------------------------- running


def parse_codecs(text: str, dim: int, metric: str) -> list[str]:
    """Split ``"SPEC;SPEC;..."`` and check every spec fits `dim` before any work starts.

    Raises
    ------
    CodecSpecError
        The message of the first bad spec.
    """
    specs = [s.strip() for s in text.split(";") if s.strip()]
    if not specs:
        raise CodecSpecError(f"--codecs {text!r} names no spec: expected 'SPEC;SPEC;...'")
    for spec in specs:
        code_size(spec, dim, metric)
    return specs


def parse_rerank(text: str, k: int) -> list[int]:
    """``"0,50"`` -> [0, 50]; each depth is 0 (codes only) or >= k."""
    try:
        depths = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InvalidInput(f"--rerank expects comma-separated integers such as '0,50', found {text!r}") from None
    if not depths:
        raise InvalidInput(f"--rerank {text!r} names no depth")
    for r in depths:
        if r < 0 or 0 < r < k:
            raise InvalidInput(f"--rerank depths must be 0 or >= k={k} (re-ranking keeps the best k of R), found {r}")
    return list(dict.fromkeys(depths))


def set_blas_threads(n: int) -> dict[str, int]:
    """Set every BLAS loaded in the process (numpy's and faiss's OpenBLAS alike) to `n` threads.

    Both sides call BLAS (query rotations, training), so "same threads" covers it too.
    threadpoolctl finds the libraries; returns {library file: threads read back}.
    """
    threadpool_limits(n, user_api="blas")  # not a context: the limit stays for the run
    return {Path(i["filepath"]).name: int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}


def set_threads(threads: int | None, with_faiss: bool) -> dict[str, Any]:
    """Set the thread count of Numba, faiss's OpenMP and OpenBLAS; None means all cores.

    Returns
    -------
    dict
        ``{"threads": n, "numba": ..., "faiss_omp": ..., "openblas": {...}}`` as read back.
    """
    import numba

    available = int(numba.config.NUMBA_NUM_THREADS)
    n = available if threads is None else int(threads)
    if not 1 <= n <= available:
        raise InvalidInput(f"--threads must be in 1..{available} (Numba's thread pool), found {threads}")
    numba.set_num_threads(n)
    info: dict[str, Any] = {"threads": n, "numba": numba.get_num_threads()}
    if with_faiss:
        import faiss

        faiss.omp_set_num_threads(n)
        info["faiss_omp"] = faiss.omp_get_max_threads()
    info["openblas"] = set_blas_threads(n)
    return info


def _train_rows(n: int, train_size: int, seed: int) -> np.ndarray | None:
    """Row numbers both sides train on: all rows, or `train_size` drawn with `seed` (sorted)."""
    if n <= train_size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))


def _time_batch(fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[np.ndarray, float]:
    fn(queries[:2])  # loads (or compiles) the Numba kernels, builds faiss's lazy tables
    rounds = []
    ids = None
    while len(rounds) < _BATCH_MIN_ROUNDS or (sum(rounds) < _BATCH_SECONDS and len(rounds) < _BATCH_MAX_ROUNDS):
        t0 = time.perf_counter()
        ids = fn(queries)
        rounds.append(time.perf_counter() - t0)
    return ids, len(queries) / max(float(np.median(rounds)), 1e-9)  # type: ignore[return-value]


def _time_single(fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[float, float]:
    lat = []
    for i in range(min(LATENCY_QUERIES, len(queries))):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        fn(q)
        lat.append(time.perf_counter() - t0)
    ms = np.asarray(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


@dataclasses.dataclass
class BenchResult:
    """Rows (one per spec x re-ranking depth, JSON-ready dicts) and what produced them.

    `found` maps (spec, R) to the int64 (nq, k) ids vecz returned; `gt` is the truth used.
    """

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    found: dict[tuple[str, int], np.ndarray]
    gt: np.ndarray
    recall_ats: list[int]

    @property
    def quality_key(self) -> str:
        """The recall column the Pareto front and the examples rank by."""
        return "recall@10" if 10 in self.recall_ats else f"recall@{max(self.recall_ats)}"


def run_bench(
    data: Dataset,
    specs: Sequence[str],
    *,
    metric: str = "cosine",
    k: int = 10,
    rerank: Sequence[int] = (0, 50),
    nprobe: int = 16,
    with_faiss: bool = False,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> BenchResult:
    """Benchmark each spec on `data`; see the module docstring for what a row holds.

    Parameters
    ----------
    data : Dataset
        When `data.gt` is None the exact top-100 is computed (`exact_topk`) and stored there.
    specs : sequence of str
        Codec specs, checked against the width before any training.
    rerank : sequence of int
        Depths R: 0 scores from codes only; R >= k re-scores the best R exactly.
    nprobe : int
        Lists visited per query by IVF specs (vecz and faiss alike).
    threads : int, optional
        Numba and faiss threads (default: all cores).
    progress : bool
        Show a tqdm bar over specs (on stderr).
    """
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
    if not isinstance(k, int) or k < 1:
        raise InvalidInput(f"k must be an integer >= 1, found {k!r}")
    if nprobe < 1:
        raise InvalidInput(f"nprobe must be >= 1, found {nprobe}")
    dim = data.base.shape[1]
    specs = list(specs)
    for spec in specs:
        code_size(spec, dim, metric)
    for r in rerank:
        if r < 0 or 0 < r < k:
            raise InvalidInput(f"re-ranking depths must be 0 or >= k={k}, found {r}")
    thread_info = set_threads(threads, with_faiss)

    xb = data.base
    xq = data.queries
    xb_p = prepare(xb, metric)  # the disk tier's float32 vectors, as the metric sees them
    gt_s = time.perf_counter()
    if data.gt is None:
        data.gt = exact_topk(xb, xq, metric, GT_DEPTH)[1]
        data.gt_source = f"exact top-{data.gt.shape[1]} (float32, computed in {time.perf_counter() - gt_s:.2f} s)"
    gt = data.gt
    ats = [r for r in (1, 10, 100) if r <= k and r <= gt.shape[1]]
    if not ats:
        raise InvalidInput(f"the ground truth holds {gt.shape[1]} neighbours per query: too few for recall@1")

    rows: list[dict[str, Any]] = []
    found: dict[tuple[str, int], np.ndarray] = {}
    from tqdm import tqdm

    bar = tqdm(specs, desc="vecz bench", unit="spec", disable=not progress, file=sys.stderr, leave=False)
    for spec in bar:
        bar.set_postfix_str(spec)
        t0 = time.perf_counter()
        # Both sides train on the same rows, drawn within the codec's own train_size bound.
        sel = _train_rows(len(xb), Codec(spec, dim, metric, seed=seed).train_size, seed)
        sample = xb if sel is None else xb[sel]
        codec = Codec(spec, dim, metric, seed=seed, train_size=len(sample)).train(sample)
        train_s = time.perf_counter() - t0
        enc = codec.encode(xb)
        index = codec.index(enc.codes, enc.lists)
        build_s = time.perf_counter() - t0
        del enc
        # What the CodeIndex really holds per row (scan layouts, padding, factors, ids), beside
        # the nominal code_size + id; measured as bench/harness.py's resident_bytes does.
        resident = sum(v.nbytes for name, v in vars(index).items() if isinstance(v, np.ndarray) and name != "offsets")

        fx = _FaissSide(spec, dim, metric, xb_p, sample, k, nprobe) if with_faiss else None

        for r in rerank:
            kk = max(k, r)

            def search(q: np.ndarray, r: int = r, kk: int = kk, index: Any = index) -> np.ndarray:
                ids = index.search(q, kk, nprobe=nprobe).ids
                if r == 0:
                    return ids[:, :k]
                return exact_rerank(xb_p, prepare(q, metric), ids[:, :r], k, metric)[1]

            ids, qps = _time_batch(search, xq)
            p50, p99 = _time_single(search, xq)
            found[(codec.spec, r)] = ids
            row: dict[str, Any] = {
                "spec": codec.spec,
                "code_size": codec.code_size,
                "bytes_per_vector": codec.code_size + ID_BYTES,
                "rerank": r,
                "rows_read_per_query": r,
                "resident_bytes_per_vector": round(resident / max(1, len(xb)), 2),
            }
            for a in (1, 10, 100):
                row[f"recall@{a}"] = round(recall_at(ids, gt, a), 4) if a in ats else None
            row.update(
                qps=round(qps, 1),
                p50_ms=round(p50, 4),
                p99_ms=round(p99, 4),
                build_s=round(build_s, 3),
                train_s=round(train_s, 3),
            )
            if fx is not None:
                row.update(fx.measure(r, xq, gt, ats, qps))
            rows.append(row)
        del index
    bar.close()

    qkey = "recall@10" if 10 in ats else f"recall@{max(ats)}"
    for row, mark in zip(rows, pareto_front(rows, qkey)):
        row["pareto"] = mark
    settings = {
        "dataset": data.name,
        "n": int(xb.shape[0]),
        "nq": int(xq.shape[0]),
        "dim": int(dim),
        "metric": metric,
        "k": k,
        "rerank": list(rerank),
        "nprobe": nprobe,
        "threads": thread_info["threads"],
        "thread_settings": thread_info,
        "faiss": with_faiss,
        "faiss_rabitq_qb": FAISS_RABITQ_QB if with_faiss else None,
        "ground_truth": data.gt_source,
        "latency_queries": min(LATENCY_QUERIES, int(xq.shape[0])),
        "seed": seed,
    }
    return BenchResult(rows, settings, found, gt, ats)


_FAISS_KEYS = ("faiss_index", "faiss_bytes_per_vector", "faiss_recall@1", "faiss_recall@10", "faiss_recall@100",
               "faiss_qps", "faiss_build_s", "speed_vs_faiss", "faiss_note")


class _FaissSide:
    """The faiss counterpart of one spec: built once, searched at each re-ranking depth."""

    def __init__(self, spec: str, dim: int, metric: str, xb_p: np.ndarray, train_raw: np.ndarray, k: int,
                 nprobe: int) -> None:
        import faiss

        self.k = k
        self.metric = metric
        self.factory = faiss_factory(spec, dim)
        self.note = None
        self.index = None
        self.refine = None
        if self.factory is None:
            self.note = "no faiss counterpart (MRL)"
            return
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        train = prepare(train_raw, metric)
        t0 = time.perf_counter()
        try:
            with _captured_stderr_fd() as warnings:
                index = faiss.index_factory(dim, self.factory, fmetric)
                index.train(train)
                index.add(xb_p)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.note = f"faiss refused {self.factory!r}: {first[:160]}"
            return
        self.build_s = time.perf_counter() - t0
        if warnings:
            self.note = f"faiss: {warnings[0].strip()[:160]}"
        for inner in _faiss_inner_indexes(index):
            if hasattr(inner, "qb"):
                inner.qb = FAISS_RABITQ_QB
        if "IVF" in self.factory:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        self.index = index
        self.xb_p = xb_p
        self.code_size = int(index.sa_code_size())

    def measure(self, r: int, xq: np.ndarray, gt: np.ndarray, ats: list[int], vecz_qps: float) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(_FAISS_KEYS)
        out["faiss_index"] = self.factory
        out["faiss_note"] = self.note
        if self.index is None:
            return out
        import faiss

        if r == 0:
            index = self.index
        else:
            if self.refine is None:
                # IndexRefineFlat over the built index: the same float32 rows re-score the
                # shortlist, k_factor = R / k so it re-scores R candidates like vecz.
                self.refine = faiss.IndexRefineFlat(self.index, faiss.swig_ptr(self.xb_p))
            self.refine.k_factor = r / self.k
            index = self.refine
        metric, k = self.metric, self.k

        def search(q: np.ndarray) -> np.ndarray:
            return index.search(prepare(q, metric), k)[1]

        ids, qps = _time_batch(search, xq)
        out["faiss_index"] = self.factory + (f",RFlat(k_factor={r / k:g})" if r else "")
        out["faiss_bytes_per_vector"] = self.code_size + ID_BYTES
        for a in (1, 10, 100):
            out[f"faiss_recall@{a}"] = round(recall_at(ids, gt, a), 4) if a in ats else None
        out["faiss_qps"] = round(qps, 1)
        out["faiss_build_s"] = round(self.build_s, 3)
        out["speed_vs_faiss"] = round(vecz_qps / qps, 3)
        return out


def best_compressed(result: BenchResult) -> tuple[str, int] | None:
    """(spec, R) with the best recall among codes-only rows of compressing specs.

    Codes-only means the smallest re-ranking depth run (0 when it was run); Flat and F16
    quantizers are left out since they barely compress.
    """
    key = result.quality_key
    if not result.rows:
        return None
    r_min = min(row["rerank"] for row in result.rows)
    pool = [
        row for row in result.rows
        if row["rerank"] == r_min and not isinstance(parse_spec(row["spec"])[-1], (Flat, F16))
    ]
    if not pool:
        return None
    best = max(pool, key=lambda row: (row[key], -row["bytes_per_vector"]))
    return best["spec"], best["rerank"]


# --------------------------------------------------------------------------- formatting


def _columns(result: BenchResult, faiss_cols: bool, mark: str = "*") -> list[tuple[str, str, Callable[[dict], str]]]:
    """(header, alignment, formatter) of each table column; `mark` flags Pareto rows."""

    def num(key: str, fmt: str) -> Callable[[dict], str]:
        return lambda row: "-" if row.get(key) is None else format(row[key], fmt)

    qkey = result.quality_key
    cols: list[tuple[str, str, Callable[[dict], str]]] = [
        ("spec", "<", lambda row: row["spec"]),
        ("bytes/vec", ">", num("bytes_per_vector", "d")),
        ("R", ">", num("rerank", "d")),
    ]
    for a in result.recall_ats:
        key = f"recall@{a}"
        if key == qkey:
            cols.append((key, ">", lambda row, key=key: ("-" if row[key] is None else f"{row[key]:.3f}")
                         + (mark if row.get("pareto") else " ")))
        else:
            cols.append((key, ">", num(key, ".3f")))
    cols += [
        ("QPS", ">", num("qps", ".0f")),
        ("p50 ms", ">", num("p50_ms", ".3f")),
        ("p99 ms", ">", num("p99_ms", ".3f")),
        ("build s", ">", num("build_s", ".2f")),
    ]
    if faiss_cols:
        fkey = "faiss_" + qkey
        cols += [
            (f"faiss {qkey}", ">", lambda row: "n/a" if row.get(fkey) is None else f"{row[fkey]:.3f}"),
            ("faiss QPS", ">", lambda row: "n/a" if row.get("faiss_qps") is None else f"{row['faiss_qps']:.0f}"),
            ("vs faiss", ">", lambda row: "n/a" if row.get("speed_vs_faiss") is None else f"{row['speed_vs_faiss']:.2f}x"),
        ]
    return cols


def format_table(result: BenchResult) -> str:
    """Plain aligned text: one line per row, `*` after the quality figure of Pareto rows."""
    cols = _columns(result, bool(result.settings.get("faiss")))
    cells = [[c[0] for c in cols]] + [[c[2](row) for c in cols] for row in result.rows]
    widths = [max(len(line[j]) for line in cells) for j in range(len(cols))]
    lines = []
    for n, line in enumerate(cells):
        parts = [format(v, f"{cols[j][1]}{widths[j]}") for j, v in enumerate(line)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(result: BenchResult) -> str:
    """The table in markdown; Pareto rows carry `*` after their quality figure and in bold spec."""
    cols = _columns(result, bool(result.settings.get("faiss")), mark="\\*")
    out = ["| " + " | ".join(c[0] for c in cols) + " |",
           "| " + " | ".join("---" if c[1] == "<" else "---:" for c in cols) + " |"]
    for row in result.rows:
        cells = [c[2](row).strip() for c in cols]
        if row.get("pareto"):
            cells[0] = f"**{cells[0]}**"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(1, width - 3)] + "..."


def format_examples(result: BenchResult, data: Dataset, n_show: int, top: int = 3) -> str | None:
    """Query texts with the top-`top` neighbour texts of the best compressed spec beside the exact ones.

    Each found neighbour is prefixed with its exact rank (``#2``; ``#-`` when outside the
    ground truth's depth). Returns None when texts are missing or nothing is to be shown.
    """
    if n_show <= 0 or data.base_texts is None or data.query_texts is None:
        return None
    pick = best_compressed(result)
    if pick is None:
        return None
    spec, r = pick
    ids = result.found[(spec, r)]
    gt = result.gt
    term = shutil.get_terminal_size((120, 24)).columns
    width = max(30, min(70, (term - 12) // 2))
    left_head = f"vecz {spec}" + (" (codes only)" if r == 0 else f" (R={r})")
    lines = [f"Neighbours found by the best compressed spec, {left_head}, beside the exact ones "
             f"(#n = the found text's exact rank):"]
    for qi in range(min(n_show, len(ids))):
        lines.append("")
        lines.append(f"query {qi}: {_clip(data.query_texts[qi], term - 12)}")
        lines.append(f"  {'':3} {left_head:<{width}}  exact (float32)")
        truth = list(gt[qi])
        for rank in range(top):
            fid = int(ids[qi, rank]) if rank < ids.shape[1] else -1
            tid = int(gt[qi, rank]) if rank < gt.shape[1] else -1
            if fid >= 0:
                where = f"#{truth.index(fid) + 1}" if fid in truth else "#-"
                left = f"{where:>4} {data.base_texts[fid]}"
            else:
                left = "   - (empty)"
            right = data.base_texts[tid] if tid >= 0 else "-"
            lines.append(f"  {rank + 1:>2}. {_clip(left, width):<{width}}  {_clip(right, width)}")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info(command: str | None = None) -> dict[str, Any]:
    """Platform, CPU count and library versions (the ones importable), and the command line."""
    import numba

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    if command is not None:
        info["command"] = command
    return info


CSV_COLUMNS = (
    "spec", "code_size", "bytes_per_vector", "resident_bytes_per_vector", "rerank", "rows_read_per_query",
    "recall@1", "recall@10", "recall@100", "qps", "p50_ms", "p99_ms", "build_s", "train_s", "pareto",
) + _FAISS_KEYS


def _write_plots(result: BenchResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = result.quality_key
    depths = sorted({row["rerank"] for row in result.rows})
    written = []

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in depths:
        rows = [row for row in result.rows if row["rerank"] == r and row[key] is not None]
        label = "codes only" if r == 0 else f"re-ranked, R={r}"
        pts = ax.scatter([row["bytes_per_vector"] for row in rows], [row[key] for row in rows], label=label)
        front = sorted((row for row in rows if row["pareto"]), key=lambda row: row["bytes_per_vector"])
        ax.step([row["bytes_per_vector"] for row in front], [row[key] for row in front], where="post",
                color=pts.get_facecolor()[0], alpha=0.6)
        for row in rows:
            ax.annotate(row["spec"], (row["bytes_per_vector"], row[key]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes / vector in RAM (codes + 8-byte id)")
    ax.set_ylabel(key)
    ax.set_title(f"{result.settings['dataset']}: {key} vs memory (lines: Pareto front)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = out / "recall_vs_bytes.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in depths:
        rows = [row for row in result.rows if row["rerank"] == r and row[key] is not None]
        label = "vecz, codes only" if r == 0 else f"vecz, R={r}"
        ax.scatter([row["qps"] for row in rows], [row[key] for row in rows], label=label)
        for row in rows:
            ax.annotate(row["spec"], (row["qps"], row[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        frows = [row for row in rows if row.get("faiss_qps") is not None]
        if frows:
            ax.scatter([row["faiss_qps"] for row in frows], [row["faiss_" + key] for row in frows], marker="x",
                       label=f"faiss, {'codes only' if r == 0 else f'R={r}'}")
    ax.set_xscale("log")
    ax.set_xlabel(f"queries per second ({result.settings['threads']} threads, batch of {result.settings['nq']})")
    ax.set_ylabel(key)
    ax.set_title(f"{result.settings['dataset']}: {key} vs speed")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = out / "recall_vs_qps.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def write_outputs(result: BenchResult, out: str | Path, machine: dict[str, Any], examples: str | None = None) -> list[str]:
    """Write report.md, results.csv, results.json and (with matplotlib) two PNG plots into `out`.

    Returns notes for the terminal (files written, plots skipped).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    payload = {"settings": result.settings, "machine": machine, "rows": result.rows}
    (out / "results.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS})
    s = result.settings
    md = [
        f"# vecz bench: {s['dataset']}",
        "",
        f"{s['n']} base vectors x {s['dim']} dims, {s['nq']} queries, metric {s['metric']}, k = {s['k']}, "
        f"nprobe = {s['nprobe']}, {s['threads']} threads. Ground truth: {s['ground_truth']}.",
        "",
        "bytes/vec = code bytes + 8-byte id held in RAM; R = rows re-scored exactly per query "
        "(read from the disk tier; here the float32 vectors in memory); QPS over the whole batch; "
        f"p50/p99 over {s['latency_queries']} queries sent one at a time; build = train + encode + index. "
        f"`*` and bold: best {result.quality_key} at or under that row's bytes/vector among rows with the "
        "same R (the Pareto front)."
        + (f" faiss: closest index_factory configuration, same data and threads (RaBitQ with qb = "
           f"{s['faiss_rabitq_qb']}); 'vs faiss' = vecz QPS / faiss QPS." if s.get("faiss") else ""),
        "",
        markdown_table(result),
        "",
    ]
    faiss_notes = sorted({row["faiss_note"] for row in result.rows if row.get("faiss_note")})
    if faiss_notes:
        md += ["faiss notes:", ""] + [f"- {n}" for n in faiss_notes] + [""]
    if examples:
        md += ["## Neighbours", "", "```", examples, "```", ""]
    md += ["## Machine", ""] + [f"- {k}: `{v}`" for k, v in machine.items()] + [""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    written = ["report.md", "results.csv", "results.json"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("plots skipped: matplotlib is not installed (pip install 'vecz[bench]')")
    else:
        written += [p.name for p in _write_plots(result, out)]
    notes.insert(0, f"wrote {', '.join(written)} to {out}")
    return notes
