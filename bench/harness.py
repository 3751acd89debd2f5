"""Shared pieces of the scan benchmarks: settings, data loading, thread limits, the faiss
baselines and the timing helper (recall@10 is vecz.engine.bench.metrics.recall_at). Fixtures
live in conftest.py.

Both sides of every pair see the same arrays: float32 base (117,647 x 384) and the first
`VECZ_BENCH_NQ` queries (default 1000). Each side's recall is against the exact top-10 of
the metric it searches with (`Data.gt`): gt_ids.npy for inner product (faiss's side), the
exact top-10 computed and cached by vecz.engine.bench.data for cosine (vecz's side) and l2
(the rows' norms are 1 only to float16 precision, so the three rank near ties differently).
Both train on the same rows, the first `VECZ_BENCH_NTRAIN` base vectors (default 65536; the
base is a seeded random permutation, so a prefix is a uniform sample); each side then
applies its own policy to that sample (both cap k-means at 256 points per centroid, as
faiss does).

Environment: VECZ_BENCH_NQ (queries), VECZ_BENCH_NTRAIN (training rows), VECZ_BENCH_ROUNDS
(timed rounds per benchmark, default 3).
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import faiss
import numpy as np

from vecz.engine.bench.data import dataset_dir, dataset_truth
from vecz.engine.bench.faiss_side import faiss_code_size as _engine_code_size
from vecz.engine.bench.metrics import recall_at
from vecz.engine.bench.runner import set_blas_threads
from vecz.engine.codecs import CodeIndex

__all__ = [
    "DATA_DIR",
    "DIM",
    "K",
    "NQ",
    "NTRAIN",
    "ROUNDS",
    "Data",
    "missing_data",
    "load_data",
    "blas_single_thread",
    "resident_bytes",
    "FAISS_BUILDERS",
    "IVF_NPROBE",
    "faiss_code_size",
    "rabitq_inner",
    "run_search",
]

DATA_DIR = dataset_dir("wordnet-minilm")  # $VECZ_DATA, else ../shared/data beside the checkout
DIM = 384
K = 10


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    value = int(text)
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, found {value}")
    return value


NQ = _env_int("VECZ_BENCH_NQ", 1000)
NTRAIN = _env_int("VECZ_BENCH_NTRAIN", 65536)
ROUNDS = _env_int("VECZ_BENCH_ROUNDS", 3)


# --------------------------------------------------------------------------- data


class Data(NamedTuple):
    base: np.ndarray  # float32 (n, DIM), unit vectors to float16 precision
    queries: np.ndarray  # float32 (nq, DIM)
    train: np.ndarray  # float32 (ntrain, DIM): the rows both sides train on
    truth: dict[str, np.ndarray]  # metric -> int64 (nq, K), filled by `gt`

    def gt(self, metric: str) -> np.ndarray:
        """int64 (nq, K): the exact top-K of the queries under `metric` ("ip", "cosine" or "l2"),
        `vecz.engine.bench.data.dataset_truth` (gt_ids.npy for ip, else computed once and
        cached), read on first use."""
        if metric not in self.truth:
            self.truth[metric] = dataset_truth(DATA_DIR, metric, nq=len(self.queries)).gt[:, :K]  # type: ignore[index]
        return self.truth[metric]


DATA_FILES = ("base.npy", "queries.npy")


def missing_data() -> list[str]:
    return [name for name in DATA_FILES if not (DATA_DIR / name).is_file()]


def load_data(nq: int = NQ, ntrain: int = NTRAIN) -> Data:
    n_all = np.load(DATA_DIR / "queries.npy", mmap_mode="r").shape[0]
    if nq > n_all:
        raise ValueError(f"VECZ_BENCH_NQ={nq} exceeds the {n_all} queries in {DATA_DIR}")
    ds = dataset_truth(DATA_DIR, "cosine", nq=nq)  # vecz's metric: its truth read now, the others on first use
    if ds.base.shape[1] != DIM:
        raise ValueError(f"{DATA_DIR / 'base.npy'}: expected shape (n, {DIM}), found {ds.base.shape}")
    return Data(
        base=ds.base,
        queries=np.ascontiguousarray(ds.queries),
        train=np.ascontiguousarray(ds.base[: min(ntrain, ds.base.shape[0])]),
        truth={"cosine": ds.gt[:, :K]},  # type: ignore[index]
    )


# --------------------------------------------------------------------------- threads


def blas_single_thread() -> dict[str, int]:
    """Limit every BLAS loaded in the process (numpy's, faiss's) to one thread; returns
    {library file: threads read back} (vecz.engine.bench.runner.set_blas_threads, via threadpoolctl)."""
    return set_blas_threads(1)


# --------------------------------------------------------------------------- sizes


def resident_bytes(index: CodeIndex) -> int:
    """Bytes of the per-row arrays a vecz CodeIndex holds (codes, scan layouts, factors, ids)."""
    return sum(v.nbytes for name, v in vars(index).items() if isinstance(v, np.ndarray) and name != "offsets")


def faiss_code_size(index: faiss.Index) -> int:
    """Bytes per vector of a faiss index's codes, per-vector factors included, without the
    list number an IVF index's standalone codes carry and its lists do not store
    (`vecz.engine.bench.faiss_side.faiss_code_size`: it reported IVF256,PQ48x8 as 49)."""
    if isinstance(index, faiss.IndexBinary):
        return int(index.code_size)
    return _engine_code_size(index)


# --------------------------------------------------------------------------- faiss


IP = faiss.METRIC_INNER_PRODUCT


def _rabitq(bits: int, fast_scan: bool = False) -> faiss.Index:
    # RaBitQ's estimator assumes randomly rotated data; faiss leaves the rotation to a
    # pre-transform (RR<d>, fixed seed), timed at search like vecz's own query rotation.
    # The IVF pairs take none: RR384 before IVF256,RaBitQfs gave the same recall on minilm
    # (0.666 against 0.668, nprobe 32) at the same speed.
    return faiss.index_factory(DIM, f"RR{DIM},RaBitQ{'fs' if fast_scan else ''}{bits}", IP)


# nprobe of the IVF pairs (bench/test_scans.py), both sides
IVF_NPROBE = 32


def _ivf(index: faiss.Index, nprobe: int) -> faiss.Index:
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index


FAISS_BUILDERS: dict[str, Callable[[], faiss.Index]] = {
    "PQ48x8": lambda: faiss.IndexPQ(DIM, 48, 8, IP),
    "PQ96x4fs": lambda: faiss.IndexPQFastScan(DIM, 96, 4, IP),
    "IVF256,PQ48x8": lambda: _ivf(faiss.index_factory(DIM, "IVF256,PQ48x8", IP), IVF_NPROBE),
    "IVF256,PQ48x8 l2": lambda: _ivf(faiss.index_factory(DIM, "IVF256,PQ48x8", faiss.METRIC_L2), IVF_NPROBE),
    "IVF256,PQ96x4fs": lambda: _ivf(faiss.index_factory(DIM, "IVF256,PQ96x4fs", IP), IVF_NPROBE),
    "IVF256,PQ96x4fs l2": lambda: _ivf(faiss.index_factory(DIM, "IVF256,PQ96x4fs", faiss.METRIC_L2), IVF_NPROBE),
    "SQ8": lambda: faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, IP),
    "RaBitQ1": lambda: _rabitq(1),
    "RaBitQ2": lambda: _rabitq(2),
    "RaBitQ4": lambda: _rabitq(4),
    # faiss's RaBitQ fast scan (4-bit lookups of the sign bits, as vecz's RB scan)
    "RaBitQfs1": lambda: _rabitq(1, fast_scan=True),
    "RaBitQfs2": lambda: _rabitq(2, fast_scan=True),
    "RaBitQfs4": lambda: _rabitq(4, fast_scan=True),
    "IVF256,RaBitQfs": lambda: _ivf(faiss.index_factory(DIM, "IVF256,RaBitQfs", IP), IVF_NPROBE),
    "IVF256,RaBitQfs l2": lambda: _ivf(faiss.index_factory(DIM, "IVF256,RaBitQfs", faiss.METRIC_L2), IVF_NPROBE),
}


def rabitq_inner(index: faiss.Index) -> Any:
    """The IndexRaBitQ inside an `RR<d>,RaBitQ<b>` pre-transform (where `qb` is set)."""
    return faiss.downcast_index(faiss.downcast_index(index).index)


# --------------------------------------------------------------------------- timing


def run_search(
    benchmark: Any,
    search: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    gt: np.ndarray,
    *,
    group: str,
    side: str,
    variant: str,
    bytes_per_vector: int,
    **info: Any,
) -> np.ndarray:
    """Time `search(queries) -> ids (nq, K)` over the whole query batch, then record quality.

    One timed round is one batch call, top-k selection included. A call on two queries
    first compiles or loads the Numba kernels, so no round pays for compilation.
    `extra_info` holds side, variant, recall@K, bytes_per_vector and qps (nq / median round;
    None under --benchmark-disable).
    """
    if side not in ("vecz", "faiss"):
        raise ValueError(f"side must be 'vecz' or 'faiss', found {side!r}")
    benchmark.group = group
    search(queries[:2])
    ids = np.asarray(benchmark.pedantic(search, args=(queries,), rounds=ROUNDS, iterations=1))
    if ids.shape != (len(queries), K):
        raise AssertionError(f"{variant}: expected ids of shape {(len(queries), K)}, found {ids.shape}")
    recall = recall_at(ids, gt, K)
    stats = benchmark.stats  # None when benchmarks are disabled
    qps = len(queries) / stats.stats.median if stats is not None else None
    benchmark.extra_info.update(
        side=side,
        variant=variant,
        recall=round(recall, 4),
        bytes_per_vector=int(bytes_per_vector),
        qps=None if qps is None else round(qps, 2),
        nq=len(queries),
        k=K,
        **info,
    )
    return ids
