"""Searching codes: a query plan made once (`QueryPlan`, from `Codec.plan`), scanned over
any number of scan layouts (`CodeIndex.scan`), with deletes applied at scan time
(`CodeIndex.mark_dead`).

- `QueryPlan`: everything per query that no layout changes: the probed IVF lists int64
  (nq, P) and their additive bias float32 (nq, P), and the quantizer's tables (lookup
  tables and their uint8 fast-scan forms, one per probe for l2 on residuals, or for 8-bit
  PQ one a query with the codec's per-list terms beside them; SQ weights; binarized
  queries for RB's symmetric scoring). Arrays only, no closures: one plan may be
  scanned from several threads at once.
- `CodeIndex`: codes laid out for scanning, ordered by IVF list (each list contiguous) in
  the quantizer's layout (`vecz.engine.quantizers`). ``scan(plan, k)`` returns this
  layout's top-k in the metric's own convention (scores descending for ip/cosine, squared
  distances ascending for l2; empty slots id -1 with -inf / +inf) and the rows it scored;
  results of several layouts merge by score (ties by smaller id), and equal one layout of
  all their codes. ``search`` is `Codec.plan` + ``scan`` + `SearchStats`.

Thread policy (`vecz.engine.threads.query_threads`): `Codec.plan`, `CodeIndex.scan` and
`CodeIndex.search` each run 2 or more queries with BLAS on one thread (a lone query's
products use no BLAS) and fewer than `CodeIndex.PARALLEL_MIN_QUERIES` with
Numba on the calling thread, and give the caller back its own settings. A caller that
plans once and scans many layouts may hold one
``query_threads(nq, CodeIndex.PARALLEL_MIN_QUERIES)`` scope around all of it: the outermost
scope on a thread decides, and the inner ones then cost next to nothing (measured: 10-20 us
per scan of a small layout otherwise).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numpy as np

from ..kernels import fastscan, ivf, topk
from .errors import InvalidInput
from .threads import query_threads

# `Codec` (vecz.engine.codecs) imports this module, so it is not imported back here: the
# codec of a plan or an index is annotated `Any` and used through its methods.

__all__ = ["QueryPlan", "CodeIndex", "ScanResult", "SearchResult", "SearchStats"]


class SearchStats(NamedTuple):
    """What a search did: codes scored, IVF lists probed, and (store searches with
    ``rerank``) rows and bytes read from the disk tier to re-score the shortlist."""

    candidates: int
    lists_probed: int
    rows_read: int = 0
    bytes_read: int = 0
    # ``rerank="auto"``: rows read by each query (int64 (nq,)), and the queries whose
    # shortlist ended while a row beyond it could still have entered the top-k (raise the cap)
    rows_per_query: np.ndarray | None = None
    capped: int = 0
    # ``rerank="auto"``: rows read, at the shortlist ranks the error model measured, whose
    # exact score beat their upper bound; a calibrated model lets about (1 - confidence) of
    # those rows do so (far more warns: `errors.QueriesUnlikeModel`)
    bound_exceeded: int = 0

    @property
    def rows_read_mean(self) -> float:
        """Mean rows read per query (auto re-rank; else `rows_read` / queries is unknown: nan)."""
        q = self.rows_per_query
        return float(q.mean()) if q is not None and q.size else float("nan")

    @property
    def rows_read_p99(self) -> float:
        """99th percentile of rows read per query (auto re-rank), else nan."""
        q = self.rows_per_query
        return float(np.percentile(q, 99)) if q is not None and q.size else float("nan")


class SearchResult(tuple):
    """`scores, ids = result` like faiss's D, I (a 2-tuple); `result.stats` tells what the
    search did. scores float32 (nq, k), ids int64 (nq, k)."""

    stats: SearchStats

    def __new__(cls, scores: np.ndarray, ids: np.ndarray, stats: SearchStats = SearchStats(0, 0)):
        obj = super().__new__(cls, (scores, ids))
        obj.stats = stats
        return obj

    @property
    def scores(self) -> np.ndarray:
        return self[0]

    @property
    def ids(self) -> np.ndarray:
        return self[1]

    def __repr__(self) -> str:
        return f"SearchResult(scores={self[0]!r}, ids={self[1]!r}, stats={self.stats!r})"


class ScanResult(NamedTuple):
    """One layout's top-k: scores float32 (nq, k) in the metric's convention, ids int64
    (nq, k) (-1 in empty slots), and the rows scored (dead rows included)."""

    scores: np.ndarray
    ids: np.ndarray
    candidates: int


_UNSET = object()


class QueryPlan:
    """The per-query part of a search, made once by `Codec.plan` and scanned by any
    `CodeIndex` of the same codec (`CodeIndex.scan`).

    Attributes
    ----------
    codec : Codec
        The codec whose tables these are; `CodeIndex.scan` refuses a layout of another codec.
    probes : numpy.ndarray
        int64 (nq, P): IVF lists visited by each query, best first (one column of zeros
        without IVF).
    bias : numpy.ndarray
        float32 (nq, P): additive score per probed list (<q, c> for ip/cosine on residuals,
        ``-|q - c|^2`` for l2 on residuals when the tables come from per-list terms; SQ adds
        <q, vmin>).
    tables : dict
        The quantizer's tables by name (`vecz.engine.quantizers`), arrays whose first axis
        is the query.
    shared : dict
        Arrays the scan needs that belong to no query (8-bit PQ under l2: the codec's
        per-list terms, made once per codec state): held by the plan, so a plan scans the
        same after its codec is trained again; not counted in ``nbytes``.
    sdc : bool
        RB symmetric scoring.
    centre : numpy.ndarray or None
        float64 (nq,): a centred cosine plan's lambda per query (``Codec.scans_centred``):
        its tables are those of l2 on residuals for the query x / lambda, and the scan
        maps the kernels' scores back to cosines (``centred_to_cosine``). None otherwise.

    A plan is read-only once made (only `query_groups` fills a cache), so several threads
    may scan it at once. Its tables take ``nbytes``; `Codec.queries_per_plan` says how many
    queries keep them within ``CodeIndex.TABLE_BUDGET`` (`CodeIndex.search` plans by chunks
    of that size).
    """

    __slots__ = ("codec", "probes", "bias", "tables", "shared", "sdc", "centre", "_groups")

    def __init__(self, codec: Any, probes: np.ndarray, bias: np.ndarray, tables: dict[str, np.ndarray], *,
                 sdc: bool = False, shared: dict[str, np.ndarray] | None = None,
                 centre: np.ndarray | None = None) -> None:
        self.codec = codec
        self.centre = centre
        self.probes = probes
        self.bias = bias
        self.tables = tables
        self.shared = shared or {}
        self.sdc = bool(sdc)
        self._groups: Any = _UNSET

    @property
    def nq(self) -> int:
        return int(self.probes.shape[0])

    @property
    def nprobe(self) -> int:
        """Lists probed per query (nprobe capped at nlist; 1 without IVF)."""
        return int(self.probes.shape[1])

    @property
    def lists_probed(self) -> int:
        return int(self.probes.size)

    @property
    def nbytes(self) -> int:
        return int(self.probes.nbytes + self.bias.nbytes + sum(t.nbytes for t in self.tables.values()))

    def query_groups(self) -> tuple[np.ndarray | None, np.ndarray] | None:
        """(order, group_offsets) for the multi-query fast-scan drivers: queries with the
        same probe rows, at most LANES per group (`fastscan.fs_query_groups`); order None
        when no permutation is needed (no IVF). None when groups would average under two
        queries (IVF with few shared probe rows): then one query at a time, which is a
        little faster for singletons. Depends on the probes only, so it is computed once."""
        if self._groups is _UNSET:
            order, group_offsets = fastscan.fs_query_groups(self.probes, fastscan.LANES)
            if 2 * (group_offsets.shape[0] - 1) > self.nq:
                self._groups = None
            else:
                self._groups = (None if np.array_equal(order, np.arange(self.nq)) else order, group_offsets)
        return self._groups

    def __repr__(self) -> str:
        return (f"QueryPlan(codec={self.codec.spec!r}, nq={self.nq}, nprobe={self.nprobe}, sdc={self.sdc}, "
                f"tables={sorted(self.tables)})")


def _check_k(k: Any) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"k must be an integer >= 1, found {k!r}")


def centred_to_cosine(scores: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A centred cosine scan's kernel scores -|x / lambda - y|^2 (float32 (nq, k), larger is
    better) as the cosines <x, y> of unit x, y: (lambda / 2) s + (1 / lambda + lambda) / 2,
    in float64, as float32 (an increasing map for lambda > 0; -inf stays -inf)."""
    lam = centre[:, None]
    return (0.5 * lam * scores.astype(np.float64) + 0.5 * (1.0 / lam + lam)).astype(np.float32)


def cosine_to_centred(floors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """`centred_to_cosine`'s inverse for the scan's floors (float32 (nq,), -inf for none),
    rounded down: a kernel score whose cosine rounds to the floor or above is never shut
    out (several kernel scores can round to one cosine: the map shrinks them by lambda / 2
    and a near row's -|x / lambda - y|^2 is near 0, where float32 is finer than at the
    cosines' 1). So the floor is inverted from one float32 step below it, and rounded
    down; the rows it lets through besides are dropped by the callers (`CodeIndex.scan`
    filters by the threshold, a store's merge keeps the best)."""
    lower = np.nextafter(floors.astype(np.float32), np.float32(-np.inf)).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        t64 = (lower - 0.5 * (1.0 / centre + centre)) * (2.0 / centre)
    t = t64.astype(np.float32)
    return np.ascontiguousarray(np.where(t > t64, np.nextafter(t, np.float32(-np.inf)), t))


def plan_rows(codec: Any, n_probe: int, budget: int, sdc: bool = False) -> int:
    """Queries per plan whose float tables stay within `budget` bytes (at least 1): per-probe
    tables (l2 on residuals) count once per probed list (`Quantizer.tables_per_query`); a
    centred cosine plan has one table a query."""
    q = codec.quantizer
    n_tables = q.tables_per_query(codec, n_probe, sdc) if codec.metric == "l2" and q.residual else 1
    return max(1, budget // max(1, q.table_bytes(codec.width) * n_tables))


class _Positions:
    """Where each id sits in one id array (a layout's `ids` or `block_ids`), built once:
    a dense inverse (id -> position) when the ids are unique and at most a few times the
    row count (the store's segment-local row numbers 0..n-1), else the ids sorted."""

    __slots__ = ("dense", "keys", "pos")

    def __init__(self, ids: np.ndarray) -> None:
        pos = np.flatnonzero(ids >= 0)
        vals = ids[pos]
        self.dense = self.keys = self.pos = None
        top = int(vals.max()) if vals.size else -1
        if top < 2 * vals.size + 1024 and (not vals.size or np.bincount(vals, minlength=top + 1).max() <= 1):
            # int32 positions: 4 bytes per row for a layout of fewer than 2**31 rows
            self.dense = np.full(top + 1, -1, dtype=np.int32 if ids.shape[0] < 2**31 else np.int64)
            self.dense[vals] = pos
        else:
            order = np.argsort(vals, kind="stable")
            self.keys, self.pos = vals[order], pos[order]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.dense, self.keys, self.pos) if a is not None)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Positions of the given ids (absent ones skipped; every position of a repeated id)."""
        if self.dense is not None:
            ids = ids[(ids >= 0) & (ids < self.dense.shape[0])]
            found = self.dense[ids]
            return found[found >= 0]
        lo = np.searchsorted(self.keys, ids, side="left")
        counts = np.searchsorted(self.keys, ids, side="right") - lo
        total = int(counts.sum())
        first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        return self.pos[first + np.arange(total)]


class CodeIndex:
    """Codes laid out for scanning: ordered by IVF list, each list contiguous, in the
    quantizer's layout; built by `Codec.index`.

    ``scan(plan, k)`` scans this layout with a `QueryPlan`; ``search(queries, k)`` plans and
    scans (a `SearchResult`); ``mark_dead(ids)`` hides rows from every later scan.
    ``len(index)`` is the number of rows it was built with, dead ones included (`n_dead`).

    Thread-safety: `scan` and `search` may run from several threads at once; `mark_dead`
    too (a scan running meanwhile may or may not see the rows it marks).
    """

    # Per-probe tables (l2 on residuals) are built for a chunk of queries at a time so
    # that they stay within this many bytes.
    TABLE_BUDGET = 64 << 20
    # Fewer queries than this run on the calling thread only (see `query_threads`).
    PARALLEL_MIN_QUERIES = 8
    # 4-bit fast scan: queries that probe the same lists (all of them without IVF) are
    # scanned together, each code block accumulated for a group of queries while it is in
    # L1 (fastscan's *_multi drivers), and IVF batches list-major (below). False scans one
    # query at a time (the same results; tests compare the two).
    _MULTI_QUERY = True
    # IVF (queries probe different lists): from this many queries in a batch, 4-bit fast
    # scans run list-major (fastscan's *_lists drivers: each list scanned once for up to
    # LANES of the queries probing it); below, one query at a time. Needs _MULTI_QUERY.
    # Crossovers measured single-threaded on wordnet-minilm (IVF256/1024, nprobe 32-128):
    # RB gains from 8-16 queries (its rows are also filtered in vector code), PQ x4 only
    # from a few hundred and at k = 10 more than at k = 50 (1.15-1.28x vs 0.96-1.06x at 1000).
    LIST_MIN_QUERIES = 16
    LIST_MIN_QUERIES_PQ = 256

    def __init__(self, codec: Any, codes: np.ndarray, lists: np.ndarray, ids: np.ndarray,
                 *, keep_rows: bool = True) -> None:
        self.codec = codec
        self.state = codec._require()
        order, self.offsets = ivf.ivf_layout(lists, codec.nlist)
        self._sizes = np.diff(self.offsets)  # rows per list: the candidates of a probe
        self.n = codes.shape[0]
        ids = ids[order]
        # The fast scans keep each query's top k in uint64 keys holding ids up to RES_MAX_ID
        # (kernels/topk.py). Larger ids are replaced by their ranks among the distinct ids,
        # which order ties the same way, and results are mapped back (`_user_ids`).
        self._user_ids: np.ndarray | None = None
        if ids.size and int(ids.max()) > topk.RES_MAX_ID:
            self._user_ids = np.unique(ids)
            ids = np.searchsorted(self._user_ids, ids)
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)  # the ids the kernels see
        # RB's row factors and bits (kept with keep_rows, for symmetric scoring) and the
        # popcount words derived from the bits on the first sdc=True scan
        self.factors: np.ndarray | None = None
        self.bits: np.ndarray | None = None
        self.words: np.ndarray | None = None
        # the quantizer lays the codes out from input order (no list-ordered copy first)
        codes = np.asarray(codes, dtype=np.uint8)
        layout = codec.quantizer.build_layout(codes, order, self.ids, self.offsets, codec.width, keep_rows,
                                              codec._own_list_terms(codes, order, self.offsets))
        for name, array in layout.items():
            setattr(self, name, array)
        self._n_dead = 0
        self._positions: list[tuple[str, _Positions]] | None = None
        self._dead_lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    @property
    def n_dead(self) -> int:
        """Rows marked dead by `mark_dead` (each counted once)."""
        return self._n_dead

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this index holds (codes, ids, layouts, and the position map of
        `mark_dead` once built; not the codec state)."""
        held = sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))
        return held + sum(p.nbytes for _, p in self._positions or ())

    # ---- deletes

    def mark_dead(self, ids: Any) -> int:
        """Never return the rows whose id (as given to `Codec.index`) is in `ids` again.

        Applied in place: the rows' ids in the scan layout become -1, which every scan
        kernel skips, as it skips the padding rows of fast-scan blocks. The first call builds
        a map from id to layout position, O(n) (4 bytes per row when the ids are unique and
        dense, such as row numbers 0..n-1; else the ids sorted); each call then costs
        O(len(ids)) (times log n with the sorted map). Ids this index does not hold are
        ignored; marking a row twice is harmless. Scores of the
        other rows do not change, so a search equals the search of an index built without
        the dead rows (``SearchStats.candidates`` still counts the dead rows scanned).

        Returns the number of rows newly marked dead.
        """
        arr = np.asarray(ids)
        if arr.size and arr.dtype.kind not in "iu":
            raise InvalidInput(f"ids to mark dead must be integers, found dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False).ravel()
        if self._user_ids is not None:  # the ranks the layout holds instead (__init__)
            rank = np.minimum(np.searchsorted(self._user_ids, arr), self._user_ids.size - 1)
            arr = rank[self._user_ids[rank] == arr]
        with self._dead_lock:
            if self._positions is None:
                # every id array a scan reads: the blocks' ids (fast scan), the row ids
                names = [name for name in ("block_ids", "ids") if getattr(self, name, None) is not None
                         and getattr(self, name).size]
                self._positions = [(name, _Positions(getattr(self, name))) for name in names]
            newly = 0
            for j, (name, positions) in enumerate(self._positions):
                target = getattr(self, name)
                found = positions.lookup(arr)
                if j == 0:
                    newly = int(np.count_nonzero(target[np.unique(found)] >= 0))
                target[found] = -1
            self._n_dead += newly
        return newly

    # ---- search

    def search(self, queries: Any, k: int = 10, *, nprobe: int = 1, sdc: bool = False) -> SearchResult:
        """Top-k over the codes: `Codec.plan` + `scan`, planned by chunks of queries whose
        tables fit ``TABLE_BUDGET``.

        Parameters
        ----------
        queries : (nq, dim) float array
        k : int
            Results per query; slots beyond the candidates hold id -1.
        nprobe : int
            Lists visited per query (IVF only; capped at nlist).
        sdc : bool
            RB only: symmetric scoring (the query binarized too, popcount), else asymmetric.
        """
        codec = self.codec
        _check_k(k)
        codec._check_search(nprobe, sdc)
        x = codec._prepare(queries, "queries")
        nq = x.shape[0]
        with query_threads(nq, self.PARALLEL_MIN_QUERIES):
            probes, probe_ip = codec._probe(x, nprobe)
            stats = SearchStats(self._candidates(probes), int(probes.size))
            if nq == 0:
                empty = np.empty((0, k))
                return SearchResult(empty.astype(np.float32), empty.astype(np.int64), stats)
            chunk = min(nq, plan_rows(codec, probes.shape[1], self.TABLE_BUDGET, sdc))
            out_s = np.empty((nq, k), dtype=np.float32)
            out_i = np.empty((nq, k), dtype=np.int64)
            for start in range(0, nq, chunk):
                sl = slice(start, start + chunk)
                plan = codec._plan(x[sl], probes[sl], None if probe_ip is None else probe_ip[sl], sdc)
                out_s[sl], out_i[sl] = self._scan(plan, k, np.full(plan.nq, -np.inf, dtype=np.float32))
        return SearchResult(out_s, out_i, stats)

    def scan(self, plan: QueryPlan, k: int, threshold: Any = None) -> ScanResult:
        """Top-k of each query of `plan` over this layout only.

        Returns `ScanResult(scores, ids, candidates)`: scores float32 (nq, k) in the
        metric's convention (descending for ip/cosine, ascending squared distances for l2),
        ids int64 (nq, k), empty slots id -1 with the worst score (-inf, +inf for l2), and
        the number of rows scored (the probed lists' sizes). Dead rows are never returned.
        The driver (one query at a time, groups of queries sharing their probes, or
        list-major for IVF batches) is chosen here; all give the same results. Thread
        policy as `Codec.plan`, for the plan's nq.

        `threshold` (float (nq,), optional): return only the rows scoring at least
        threshold[i] (l2: at a distance of at most threshold[i]); the result is the scan
        without it minus the rows that miss it. A search over several segments passes the
        depth-th best score of the segments scanned before: rows below it cannot make its
        shortlist, and a top k that starts there admits almost none of them.
        """
        _check_k(k)
        if not isinstance(plan, QueryPlan):
            raise InvalidInput(f"expected a QueryPlan from Codec.plan, found {type(plan).__name__}")
        if plan.codec is not self.codec and plan.codec != self.codec:
            raise InvalidInput(f"the plan was made by codec {plan.codec!r}, this index holds codes of "
                               f"{self.codec!r} (or the same spec trained otherwise)")
        floors = self._floors(threshold, plan.nq)
        with query_threads(plan.nq, self.PARALLEL_MIN_QUERIES):
            scores, ids = self._scan(plan, k, floors)
        if threshold is not None:
            # a floor within FLT_MIN of 0 lets rows just below it through (kernels/topk.py
            # `below`); they come last in each row: make them padding
            l2 = self.codec.metric == "l2"
            miss = (-scores < floors[:, None]) if l2 else (scores < floors[:, None])
            if miss.any():
                scores, ids = scores.copy(), ids.copy()
                scores[miss] = np.inf if l2 else -np.inf
                ids[miss] = -1
        return ScanResult(scores, ids, self._candidates(plan.probes))

    def _floors(self, threshold: Any, nq: int) -> np.ndarray:
        """`scan`'s threshold as the kernels' floors: float32 (nq,), larger is better (l2
        negated), -inf without one."""
        if threshold is None:
            return np.full(nq, -np.inf, dtype=np.float32)
        t = np.asarray(threshold)
        if t.shape != (nq,) or t.dtype.kind not in "fiu":
            raise InvalidInput(f"threshold: expected a float array of shape ({nq},), found "
                               f"{t.dtype} {t.shape}")
        t = t.astype(np.float64)
        if np.isnan(t).any():
            raise InvalidInput(f"threshold: expected no NaN, found one for query {int(np.argmax(np.isnan(t)))}")
        # scores are float32: s >= t is s >= the least float32 >= t (l2: d <= the greatest <= t)
        l2 = self.codec.metric == "l2"
        t32 = t.astype(np.float32)
        off = (t32 > t) if l2 else (t32 < t)
        t32[off] = np.nextafter(t32[off], np.float32(-np.inf if l2 else np.inf))
        return np.ascontiguousarray(-t32 if l2 else t32)

    def _candidates(self, probes: np.ndarray) -> int:
        return int(self._sizes[probes].sum()) if probes.shape[0] else 0

    def _scan(self, plan: QueryPlan, k: int, floors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nq = plan.nq
        if nq == 0:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        codec = self.codec
        q = codec.quantizer
        list_min = q.list_min_queries(self, plan.sdc)
        multi = self._MULTI_QUERY and list_min is not None
        # IVF batches whose probe rows differ: list-major (it shares each list's blocks among
        # the queries probing it already); else groups of queries with the same probes
        list_major = multi and codec.ivf is not None and nq >= list_min
        groups = plan.query_groups() if multi and nq >= 2 and not list_major else None
        centre = plan.centre
        if centre is not None:
            floors = cosine_to_centred(floors, centre)
        scores, ids = q.scan(self, plan, k, is_l2=codec.metric == "l2" or centre is not None, width=codec.width,
                             groups=groups,
                             list_major=list_major, floors=floors)
        if self._user_ids is not None:
            ids = np.where(ids >= 0, self._user_ids[np.maximum(ids, 0)], -1)
        if codec.metric == "l2":
            scores = -scores  # kernels return negated distances; -(-inf) = +inf pads l2
        elif centre is not None:
            scores = centred_to_cosine(scores, centre)
        return scores, ids
