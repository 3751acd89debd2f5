"""`vecz bench`: the compression benchmark (DESIGN.md, "How quality and speed are measured").

Role and contract. For each codec spec the benchmark builds a real store (`build_store`:
`Store.create` + `train` + `add`, float32 dense tier, ids 0..n-1) in a work folder, opens it
read-only and searches every query through `Store.search` for each re-ranking depth R (0 =
codes only; R > 0 re-scores the R best candidates with the vectors read from the dense
file). Every row reports

- recall@1, @10, @100 (those <= k): |returned top-r ∩ true top-r| / r, averaged over queries,
  the truth being exact search over the float32 vectors (`ground_truth`: `--gt`, a named
  dataset's gt_ids.npy, or `exact_topk` computed once and cached beside the data);
- bytes/vector = `codec.code_size` + 8 (the int64 id), and the RAM the open store measures
  it holds (`Store.memory_bytes`) per row;
- QPS over the whole query batch, and p50 / p99 latency of queries sent one at a time;
- rows and bytes read from the dense file per query and candidates scored, as the store
  counts them (`SearchResult.stats`); build seconds (train + encode + write + fsync);
- with `with_faiss`, the closest faiss index (`faiss_factory`) on the same rows, training
  sample, metric and thread count, IndexRefineFlat for R > 0, and the ratio vecz QPS /
  faiss QPS measured in the same process run.

`vecz.engine.recommend` uses the same store building and measuring for `--budget`.
Inputs are .npy (no pickle), .fvecs, .parquet or .arrow; float16 and float64 are converted
to float32. Output: a plain-text table (`format_table`), optional neighbour texts
(`format_examples`) and, with an output directory, report.md, results.csv, results.json and
PNG plots (`write_outputs`). Nothing here is hard-coded: every figure is measured when it is
printed.

faiss is imported only when a faiss baseline is asked for (STYLE.md keeps it out of the
engine's import path); matplotlib only when plots are written.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from ..kernels import transform
from ..kernels.topk import topk_select_batch

from .codecs import METRICS, F16, MRL, IVF, PQ, RB, SQ, Codec, Flat, code_size, parse_spec
from ..formats.importers import read_fvecs, read_ids, read_texts, read_vectors

from .errors import CodecSpecError, DatasetNotFound, DimensionMismatch, InvalidInput, VeczError

__all__ = [
    "DEFAULT_CODECS",
    "SAMPLE_CODECS",
    "default_codecs",
    "ivf_nlist",
    "ground_truth",
    "gt_cache_paths",
    "build_store",
    "measure_store",
    "best_per_budget",
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

# The default grid: 16 to 384 code bytes per vector at 384 dims (PQ M scales with the width,
# see `default_codecs`), every family, with and without IVF. On 2 cores the shipped sample
# runs it in about half a minute, wordnet-minilm with --faiss in under 15 minutes.
DEFAULT_CODECS = ("PQ32x4;PQ32x8;MRL256,RB1;PQ48x8;PQ96x4;RB1;IVF{nlist},RB1;IVF{nlist},PQ96x4;"
                  "MRL256,RB2;RB2;RB4;SQ8")

# The README's main job (`vecz bench sample`): six specs a reader takes in at a glance.
SAMPLE_CODECS = "PQ32x4;PQ48x8;RB1;IVF{nlist},RB1;RB2;SQ8"


def ivf_nlist(n: int) -> int | None:
    """IVF list count for n rows: the power of two nearest 4 sqrt(n), lowered until every list
    averages at least 64 rows; None when that leaves fewer than 16 lists (IVF is not worth it)."""
    if n < 16 * 64:
        return None
    nlist = 2 ** int(round(math.log2(4 * math.sqrt(n))))
    while nlist > 16 and n / nlist < 64:
        nlist //= 2
    return nlist if nlist >= 16 else None


def default_codecs(n: int, dim: int, grid: str = DEFAULT_CODECS) -> str:
    """`grid` (default `DEFAULT_CODECS`) for n rows of `dim` dims: IVF sized by `ivf_nlist`
    (left out when the base is too small), PQ sub-quantizer counts and MRL widths scaled
    from 384 dims."""
    nlist = ivf_nlist(n)
    out = []
    for spec in grid.split(";"):
        if "{nlist}" in spec:
            if nlist is None:
                continue
            spec = spec.format(nlist=nlist)
        spec = re.sub(r"PQ(\d+)", lambda m: f"PQ{max(1, min(dim, int(m.group(1)) * dim // 384))}", spec)
        spec = re.sub(r"MRL(\d+)", lambda m: f"MRL{max(8, int(m.group(1)) * dim // 384 // 8 * 8)}", spec)
        if spec.startswith(f"MRL{dim},"):
            spec = spec.split(",", 1)[1]
        if spec not in out:
            out.append(spec)
    return ";".join(out)

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
    """The checkout holding engine/ (for an editable install; a wheel has none)."""
    return Path(__file__).resolve().parents[1]


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
    base_path : Path or None
        The base file, beside which computed ground truth is cached (`ground_truth`).
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
    ds = Dataset(name or str(base), xb, np.ascontiguousarray(xq), base_path=Path(base))
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
    metric: str = "cosine",
) -> Dataset:
    """A named dataset (`DATASETS`) with its texts, and its gt_ids.npy when it ships one.

    Explicit `gt`, `texts` and `query_texts` replace the dataset's own files. The shipped
    gt_ids.npy ranks by inner product of unit vectors, so it serves cosine and ip; for l2
    the truth is computed (`ground_truth`).
    """
    folder = dataset_dir(name)
    if not (folder / "base.npy").is_file():
        raise DatasetNotFound(f"dataset {name!r}: expected {folder / 'base.npy'}, not found")
    if texts is None and query_texts is None:
        texts = folder / "base_texts.txt.gz"
        query_texts = folder / "query_texts.txt.gz"
        if not (Path(texts).is_file() and Path(query_texts).is_file()):
            texts = query_texts = None
    if gt is None and metric in ("cosine", "ip") and (folder / "gt_ids.npy").is_file():
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


def exact_topk(base: np.ndarray, queries: np.ndarray, metric: str, depth: int = GT_DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`depth` neighbours in float32, in blocks of queries.

    Scores: ``<q, x>`` for ip, the same on unit rows for cosine (both descending), and
    ``|q - x|^2 = |q|^2 - 2<q, x> + |x|^2`` for l2 (ascending). Ties are broken by the
    smaller id. Blocks of queries are scored by one BLAS product each and their top-k
    selected by a parallel Numba heap (`vecz.kernels.topk.topk_select_batch`).

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
        keys = q @ xb.T  # BLAS, on every thread it is given
        if b_sq is not None:
            # 2<q, x> - |x|^2 orders like -|q - x|^2; |q|^2 is added back for the score
            keys = 2 * keys - b_sq[None, :]
        s, i = topk_select_batch(keys, all_ids, depth)  # Numba, one query per thread
        if b_sq is not None:
            s = np.einsum("ij,ij->i", q, q)[:, None] - s
        out_s[start : start + len(q)] = s
        out_i[start : start + len(q)] = i
    return out_s, out_i


def _gt_key(base: np.ndarray, queries: np.ndarray, metric: str, depth: int) -> str:
    h = hashlib.sha256(f"vecz-gt-1 {metric} {depth} {base.shape} {queries.shape}".encode())
    h.update(np.ascontiguousarray(base, dtype=np.float32).data)
    h.update(np.ascontiguousarray(queries, dtype=np.float32).data)
    return h.hexdigest()[:20]


def gt_cache_paths(data: Dataset, metric: str, depth: int = GT_DEPTH) -> list[Path]:
    """Where computed ground truth is looked for and saved, in order: beside the base file,
    then ``$XDG_CACHE_HOME/vecz/gt`` (for read-only data folders). The name carries a hash
    of the base, the queries, the metric and the depth, so a stale file is never used."""
    depth = min(depth, len(data.base))
    key = _gt_key(data.base, data.queries, metric, depth)
    stem = data.base_path.name.split(".")[0] if data.base_path is not None else "data"
    name = f"{stem}.gt-{metric}-top{depth}-{key}.npy"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vecz" / "gt"
    dirs = ([data.base_path.parent] if data.base_path is not None else []) + [cache]
    return [d / name for d in dirs]


def ground_truth(data: Dataset, metric: str, depth: int = GT_DEPTH) -> np.ndarray:
    """`data.gt`, or the exact top-`depth` ids computed once and cached (`gt_cache_paths`).

    Fills `data.gt` and `data.gt_source`. A cached file is read with the same checks as
    `--gt` (shape, id range, no pickle); a damaged one is recomputed and replaced.
    """
    if data.gt is not None:
        return data.gt
    paths = gt_cache_paths(data, metric, depth)
    want = min(depth, len(data.base))
    for path in paths:
        if path.is_file():
            try:
                gt = read_ids(path, len(data.queries), len(data.base))
            except (VeczError, ValueError, OSError):
                continue
            if gt.shape[1] == want:
                data.gt, data.gt_source = gt, f"exact top-{want} (float32), cached in {path}"
                return gt
    t0 = time.perf_counter()
    gt = exact_topk(data.base, data.queries, metric, depth)[1]
    took = time.perf_counter() - t0
    data.gt, data.gt_source = gt, f"exact top-{gt.shape[1]} (float32), computed in {took:.1f} s"
    for path in paths:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, gt, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            continue
        data.gt_source += f", cached in {path}"
        break
    return gt


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
    return select_exact(exact_keys(base, queries, candidates, metric), candidates, k, metric)


def exact_keys(base: np.ndarray, queries: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """float32 (nq, R) exact keys of the candidates, higher is better (negated squared
    distance for l2), -inf for empty slots (-1). Arguments as `exact_rerank`."""
    nq, r = candidates.shape
    keys_all = np.empty((nq, r), dtype=np.float32)
    block = max(1, _BLOCK_FLOATS // max(1, r * base.shape[1]))
    for start in range(0, nq, block):
        c = candidates[start : start + block]
        q = queries[start : start + block]
        valid = c >= 0
        vecs = base[np.where(valid, c, 0)]
        if metric == "l2":
            diff = vecs - q[:, None, :]
            keys = -np.einsum("brd,brd->br", diff, diff)
        else:
            keys = np.einsum("brd,bd->br", vecs, q)
        keys_all[start : start + len(c)] = np.where(valid, keys, -np.inf)
    return keys_all


def select_exact(keys: np.ndarray, candidates: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` of `exact_keys` (stable: equal keys keep the candidates' order); the output
    of `exact_rerank`. Pass a column prefix of both to re-rank only the first R."""
    nq, r = candidates.shape
    is_l2 = metric == "l2"
    out_s = np.full((nq, k), np.float32(np.inf if is_l2 else -np.inf), dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    keep = min(k, r)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :keep]
    s = np.take_along_axis(keys, order, axis=1)
    out_s[:, :keep] = -s if is_l2 else s
    out_i[:, :keep] = np.take_along_axis(np.where(candidates >= 0, candidates, -1), order, axis=1)
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
    | `MRL<d>,...` | `MRL<d>,...`: the rest on the first d dims (IndexPreTransform with a LinearTransform that keeps them, then L2 normalisation for cosine/ip) |
    """
    stages = parse_spec(spec)
    mrl = next((s for s in stages if isinstance(s, MRL)), None)
    if mrl is not None:
        dim = min(dim, mrl.dim)
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
    if mrl is not None:
        # faiss has no truncation stage: `_FaissSide` puts a LinearTransform keeping the
        # first d coordinates (and L2 normalisation for cosine/ip) in front of `body`.
        body = f"MRL{mrl.dim},{body}"
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


def _time_batch(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[Any, float]:
    """Run `fn` over the whole batch until `_BATCH_SECONDS` are spent (at least one round,
    at most `_BATCH_MAX_ROUNDS`); returns the last result and queries / median round."""
    # Load (or compile) the Numba kernels and build faiss's lazy tables first: one query takes
    # the single-query paths, 256 every batch path (vecz scans 8 queries at a time, and IVF
    # lists once per chunk of queries from 16 queries, 256 for PQ).
    fn(queries[:1])
    fn(queries[:256])
    rounds: list[float] = []
    out = None
    while not rounds or (sum(rounds) < _BATCH_SECONDS and len(rounds) < _BATCH_MAX_ROUNDS):
        t0 = time.perf_counter()
        out = fn(queries)
        rounds.append(time.perf_counter() - t0)
    return out, len(queries) / max(float(np.median(rounds)), 1e-9)


def _time_single(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[float, float]:
    fn(queries[:1])
    lat = []
    for i in range(min(LATENCY_QUERIES, len(queries))):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        fn(q)
        lat.append(time.perf_counter() - t0)
    ms = np.asarray(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_") or "spec"


@dataclasses.dataclass
class BuiltStore:
    """A store built by `build_store`: where it is and what building it cost."""

    path: Path
    spec: str
    code_size: int
    train_s: float
    build_s: float
    sample: np.ndarray  # the rows the codec trained on (faiss trains on the same rows)


def build_store(path: str | Path, spec: str, base: np.ndarray, metric: str, *, seed: int = 0) -> BuiltStore:
    """Build a real store of `base` (ids 0..n-1) with codec `spec` and a float32 dense tier.

    The codec trains on `train_size` rows drawn with `seed` (all rows when fewer); build
    time covers training, encoding, writing, checksumming and fsyncing every file.
    """
    from .store import Store

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    dim = base.shape[1]
    sel = _train_rows(len(base), Codec(spec, dim, metric, seed=seed).train_size, seed)
    sample = base if sel is None else base[sel]
    t0 = time.perf_counter()
    with Store.create(path, dim=dim, metric=metric, codec=spec, dense="f32", seed=seed,
                      train_size=len(sample)) as store:
        store.train(sample)
        train_s = time.perf_counter() - t0
        store.add(base, ids=np.arange(len(base), dtype=np.int64))
        spec, size = store.codec.spec, store.codec.code_size
    return BuiltStore(path, spec, size, train_s, time.perf_counter() - t0, sample)


def store_nprobe(nlist: int, nprobe: int | None) -> int | None:
    """nprobe a search of a store with `nlist` lists uses: None for flat codecs, the given
    value capped at nlist, or the store's default nlist // 8."""
    if nlist <= 1:
        return None
    return min(nlist, nprobe) if nprobe is not None else max(1, nlist // 8)


def measure_store(store: Any, queries: np.ndarray, gt: np.ndarray, *, k: int, rerank: int, nprobe: int | None,
                  ats: Sequence[int], latency: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """Search an open store with every query (timed as a batch), then `LATENCY_QUERIES`
    one at a time. Returns the row's measured fields and the ids found (nq, k)."""
    nq = len(queries)

    def search(q: np.ndarray) -> Any:
        return store.search(q, k, nprobe=nprobe, rerank=rerank)

    res, qps = _time_batch(search, queries)
    ids = res[1]
    row: dict[str, Any] = {}
    for a in (1, 10, 100):
        row[f"recall@{a}"] = round(recall_at(ids, gt, a), 4) if a in ats else None
    row["qps"] = round(qps, 1)
    if latency:
        p50, p99 = _time_single(search, queries)
        row["p50_ms"], row["p99_ms"] = round(p50, 4), round(p99, 4)
    else:
        row["p50_ms"] = row["p99_ms"] = None
    row["rows_read_per_query"] = round(res.stats.rows_read / nq, 2)
    row["bytes_read_per_query"] = round(res.stats.bytes_read / nq, 1)
    row["candidates_per_query"] = round(res.stats.candidates / nq, 1)
    return row, ids


@dataclasses.dataclass
class BenchResult:
    """Rows (one per spec x re-ranking depth, JSON-ready dicts) and what produced them.

    `found` maps (spec, R) to the int64 (nq, k) ids vecz returned; `gt` is the truth used.
    `recommendation` is filled by `vecz.engine.recommend` for `--budget` runs.
    """

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    found: dict[tuple[str, int], np.ndarray]
    gt: np.ndarray
    recall_ats: list[int]
    recommendation: dict[str, Any] | None = None

    @property
    def quality_key(self) -> str:
        """The recall column the Pareto front and the examples rank by."""
        return "recall@10" if 10 in self.recall_ats else f"recall@{max(self.recall_ats)}"


def check_common(metric: str, k: int, nprobe: int | None) -> None:
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"k must be an integer >= 1, found {k!r}")
    if nprobe is not None and nprobe < 1:
        raise InvalidInput(f"nprobe must be >= 1, found {nprobe}")


def recall_ats(gt: np.ndarray, k: int) -> list[int]:
    ats = [r for r in (1, 10, 100) if r <= k and r <= gt.shape[1]]
    if not ats:
        raise InvalidInput(f"the ground truth holds {gt.shape[1]} neighbours per query: too few for recall@1")
    return ats


@contextlib.contextmanager
def work_dir(path: str | Path | None) -> Iterator[Path]:
    """Where the benchmark's stores are built: `path` (kept) or a temporary folder (removed)."""
    if path is not None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="vecz-bench-") as tmp:
        yield Path(tmp)


def run_bench(
    data: Dataset,
    specs: Sequence[str],
    *,
    metric: str = "cosine",
    k: int = 10,
    rerank: Sequence[int] = (0, 50),
    nprobe: int | None = None,
    with_faiss: bool = False,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = False,
    work: str | Path | None = None,
    keep_stores: bool = False,
) -> BenchResult:
    """Build a real store per spec on `data` and measure it; see the module docstring.

    Parameters
    ----------
    data : Dataset
        When `data.gt` is None the exact top-100 is computed (`ground_truth`, cached).
    specs : sequence of str
        Codec specs, checked against the width before any training.
    rerank : sequence of int
        Depths R: 0 scores from codes only; R >= k re-scores the best R exactly, reading
        those rows from the store's dense file.
    nprobe : int, optional
        Lists visited per query by IVF specs (vecz and faiss alike); default nlist // 8.
    threads : int, optional
        Numba, faiss and BLAS threads (default: all cores).
    progress : bool
        Show a tqdm bar over specs (on stderr).
    work, keep_stores :
        Folder the stores are built in (default: a temporary one); each store is removed
        once measured unless `keep_stores`.
    """
    from .store import Store

    check_common(metric, k, nprobe)
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
    gt = ground_truth(data, metric)
    ats = recall_ats(gt, k)
    xb_p = prepare(xb, metric) if with_faiss else None  # faiss's float32 vectors, as the metric sees them

    rows: list[dict[str, Any]] = []
    found: dict[tuple[str, int], np.ndarray] = {}
    from tqdm import tqdm

    bar = tqdm(specs, desc="vecz bench", unit="spec", disable=not progress, file=sys.stderr, leave=False)
    with work_dir(work) as wd:
        for spec in bar:
            bar.set_postfix_str(f"{spec}: build")
            built = build_store(wd / _slug(spec), spec, xb, metric, seed=seed)
            with Store.open(built.path) as store:
                ram = sum(store.memory_bytes().values())
                npr = store_nprobe(store.codec.nlist, nprobe)
                fx = None
                if with_faiss:
                    bar.set_postfix_str(f"{spec}: faiss build")
                    fx = _FaissSide(spec, dim, metric, xb_p, built.sample, k, npr)
                for r in rerank:
                    bar.set_postfix_str(f"{spec}: search R={r}")
                    measured, ids = measure_store(store, xq, gt, k=k, rerank=r, nprobe=npr, ats=ats)
                    found[(built.spec, r)] = ids
                    row: dict[str, Any] = {
                        "spec": built.spec,
                        "code_size": built.code_size,
                        "bytes_per_vector": built.code_size + ID_BYTES,
                        "ram_bytes_per_vector": round(ram / max(1, len(xb)), 2),
                        "rerank": r,
                        "nprobe": npr,
                    }
                    row.update(measured)
                    row.update(build_s=round(built.build_s, 3), train_s=round(built.train_s, 3))
                    if fx is not None:
                        row.update(fx.measure(r, xq, gt, ats, row["qps"]))
                    rows.append(row)
                del fx
            if not keep_stores:
                shutil.rmtree(built.path, ignore_errors=True)
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
        "nprobe": nprobe if nprobe is not None else "nlist // 8",
        "threads": thread_info["threads"],
        "thread_settings": thread_info,
        "faiss": with_faiss,
        "faiss_rabitq_qb": FAISS_RABITQ_QB if with_faiss else None,
        "ground_truth": data.gt_source,
        "latency_queries": min(LATENCY_QUERIES, int(xq.shape[0])),
        "seed": seed,
    }
    return BenchResult(rows, settings, found, gt, ats)


_FAISS_KEYS = ("faiss_index", "faiss_bytes_per_vector", "faiss_ram_bytes_per_vector", "faiss_recall@1",
               "faiss_recall@10", "faiss_recall@100", "faiss_qps", "faiss_p50_ms", "faiss_p99_ms", "faiss_build_s",
               "speed_vs_faiss", "faiss_note")


def _mrl_pretransform(index: Any, dim: int, d: int, renorm: bool) -> tuple[Any, tuple]:
    """Wrap a faiss index built on `d` dims so it takes `dim`-wide vectors: a LinearTransform
    that keeps the first d coordinates (the MRL stage), then L2 normalisation for cosine/ip."""
    import faiss

    keep = faiss.LinearTransform(dim, d, False)
    a = np.zeros((d, dim), dtype=np.float32)
    a[np.arange(d), np.arange(d)] = 1.0
    faiss.copy_array_to_vector(a.ravel(), keep.A)
    keep.is_trained = True
    chain = [keep] + ([faiss.NormalizationTransform(d, 2.0)] if renorm else [])
    wrapped = faiss.IndexPreTransform(chain[-1], index)
    for t in chain[-2::-1]:
        wrapped.prepend_transform(t)
    return wrapped, (keep, chain, index)  # the caller keeps the parts alive as long as the wrapper


def _set_faiss_nprobe(index: Any, nprobe: int) -> None:
    for inner in _faiss_inner_indexes(index):
        if hasattr(inner, "nprobe"):
            inner.nprobe = nprobe


class _FaissSide:
    """The closest faiss index of one spec, trained on the same rows, searched the same way."""

    def __init__(self, spec: str, dim: int, metric: str, xb_p: np.ndarray, train_raw: np.ndarray, k: int,
                 nprobe: int | None) -> None:
        import faiss

        self.k = k
        self.metric = metric
        self.dim = dim
        self.factory = faiss_factory(spec, dim)
        self.note = None
        self.index = None
        self.refine = None
        if self.factory is None:
            self.note = f"no faiss counterpart for {spec!r}"
            return
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        mrl = next((s for s in parse_spec(spec) if isinstance(s, MRL)), None)
        train = prepare(train_raw, metric)
        t0 = time.perf_counter()
        try:
            with _captured_stderr_fd() as warnings:
                body = self.factory.split(",", 1)[1] if mrl is not None else self.factory
                if mrl is not None and mrl.dim < dim:
                    inner = faiss.index_factory(mrl.dim, body, fmetric)
                    index, self._parts = _mrl_pretransform(inner, dim, mrl.dim, renorm=metric != "l2")
                else:
                    index = faiss.index_factory(dim, body, fmetric)
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
        if nprobe is not None:
            _set_faiss_nprobe(index, nprobe)
        self.index = index
        self.xb_p = xb_p
        self.code_size = int(index.sa_code_size())

    def measure(self, r: int, xq: np.ndarray, gt: np.ndarray, ats: Sequence[int], vecz_qps: float) -> dict[str, Any]:
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
                # IndexRefineFlat over the built index: the float32 rows (held in RAM, unlike
                # vecz's dense file) re-score the shortlist; k_factor = R / k re-scores R.
                self.refine = faiss.IndexRefineFlat(self.index, faiss.swig_ptr(self.xb_p))
            self.refine.k_factor = r / self.k
            index = self.refine
        metric, k = self.metric, self.k

        def search(q: np.ndarray) -> np.ndarray:
            return index.search(prepare(q, metric), k)[1]

        ids, qps = _time_batch(search, xq)
        p50, p99 = _time_single(search, xq)
        out["faiss_index"] = self.factory + (f",RFlat(k_factor={r / k:g})" if r else "")
        out["faiss_bytes_per_vector"] = self.code_size + ID_BYTES
        out["faiss_ram_bytes_per_vector"] = self.code_size + ID_BYTES + (4 * self.dim if r else 0)
        for a in (1, 10, 100):
            out[f"faiss_recall@{a}"] = round(recall_at(ids, gt, a), 4) if a in ats else None
        out["faiss_qps"] = round(qps, 1)
        out["faiss_p50_ms"], out["faiss_p99_ms"] = round(p50, 4), round(p99, 4)
        out["faiss_build_s"] = round(self.build_s, 3)
        out["speed_vs_faiss"] = round(vecz_qps / qps, 3)
        return out


# The examples show the smallest spec whose recall reaches this, so a reader sees what the
# compressed search returns at a useful operating point.
EXAMPLE_RECALL = 0.95


def best_compressed(result: BenchResult) -> tuple[str, int] | None:
    """(spec, R) whose neighbours the examples show: the fewest bytes per vector among rows
    reaching `EXAMPLE_RECALL` (then the best recall, then the shallowest R); when none does,
    the best recall. Flat and F16 are left out since they barely compress.
    """
    key = result.quality_key
    pool = [row for row in result.rows
            if row.get(key) is not None and not isinstance(parse_spec(row["spec"])[-1], (Flat, F16))]
    if not pool:
        return None
    good = [row for row in pool if row[key] >= EXAMPLE_RECALL]
    if good:
        best = min(good, key=lambda row: (row["bytes_per_vector"], -row[key], row["rerank"]))
    else:
        best = max(pool, key=lambda row: (row[key], -row["bytes_per_vector"], -row["rerank"]))
    return best["spec"], best["rerank"]


# --------------------------------------------------------------------------- formatting


def num_cell(key: str, fmt: str) -> Callable[[dict], str]:
    """Formatter of one numeric table cell: `fmt` of row[key], '-' when it is None."""
    return lambda row: "-" if row.get(key) is None else format(row[key], fmt)


def measured_columns(qps_fmt: str) -> list[tuple[str, str, Callable[[dict], str]]]:
    """The (header, alignment, formatter) columns every table shares: speed, disk reads, build."""
    return [
        ("QPS", ">", num_cell("qps", qps_fmt)),
        ("p50 ms", ">", num_cell("p50_ms", ".3f")),
        ("p99 ms", ">", num_cell("p99_ms", ".3f")),
        ("rows/q", ">", num_cell("rows_read_per_query", "g")),
        ("KiB/q", ">", lambda row: "-" if row.get("bytes_read_per_query") is None
         else f"{row['bytes_read_per_query'] / 1024:.1f}"),
        ("build s", ">", num_cell("build_s", ".1f")),
    ]


def _columns(result: BenchResult, faiss_cols: bool, mark: str = "*") -> list[tuple[str, str, Callable[[dict], str]]]:
    """(header, alignment, formatter) of each table column; `mark` flags Pareto rows."""

    num = num_cell
    qkey = result.quality_key
    cols: list[tuple[str, str, Callable[[dict], str]]] = [
        ("spec", "<", lambda row: row["spec"]),
        ("bytes/vec", ">", num("bytes_per_vector", "d")),
        ("RAM B/vec", ">", num("ram_bytes_per_vector", ".1f")),
        ("nprobe", ">", lambda row: "-" if row.get("nprobe") is None else str(row["nprobe"])),
        ("R", ">", num("rerank", "d")),
    ]
    for a in result.recall_ats:
        key = f"recall@{a}"
        if key == qkey:
            cols.append((key, ">", lambda row, key=key: ("-" if row[key] is None else f"{row[key]:.3f}")
                         + (mark if row.get("pareto") else " ")))
        else:
            cols.append((key, ">", num(key, ".3f")))
    cols += measured_columns(".0f")
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
    "spec", "code_size", "bytes_per_vector", "ram_bytes_per_vector", "nprobe", "rerank", "tune_recall@10",
    "recall@1", "recall@10", "recall@100", "qps", "p50_ms", "p99_ms", "rows_read_per_query",
    "bytes_read_per_query", "candidates_per_query", "build_s", "train_s", "pareto", "recommended",
) + _FAISS_KEYS


def _label(row: dict[str, Any], budget_mode: bool) -> str:
    if not budget_mode:
        return row["spec"]
    npr = f" np{row['nprobe']}" if row.get("nprobe") else ""
    return f"{row['spec']}{npr} R{row['rerank']}"


def _write_plots(result: BenchResult, out: Path) -> list[Path]:
    """recall_vs_bytes.png (grid runs: Pareto front per R) and recall_vs_qps.png (both modes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = result.quality_key
    budget_mode = result.recommendation is not None
    depths = sorted({row["rerank"] for row in result.rows})
    written = []
    title = result.settings["dataset"] + (f", budget {result.settings['budget']} B/vector" if budget_mode else "")

    if not budget_mode:
        fig, ax = plt.subplots(figsize=(9, 6))
        for r in depths:
            rows = [row for row in result.rows if row["rerank"] == r and row[key] is not None]
            label = "codes only" if r == 0 else f"re-ranked, R={r}"
            pts = ax.scatter([row["bytes_per_vector"] for row in rows], [row[key] for row in rows], label=label)
            front = sorted((row for row in rows if row["pareto"]), key=lambda row: row["bytes_per_vector"])
            ax.step([row["bytes_per_vector"] for row in front], [row[key] for row in front], where="post",
                    color=pts.get_facecolor()[0], alpha=0.6)
            for row in rows:
                if r == depths[0] or row["pareto"]:  # re-ranked rows: name the front only (legibility)
                    ax.annotate(row["spec"], (row["bytes_per_vector"], row[key]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes / vector in RAM (codes + 8-byte id)")
        written.append(_save_plot(fig, ax, key, f"{title}: {key} vs memory (lines: Pareto front)",
                                  out / "recall_vs_bytes.png"))

    fig, ax = plt.subplots(figsize=(9, 6))
    groups = [[row for row in result.rows if row[key] is not None]] if budget_mode else [
        [row for row in result.rows if row["rerank"] == r and row[key] is not None] for r in depths]
    for rows in groups:
        if not rows:
            continue
        r = rows[0]["rerank"]
        label = "vecz (store)" if budget_mode else ("vecz, codes only" if r == 0 else f"vecz, R={r}")
        ax.scatter([row["qps"] for row in rows], [row[key] for row in rows], label=label)
        for row in rows:
            ax.annotate(_label(row, budget_mode) + (" (recommended)" if row.get("recommended") else ""),
                        (row["qps"], row[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        frows = [row for row in rows if row.get("faiss_qps") is not None]
        if frows:
            flabel = "faiss" if budget_mode else f"faiss, {'codes only' if r == 0 else f'R={r}'}"
            ax.scatter([row["faiss_qps"] for row in frows], [row["faiss_" + key] for row in frows], marker="x",
                       label=flabel)
    if budget_mode:
        ax.axhline(result.settings["target_recall"], color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xscale("log")
    nq = (result.settings["heldout_queries"][1] - result.settings["heldout_queries"][0]) if budget_mode \
        else result.settings["nq"]
    ax.set_xlabel(f"queries per second ({result.settings['threads']} threads, batch of {nq})")
    written.append(_save_plot(fig, ax, key, f"{title}: {key} vs speed", out / "recall_vs_qps.png"))
    return written


def _save_plot(fig: Any, ax: Any, ylabel: str, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# In the best-per-budget table, the fastest spec whose recall is within this of the best is
# named beside the best (recall differences this small are within a few queries' noise).
NEAR_BEST = 0.01


def best_per_budget(result: BenchResult) -> list[dict[str, Any]]:
    """For each budget (every distinct bytes/vector in the rows) and re-ranking depth R, the
    spec with the best quality figure at or under it (the Pareto front read as a lookup
    table) and the fastest spec within `NEAR_BEST` of that figure.

    Returns rows ``{"bytes_per_vector": B, "best": {R: (spec, recall, qps) or None},
    "fastest": {R: (spec, recall, qps) or None}}``, budgets ascending.
    """
    key = result.quality_key
    depths = sorted({row["rerank"] for row in result.rows})
    out = []
    for budget in sorted({row["bytes_per_vector"] for row in result.rows}):
        best: dict[int, tuple[str, float, float] | None] = {}
        fastest: dict[int, tuple[str, float, float] | None] = {}
        for r in depths:
            pool = [row for row in result.rows
                    if row["rerank"] == r and row["bytes_per_vector"] <= budget and row.get(key) is not None]
            top = max(pool, key=lambda row: (row[key], -row["bytes_per_vector"], row["qps"]), default=None)
            best[r] = None if top is None else (top["spec"], top[key], top["qps"])
            near = [row for row in pool if top is not None and row[key] >= top[key] - NEAR_BEST]
            quick = max(near, key=lambda row: (row["qps"], row[key]), default=None)
            fastest[r] = None if quick is None else (quick["spec"], quick[key], quick["qps"])
        out.append({"bytes_per_vector": budget, "best": best, "fastest": fastest})
    return out


def _budget_markdown(result: BenchResult) -> str:
    depths = sorted({row["rerank"] for row in result.rows})
    head = ["bytes/vec budget"] + [("codes only" if r == 0 else f"R={r}") for r in depths]
    lines = ["| " + " | ".join(head) + " |", "|---:|" + "---|" * len(depths)]
    for entry in best_per_budget(result):
        cells = [str(entry["bytes_per_vector"])]
        for r in depths:
            b, f = entry["best"][r], entry["fastest"][r]
            cell = "-" if b is None else f"**{b[0]}** ({b[1]:.3f}, {b[2]:,.0f} QPS)"
            if f is not None and b is not None and f[0] != b[0]:
                cell += f"; fastest near it: {f[0]} ({f[1]:.3f}, {f[2]:,.0f} QPS)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_json_csv(result: BenchResult, out: Path, machine: dict[str, Any]) -> None:
    payload = {"settings": result.settings, "machine": machine, "rows": result.rows}
    if result.recommendation is not None:
        payload["recommendation"] = result.recommendation
    (out / "results.json").write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n",
                                      encoding="utf-8")
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS})


def write_outputs(result: BenchResult, out: str | Path, machine: dict[str, Any], examples: str | None = None) -> list[str]:
    """Write report.md, results.csv, results.json and (with matplotlib) PNG plots into `out`.

    A grid run (`run_bench`) gets recall@10 against bytes/vector with the Pareto front and
    recall@10 against QPS; a `--budget` run (`vecz.engine.recommend`) gets the recommendation,
    the confirming runs, the tuning sweeps and recall@10 against QPS.
    Returns notes for the terminal (files written, plots skipped).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    _write_json_csv(result, out, machine)
    s = result.settings
    head = (f"{s['n']} base vectors x {s['dim']} dims, {s['nq']} queries, metric {s['metric']}, k = {s['k']}, "
            f"{s['threads']} threads. Ground truth: {s['ground_truth']}.")
    if result.recommendation is not None:
        from . import recommend as rec

        key = s["recall_key"]
        md = [
            f"# vecz bench --budget {s['budget']}: {s['dataset']}",
            "",
            head,
            "",
            f"Searched {len(s['candidates'])} specs that fit {s['budget']} code bytes per vector "
            f"({', '.join(s['candidates'])}), re-ranking depths {s['depths']} and, for IVF, nprobe nlist/32 .. "
            f"nlist/2, for the fastest way to {key} >= {s['target_recall']}. Tuned on queries "
            f"{s['tune_queries'][0]}..{s['tune_queries'][1] - 1}, confirmed on held-out queries "
            f"{s['heldout_queries'][0]}..{s['heldout_queries'][1] - 1}; search took {s['search_s']} s.",
            "",
            "**" + result.recommendation["summary"] + "**",
            "",
            "## Confirming runs (held-out queries, through the store)",
            "",
            "R = rows re-scored exactly per query, read from the dense file (rows/q and KiB/q as counted "
            "by the store); QPS over the held-out batch; p50/p99 over "
            f"{s['latency_queries']} queries sent one at a time; build = train + encode + write + fsync.",
            "",
            rec.format_runs(result, markdown=True),
            "",
            f"## Tuning sweeps ({key} on the tuning queries against re-ranking depth R)",
            "",
            rec.format_sweeps(result, markdown=True),
            "",
        ]
    else:
        md = [
            f"# vecz bench: {s['dataset']}",
            "",
            head + f" nprobe = {s['nprobe']}.",
            "",
            "Every spec is built as a real store (codes in RAM, float32 vectors in the dense file) and searched "
            "through it. bytes/vec = code bytes + 8-byte id; RAM B/vec = what the open store measures it holds "
            "(codes in scan layout with padding, ids, trained arrays) / rows; R = rows re-scored exactly per "
            "query, read from the dense file (rows/q and KiB/q as counted by the store); QPS over the whole "
            f"batch; p50/p99 over {s['latency_queries']} queries sent one at a time; build = train + encode + "
            f"write + fsync. `*` and bold: best {result.quality_key} at or under that row's bytes/vector among "
            "rows with the same R (the Pareto front)."
            + (f" faiss: closest index configuration, same data, training rows and threads (RaBitQ with qb = "
               f"{s['faiss_rabitq_qb']}; IndexRefineFlat for R > 0, which keeps the float32 vectors in RAM); "
               "'vs faiss' = vecz QPS / faiss QPS." if s.get("faiss") else ""),
            "",
            markdown_table(result),
            "",
            f"## Best spec per budget ({result.quality_key}, by re-ranking depth)",
            "",
            f"Each cell: the best {result.quality_key} among specs with at most that many bytes per vector, "
            f"and the fastest spec within {NEAR_BEST} of it when that is another one.",
            "",
            _budget_markdown(result),
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
