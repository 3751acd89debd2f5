"""`vecz bench` grid runs: build a real store per codec spec and measure it (DESIGN.md, "How
quality and speed are measured").

Role and contract. `build_store` (THE store builder of the benchmarks, bench/ scripts
included) writes a store of the base (`Store.create` + `train` + `add`, float32 dense tier,
ids 0..n-1) and times it. `run_bench` opens each store read-only and searches every query
through `Store.search` for each re-ranking depth R (0 = codes only; R > 0 re-scores the R
best candidates with the vectors read from the dense file). Every row reports

- recall@1, @10, @100 (those <= k) against the exact truth (`data.ground_truth`);
- bytes/vector = `codec.code_size` + 8 (the int64 id), and the RAM the open store measures
  it holds after a first search (`Store.memory_bytes`) per row (rerank="auto" adds its error
  model, built at its first auto search);
- QPS over the whole query batch, and p50 / p99 latency of queries sent one at a time;
- rows and bytes read from the dense file per query and candidates scored, as the store
  counts them (`SearchResult.stats`); build seconds (train + encode + write + fsync);
- with `with_faiss`, the closest faiss index (`faiss_side.FaissSide`) on the same rows,
  training sample, metric and thread count, and the ratio vecz QPS / faiss QPS measured in
  the same process run.

`vecz.engine.bench.budget` builds and measures stores with the same functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from ..bounds import DEFAULT_CONFIDENCE, parse_auto
from ..codecs import METRICS, Codec, code_size
from ..errors import CodecSpecError, DimensionMismatch, InvalidInput
from ..quantizers import PQ4_MAX_M
from .data import Dataset, ground_truth
from .exact import prepare
from .faiss_side import FAISS_RABITQ_QB, FaissSide, set_faiss_threads
from .metrics import (ID_BYTES, LATENCY_QUERIES, BenchResult, miss_rate, pareto_front, quality_at, recall_at, recall_ats,
                      time_batch, time_single)

__all__ = [
    "DEFAULT_CODECS",
    "SAMPLE_CODECS",
    "ivf_nlist",
    "default_codecs",
    "parse_codecs",
    "parse_rerank",
    "check_common",
    "set_blas_threads",
    "set_threads",
    "slug",
    "BuiltStore",
    "build_store",
    "built_stores",
    "store_nprobe",
    "measure_store",
    "store_row",
    "run_bench",
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
        spec = re.sub(r"PQ(\d+)x(\d)", lambda m: f"PQ{_scaled_m(int(m.group(1)), int(m.group(2)), dim)}x{m.group(2)}",
                      spec)
        spec = re.sub(r"MRL(\d+)", lambda m: f"MRL{max(8, int(m.group(1)) * dim // 384 // 8 * 8)}", spec)
        if spec.startswith("MRL") and int(spec[3:spec.index(",")]) >= dim:  # no narrower prefix to keep
            spec = spec.split(",", 1)[1]
        if spec not in out:
            out.append(spec)
    return ";".join(out)


def _scaled_m(m: int, nbits: int, dim: int) -> int:
    """A grid's PQ sub-quantizer count `m` at 384 dims scaled to `dim`, within what PQ takes
    (1..dim; 4-bit at most `PQ4_MAX_M`)."""
    return max(1, min(dim, m * dim // 384, PQ4_MAX_M if nbits == 4 else dim))


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


def parse_rerank(text: str, k: int) -> list[int | str]:
    """``"0,50,auto"`` -> [0, 50, "auto:100"]; each depth is 0 (codes only), >= k, or
    ``auto`` / ``auto:R`` (error-bound re-ranking capped at R rows, default
    `vecz.engine.bounds.auto_cap`; `vecz.engine.bounds.parse_auto`)."""
    depths: list[int | str] = []
    for p in (p.strip().lower() for p in text.split(",")):
        if not p:
            continue
        if p.startswith("auto"):
            depths.append(f"auto:{parse_auto(p, k)}")  # canonical: the cap spelled out
            continue
        try:
            depths.append(int(p))
        except ValueError:
            raise InvalidInput(f"--rerank expects comma-separated integers or auto[:R] such as '0,50,auto', "
                               f"found {text!r}") from None
    if not depths:
        raise InvalidInput(f"--rerank {text!r} names no depth")
    _check_depths(depths, k)
    return list(dict.fromkeys(depths))


def _check_depths(depths: Sequence[int | str], k: int) -> None:
    for r in depths:
        if isinstance(r, str):
            parse_auto(r, k)
            continue
        if r < 0 or 0 < r < k:
            raise InvalidInput(f"--rerank depths must be 0 or >= k={k} (re-ranking keeps the best k of R), found {r}")


def check_common(metric: str, k: int, nprobe: int | None) -> None:
    """Options a grid run and a --budget search check alike, before any work."""
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"k must be an integer >= 1, found {k!r}")
    if nprobe is not None and nprobe < 1:
        raise InvalidInput(f"nprobe must be >= 1, found {nprobe}")


def check_dataset(data: Dataset) -> None:
    """A `Dataset` given through the API: 2-D base and queries of one width (queries of
    another width raised numpy's raw matmul ValueError in the ground truth)."""
    for what in ("base", "queries"):
        arr = getattr(data, what)
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InvalidInput(f"dataset {what}: expected a non-empty 2-D array, found "
                               f"{getattr(arr, 'shape', type(arr).__name__)}")
    if data.queries.shape[1] != data.base.shape[1]:
        raise DimensionMismatch(f"dataset queries: expected width {data.base.shape[1]} (the base's), "
                                f"found {data.queries.shape[1]}")


def set_blas_threads(n: int) -> dict[str, int]:
    """Set every BLAS loaded in the process (numpy's and faiss's OpenBLAS alike) to `n` threads.

    Both sides call BLAS (query rotations, training), so "same threads" covers it too.
    threadpoolctl finds the libraries; returns {library file: threads read back}.
    """
    threadpool_limits(n, user_api="blas")  # not a context: the limit stays for the run
    return {Path(i["filepath"]).name: int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}


@contextlib.contextmanager
def caller_threads() -> Iterator[None]:
    """Give the caller back the thread counts it had: Numba's, faiss's OpenMP (if faiss is
    loaded) and every loaded BLAS's. `run_bench` and `recommend` set them for their run
    (`set_threads`) and left them changed, after an error too."""
    import numba
    from threadpoolctl import ThreadpoolController

    from ..errors import MissingDependency
    from ..faiss_interop import import_faiss
    from ..threads import blas_setter

    try:  # loaded now, with its OpenMP BLAS, so that their counts are recorded before a run changes them
        faiss = import_faiss()
    except MissingDependency:
        faiss = None
    numba_n = numba.get_num_threads()
    faiss_n = faiss.omp_get_max_threads() if faiss is not None else None
    blas = [(blas_setter(lib), lib.num_threads) for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
    try:
        yield
    finally:
        numba.set_num_threads(numba_n)
        if faiss_n is not None:
            faiss.omp_set_num_threads(faiss_n)
        for set_blas, n in blas:
            set_blas(n)


def set_threads(threads: int | None, with_faiss: bool) -> dict[str, Any]:
    """Set the thread count of Numba, faiss's OpenMP and OpenBLAS; None means all cores.

    Returns
    -------
    dict
        ``{"threads": n, "numba": ..., "faiss_omp": ..., "openblas": {...}}`` as read back.
    """
    import numba

    available = int(numba.config.NUMBA_NUM_THREADS)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))):
        raise InvalidInput(f"threads: expected None or an integer, found {threads!r}")  # 1.5 was run as 1
    n = available if threads is None else int(threads)
    if not 1 <= n <= available:
        raise InvalidInput(f"--threads must be in 1..{available} (Numba's thread pool), found {threads}")
    numba.set_num_threads(n)
    info: dict[str, Any] = {"threads": n, "numba": numba.get_num_threads()}
    if with_faiss:
        info["faiss_omp"] = set_faiss_threads(n)
    info["openblas"] = set_blas_threads(n)
    return info


# --------------------------------------------------------------------------- stores


def _train_rows(n: int, train_size: int, seed: int) -> np.ndarray | None:
    """Row numbers both sides train on: all rows, or `train_size` drawn with `seed` (sorted)."""
    if n <= train_size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))


def slug(spec: str) -> str:
    """A file-name-safe form of a spec (``IVF64,RB1`` -> ``IVF64_RB1``)."""
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


def build_store(path: str | Path, spec: str, base: np.ndarray, metric: str = "cosine", *, seed: int = 0,
                dense: str = "f32") -> BuiltStore:
    """Build a real store of `base` (ids 0..n-1) with codec `spec` and a dense tier of
    `dense` ("f32" or "f16") values, replacing whatever is at `path`.

    The codec trains on its `train_size` rows drawn with `seed` (all rows when fewer); build
    time covers training, encoding, writing, checksumming and fsyncing every file.
    """
    from ..store import Store

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    dim = base.shape[1]
    sel = _train_rows(len(base), Codec(spec, dim, metric, seed=seed).train_size, seed)
    sample = base if sel is None else base[sel]
    t0 = time.perf_counter()
    with Store.create(path, dim=dim, metric=metric, codec=spec, dense=dense, seed=seed,
                      train_size=len(sample)) as store:
        store.train(sample)
        train_s = time.perf_counter() - t0
        store.add(base, ids=np.arange(len(base), dtype=np.int64))
        spec, size = store.codec.spec, store.codec.code_size
    return BuiltStore(path, spec, size, train_s, time.perf_counter() - t0, sample)


@contextlib.contextmanager
def _work_dir(path: str | Path | None) -> Iterator[Path]:
    """Where the benchmark's stores are built: `path` (kept) or a temporary folder (removed)."""
    if path is not None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="vecz-bench-") as tmp:
        yield Path(tmp)


def built_stores(specs: Sequence[str], base: np.ndarray, metric: str, *, seed: int, work: str | Path | None,
                 keep_stores: bool, desc: str, progress: bool) -> Iterator[tuple[Any, BuiltStore, Any, float]]:
    """For each spec, build its store and yield ``(bar, built, store, ram_bytes_per_vector)``
    with the store open read-only; the store is closed, then removed unless `keep_stores`.

    `bar` is the tqdm bar over the specs (disabled unless `progress`), for status text.
    """
    from tqdm import tqdm

    from ..store import Store

    bar = tqdm(specs, desc=desc, unit="spec", disable=not progress, file=sys.stderr, leave=False)
    try:
        with _work_dir(work) as wd:
            for spec in bar:
                bar.set_postfix_str(f"{spec}: build")
                built = build_store(wd / slug(spec), spec, base, metric, seed=seed)
                with Store.open(built.path) as store:
                    # after a search: what searches make the store hold counts too (the scan
                    # layouts' cosine norms, PQ8's derived tables: PQ48x8 held 251 B/vector
                    # where the column said 151 when read at open)
                    if len(base):
                        warm = np.random.default_rng(0).standard_normal((16, store.dim)).astype(np.float32)
                        store.search(warm, 1, rerank=0)
                    ram = sum(store.memory_bytes().values())
                    yield bar, built, store, round(ram / max(1, len(base)), 2)
                if not keep_stores:
                    shutil.rmtree(built.path, ignore_errors=True)
    finally:
        bar.close()


def store_nprobe(nlist: int, nprobe: int | None) -> int | None:
    """nprobe a search of a store with `nlist` lists uses: None for flat codecs, the given
    value capped at nlist, or the store's default nlist // 8."""
    if nlist <= 1:
        return None
    return min(nlist, nprobe) if nprobe is not None else max(1, nlist // 8)


def measure_store(store: Any, queries: np.ndarray, gt: np.ndarray, *, k: int, rerank: int | str,
                  nprobe: int | None, ats: Sequence[int], latency: bool = True,
                  confidence: float | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Search an open store with every query (timed as a batch), then `LATENCY_QUERIES`
    one at a time. Returns the row's measured fields and the ids found (nq, k). With
    ``rerank="auto:R"`` also the rows read per query at the 99th percentile, and the miss
    rate: the share of true top-k ids that the fixed depth R found and auto did not (what
    its error bounds cost; the search at depth R is not timed)."""
    nq = len(queries)
    auto = isinstance(rerank, str)
    if auto:
        store.error_model()  # measured once per store, outside the timings

    def search(q: np.ndarray) -> Any:
        return store.search(q, k, nprobe=nprobe, rerank=rerank, confidence=confidence)

    res, qps = time_batch(search, queries)
    ids = res[1]
    row: dict[str, Any] = {}
    for a in sorted({1, 10, 100, *ats}):
        # unrounded: `budget.pick` compares it with the target (0.94996 must not reach 0.95);
        # the tables round it for display
        row[f"recall@{a}"] = recall_at(ids, gt, a) if a in ats else None
    row["qps"] = round(qps, 1)
    if latency:
        p50, p99 = time_single(search, queries)
        row["p50_ms"], row["p99_ms"] = round(p50, 4), round(p99, 4)
    else:
        row["p50_ms"] = row["p99_ms"] = None
    row["rows_read_per_query"] = round(res.stats.rows_read / nq, 2)
    row["bytes_read_per_query"] = round(res.stats.bytes_read / nq, 1)
    row["candidates_per_query"] = round(res.stats.candidates / nq, 1)
    if auto:
        row["rows_read_p99"] = round(res.stats.rows_read_p99, 1)
        row["confidence"] = confidence if confidence is not None else DEFAULT_CONFIDENCE
        fixed = store.search(queries, k, nprobe=nprobe, rerank=parse_auto(rerank, k))[1]
        row["miss_rate"] = round(miss_rate(ids, fixed, gt, k), 5)
    return row, ids


def store_row(built: BuiltStore, ram_per_vector: float, r: int, nprobe: int | None, measured: dict[str, Any],
              **extra: Any) -> dict[str, Any]:
    """One result row: what the store is (spec, sizes, R, nprobe, `extra`), then `measured`,
    then what building it cost."""
    row: dict[str, Any] = {
        "spec": built.spec,
        "code_size": built.code_size,
        "bytes_per_vector": built.code_size + ID_BYTES,
        "ram_bytes_per_vector": ram_per_vector,
        "rerank": r,
        "nprobe": nprobe,
        **extra,
    }
    row.update(measured)
    row.update(build_s=round(built.build_s, 3), train_s=round(built.train_s, 3))
    return row


@caller_threads()
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
    gt_cache: bool | str | Path = True,
) -> BenchResult:
    """Build a real store per spec on `data` and measure it; see the module docstring.

    Parameters
    ----------
    data : Dataset
        When `data.gt` is None the exact top-100 is computed (`data.ground_truth`).
    specs : sequence of str
        Codec specs, checked against the width before any training.
    rerank : sequence of int
        Depths R: 0 scores from codes only; R >= k re-scores the best R exactly, reading
        those rows from the store's dense file.
    nprobe : int, optional
        Lists visited per query by IVF specs (vecz and faiss alike); default nlist // 8.
    threads : int, optional
        Numba, faiss and BLAS threads for the run (default: all cores); the caller's counts
        are given back when it returns or raises.
    progress : bool
        Show a tqdm bar over specs (on stderr).
    work, keep_stores :
        Folder the stores are built in (default: a temporary one); each store is removed
        once measured unless `keep_stores`.
    gt_cache : bool or path
        Where computed ground truth is cached: True for the user cache directory, a
        folder, or False for no cache (`data.ground_truth`).
    """
    check_common(metric, k, nprobe)
    check_dataset(data)
    dim = data.base.shape[1]
    specs = list(specs)
    for spec in specs:
        code_size(spec, dim, metric)
    _check_depths(rerank, k)
    thread_info = set_threads(threads, with_faiss)

    xb = data.base
    xq = data.queries
    gt = ground_truth(data, metric, cache=gt_cache)
    ats = recall_ats(gt, k)
    xb_p = prepare(xb, metric) if with_faiss else None  # faiss's float32 vectors, as the metric sees them

    rows: list[dict[str, Any]] = []
    found: dict[tuple[str, int], np.ndarray] = {}
    for bar, built, store, ram in built_stores(specs, xb, metric, seed=seed, work=work, keep_stores=keep_stores,
                                               desc="vecz bench", progress=progress):
        npr = store_nprobe(store.codec.nlist, nprobe)
        fx = None
        if with_faiss:
            bar.set_postfix_str(f"{built.spec}: faiss build")
            fx = FaissSide(built.spec, dim, metric, xb_p, built.sample, k, npr)
        for r in rerank:
            bar.set_postfix_str(f"{built.spec}: search R={r}")
            measured, ids = measure_store(store, xq, gt, k=k, rerank=r, nprobe=npr, ats=ats)
            found[(built.spec, r)] = ids
            row = store_row(built, ram, r, npr, measured)
            if fx is not None and isinstance(r, int):
                row.update(fx.measure(r, xq, gt, ats, row["qps"]))
            rows.append(row)
        del fx

    qkey = f"recall@{quality_at(ats)}"
    for row, mark in zip(rows, pareto_front(rows, qkey)):
        row["pareto"] = mark
    settings = {
        "dataset": data.name,
        "n": int(xb.shape[0]),
        "nq": int(xq.shape[0]),
        "dim": int(dim),
        "metric": metric,
        "k": k,
        "recall_key": qkey,  # what the front and the plots rank by (a replot reads it)
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
