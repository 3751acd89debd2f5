"""Product quantization: training, encoding, decoding, lookup tables and scans.

Shapes and dtypes:

- vectors float32 (n, dim); `dim` need not divide by M: vectors are zero-padded to
  M * dsub with dsub = ceil(dim / M), and padded dims contribute nothing.
- codebooks float32 (M, ksub, dsub), ksub = 2**nbits (nbits 4 or 8).
- codes uint8 (n, M): one sub-code per byte ("unpacked"). 4-bit codes are packed two per
  byte for storage by `pq4_pack` and re-laid out in blocks for the fast scan by
  `pq4_fastscan_layout` (see kernels/fastscan.py).
- lookup tables float32 (M, ksub): `lut[m, j]` is the similarity contribution of sub-code
  j in sub-space m: the inner product for ip, the negated squared distance for l2, so a
  sum over m is larger-is-better (kernels/topk.py's convention).

The scan drivers take an inverted-list layout: codes ordered by list, `list_offsets`
(nlist + 1,), per query the probed lists `probes` (nq, P) (-1 = skip) with an additive
`probe_bias` (nq, P), and tables `luts` (nq, L, M, ksub) with L = 1 (shared by every
list) or L = P (one table per probed list, for l2 on residuals). A flat index is one list.
Rows whose id is < 0 (marked dead) are never returned. Reference: tests/reference/pq.py.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import numpy as np
from numba import prange

from ._jit import jit, jit_batch, jit_inline
from .dense import f16_to_f32
from .kmeans import BLAS_MIN_DIM, KMEANS_TOL, PARALLEL_MIN_WORK, kmeans_assign, kmeans_fit, nearest_column
from .topk import topk_finish, topk_init_floor, topk_push
from .transform import matmul_rows_batch, polar, random_rotation

__all__ = [
    "pq_norm_table",
    "pq_list_terms",
    "pq_inv_norm_bounds",
    "pq4_block_inv_norms",
    "pq_row_inv_norms",
    "pq_sub_norms",
    "pq_list_sub_norms",
    "INV_BUCKETS",
    "pq_lut_scan_cosine",
    "pq_lut_scan_cosine_batch",
    "pq_dsub",
    "pq_pad",
    "pq_place",
    "pq_train",
    "opq_train",
    "pq_encode",
    "pq_decode",
    "pq_code_errors",
    "pq_cell_errors",
    "pq_code_error_scales",
    "pq_lut",
    "pq_lut_books",
    "pq_book_norms",
    "pq4_pack",
    "pq4_unpack",
    "pq_lut_scan",
    "pq_lut_scan_batch",
    "pq_lut_scan_l2",
    "pq_lut_scan_l2_batch",
    "pq_lut_scan_scaled",
    "pq_lut_scan_scaled_batch",
]


# OPQ training (`opq_train`): iterations of rotation and warm codebooks on at most OPQ_ROWS
# rows (wordnet-minilm, OPQ56x8: see docs/results/opq.md).
OPQ_ITER = 40
OPQ_PQ_ITER = 1
OPQ_ROWS = 16384
# `pq_cell_errors`: a cell's mean squared error is shrunk toward its sub-space's mean as if
# the sub-space mean had been seen this many more times (a cell of 1-2 training rows would
# otherwise say its rows have no error at all).
CELL_PRIOR_ROWS = 4.0


def pq_dsub(dim: int, m: int) -> int:
    """Width of one sub-space: ceil(dim / M)."""
    return -(-dim // m)


def pq_pad(x: np.ndarray, m: int, dsub: int | None = None) -> np.ndarray:
    """(n, dim) -> (n, M * dsub) float32, C-contiguous, zero-padded on the right; dsub
    defaults to ceil(dim / M). Given (the books' sub-space width), rows wider than M * dsub
    are a ValueError: a width the default pads to fewer dims (11 against 2 x 10) had the
    last sub-spaces read from the next row."""
    n, dim = x.shape
    width = m * (pq_dsub(dim, m) if dsub is None else dsub)
    if dim > width:
        raise ValueError(f"pq: expected rows (n, dim) with dim <= {width} for {m} sub-spaces of {dsub} dims, "
                         f"found shape {x.shape}")
    if dim == width:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((n, width), dtype=np.float32)
    out[:, :dim] = x
    return out


def pq_train(x: np.ndarray, m: int, nbits: int, *, seed: int = 0, n_iter: int = 20,
             tol: float = KMEANS_TOL) -> np.ndarray:
    """Train M independent k-means codebooks of 2**nbits centroids on the sub-vectors
    (`kmeans_fit` with at most `n_iter` iterations and its early stop `tol`)."""
    xp = pq_pad(np.asarray(x, dtype=np.float32), m)
    dsub = xp.shape[1] // m
    ksub = 1 << nbits
    books = np.empty((m, ksub, dsub), dtype=np.float32)
    for j in range(m):
        books[j] = kmeans_fit(xp[:, j * dsub : (j + 1) * dsub], ksub, n_iter=n_iter, seed=seed + j, tol=tol)
    return books


def _pq_means(y: np.ndarray, codes: np.ndarray, books: np.ndarray) -> np.ndarray:
    """One Lloyd update of every sub-space's centroids: the mean of the sub-vectors coded to
    each (a centroid no row chose keeps its place). y float32 (n, dim) unpadded."""
    m, ksub, dsub = books.shape
    out = books.copy()
    d = y.shape[1]
    for j in range(m):
        c = codes[:, j].astype(np.intp)
        count = np.bincount(c, minlength=ksub)
        used = count > 0
        for t in range(min(dsub, d - j * dsub)):
            sums = np.bincount(c, weights=y[:, j * dsub + t], minlength=ksub)
            out[j, used, t] = (sums[used] / count[used]).astype(np.float32)
    return out


def opq_train(x: np.ndarray, m: int, nbits: int, *, seed: int = 0, n_iter: int = OPQ_ITER,
              pq_iter: int = OPQ_PQ_ITER, rows: int = OPQ_ROWS,
              svd_scope: Callable[[], ContextManager[Any]] | None = None,
              positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Optimized product quantization (Ge et al. 2013, the non-parametric OPQ): an
    orthogonal rotation R (float32 (dim, dim), applied as x @ R) and codebooks for x R.

    Starting from a random rotation and codebooks trained on x R (`pq_train`), `n_iter`
    times: `pq_iter` (>= 1) Lloyd steps of the codebooks from where they are (warm, as
    faiss's OPQMatrix does), then R <- the orthogonal Procrustes solution that maps x
    closest to the reconstructions of the last step's codes (the polar factor of
    x^T decode(codes)). Neither step raises the squared coding error of the rows it ran
    on. The loop runs on at most `rows` rows of x (drawn with `seed`); the final codebooks
    train on all of x, rotated, with `pq_train`'s defaults. Each SVD runs inside
    `svd_scope()` when given. On wordnet-minilm (PQ56x8, 65,536 rows) the squared error of
    unit rows falls from 0.240 to 0.153 in ~13 s (docs/results/opq.md).

    `positions` (int (dim,)): where the rotated rows' dims sit in the codebooks' padded
    width M * dsub, the rest zeros (`pq_place`); None: the first dim (padding on the right).
    The codebooks are those of the placed rows."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape

    def place(y: np.ndarray) -> np.ndarray:
        return y if positions is None else pq_place(y, positions, m)

    if pq_iter < 1:
        raise ValueError(f"opq_train: expected pq_iter >= 1, found {pq_iter}")
    rng = np.random.default_rng(seed)
    sub = x if n <= rows else x[np.sort(rng.choice(n, rows, replace=False))]
    rot = random_rotation(d, seed)
    if sub.shape[0] >= 2 and n_iter > 0:
        subt = np.ascontiguousarray(sub.T)
        # the loop's rotated rows in float32 BLAS: they only steer the training (codes come
        # from `matmul_rows_batch`'s fixed order of sums); at 1,536 dims the row-by-row
        # product took 0.98 s an iteration against BLAS's 0.42 on 2 cores
        for it in range(n_iter):
            y = place(np.ascontiguousarray(sub @ rot, dtype=np.float32))  # rows under the last step's R
            if it == 0:
                books = pq_train(y, m, nbits, seed=seed)
            for _ in range(pq_iter):
                codes = pq_encode(y, books)
                books = _pq_means(y, codes, books)
            # x^T decode in float32 BLAS (a float64 product cost 8x as much; R only needs
            # to be orthogonal, which the float64 polar factor makes it)
            decoded = pq_decode(codes, books, y.shape[1])
            decoded = decoded if positions is None else np.ascontiguousarray(decoded[:, positions])
            cross = (subt @ decoded).astype(np.float64)
            if svd_scope is None:
                rot = polar(cross).astype(np.float32)
            else:
                with svd_scope():
                    rot = polar(cross).astype(np.float32)
        # (the last R rotates all of x below: no rows rotated in the loop go unused)
    rot = np.ascontiguousarray(rot, dtype=np.float32)
    return rot, pq_train(place(matmul_rows_batch(x, rot)), m, nbits, seed=seed)


def pq_place(x: np.ndarray, positions: np.ndarray, m: int) -> np.ndarray:
    """Rows x (n, dim) placed at `positions` (int (dim,)) of zero rows (n, M * dsub), float32
    C-contiguous: a padding other than on the right (`pq_pad`)."""
    out = np.zeros((x.shape[0], m * pq_dsub(x.shape[1], m)), dtype=np.float32)
    out[:, positions] = x
    return out


@jit
def _encode_rows(xp, cts, start, stop, codes):
    # The distance buffer is allocated here, not passed in: as an argument (one per chunk of
    # a prange) LLVM could not keep the loops as tight, and the parallel driver ran 2x slower.
    d = np.empty(cts.shape[2], dtype=np.float32)
    dsub = cts.shape[1]
    for i in range(start, stop):
        for j in range(cts.shape[0]):
            codes[i, j] = nearest_column(xp, i, j * dsub, cts[j], d)[0]


@jit
def _encode_serial(xp, cts):
    """Codes uint8 (n, M) of padded rows xp (n, M * dsub) against cts (M, dsub, ksub)."""
    codes = np.empty((xp.shape[0], cts.shape[0]), dtype=np.uint8)
    _encode_rows(xp, cts, 0, xp.shape[0], codes)
    return codes


@jit_batch
def _encode_batch(xp, cts):
    """`_encode_serial`, parallel over chunks of rows."""
    n = xp.shape[0]
    codes = np.empty((n, cts.shape[0]), dtype=np.uint8)
    chunk = 1024
    for c in prange((n + chunk - 1) // chunk):
        _encode_rows(xp, cts, c * chunk, min(n, (c + 1) * chunk), codes)
    return codes


def pq_encode(x: np.ndarray, books: np.ndarray) -> np.ndarray:
    """Nearest centroid per sub-space: uint8 (n, M) (k-means assignment on each sub-space).

    Narrow sub-spaces (dsub < kmeans.BLAS_MIN_DIM, e.g. 8 for PQ48 on 384 dims) are coded in
    one pass over the rows, every sub-space of a row while it is in cache (the distances are
    the same as `kmeans_assign`'s); wide ones take kmeans_assign's BLAS path per sub-space.
    Rows are zero-padded to the books' M * dsub (`pq_pad`); wider rows are a ValueError."""
    m, ksub, dsub = books.shape
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"pq_encode: expected rows (n, dim), found shape {x.shape}")
    xp = pq_pad(x, m, dsub)
    if dsub >= BLAS_MIN_DIM:
        codes = np.empty((xp.shape[0], m), dtype=np.uint8)
        for j in range(m):
            codes[:, j] = kmeans_assign(xp[:, j * dsub : (j + 1) * dsub], books[j])[0]
        return codes
    cts = np.ascontiguousarray(np.asarray(books, dtype=np.float32).transpose(0, 2, 1))  # (M, dsub, ksub)
    if xp.shape[0] * m * ksub < PARALLEL_MIN_WORK:
        return _encode_serial(xp, cts)  # waking threads costs more than the work
    return _encode_batch(xp, cts)


def pq_decode(codes: np.ndarray, books: np.ndarray, dim: int) -> np.ndarray:
    """Concatenate each sub-code's centroid: float32 (n, dim)."""
    m, _, dsub = books.shape
    codes = np.asarray(codes)
    out = books[np.arange(m)[None, :], codes.astype(np.intp)]  # (n, M, dsub)
    return np.ascontiguousarray(out.reshape(codes.shape[0], m * dsub)[:, :dim])


@jit_batch
def pq_code_errors(r, codes, books):
    """|r_i - decode(code_i)| for each row, float32 (n,), without building the decoded rows:
    r float32 (n, dim) unpadded, codes uint8 (n, M) one sub-code per byte, books
    (M, ksub, dsub). Each difference is a float32 subtraction, its square summed in float64
    in dimension order, as ``sqrt(sum((r - pq_decode(codes))**2))`` computes it."""
    n, dim = r.shape
    m, _, dsub = books.shape
    out = np.empty(n, dtype=np.float32)
    for i in prange(n):
        acc = 0.0
        for j in range(m):
            c = codes[i, j]
            for t in range(min(dsub, dim - j * dsub)):
                d = np.float64(r[i, j * dsub + t] - books[j, c, t])
                acc += d * d
        out[i] = np.float32(np.sqrt(acc))
    return out


@jit_batch
def _cell_sums(r, codes, books):
    """Per (sub-space, sub-code): the summed squared error of the rows coded there (float64)
    and their count (int64), both (M, ksub); prange over sub-spaces (each owns its row)."""
    n, dim = r.shape
    m, ksub, dsub = books.shape
    sums = np.zeros((m, ksub), dtype=np.float64)
    counts = np.zeros((m, ksub), dtype=np.int64)
    for j in prange(m):
        for i in range(n):
            c = codes[i, j]
            acc = 0.0
            for t in range(min(dsub, dim - j * dsub)):
                d = np.float64(r[i, j * dsub + t] - books[j, c, t])
                acc += d * d
            sums[j, c] += acc
            counts[j, c] += 1
    return sums, counts


def pq_cell_errors(r: np.ndarray, codes: np.ndarray, books: np.ndarray,
                   prior_rows: float = CELL_PRIOR_ROWS) -> np.ndarray:
    """The mean squared coding error of each cell, float32 (M, ksub): over the rows r (float32
    (n, dim) unpadded, in the coded space) whose sub-code in sub-space m is j (codes uint8
    (n, M), one sub-code per byte), ``sum |r_m - books[m, j]|^2 / count``, shrunk toward the
    sub-space's mean over all rows by `prior_rows` rows (a cell no row reached gets that
    mean). Summed over a row's sub-codes it is the row's expected squared error given its
    code, `pq_code_error_scales`: the error scale of a code score without storing one per
    row (engine/bounds.py)."""
    if r.shape[0] == 0:
        raise ValueError("pq_cell_errors: expected at least one row, found none")
    sums, counts = _cell_sums(np.ascontiguousarray(r, dtype=np.float32), np.ascontiguousarray(codes),
                              np.ascontiguousarray(books, dtype=np.float32))
    if not prior_rows >= 0:
        raise ValueError(f"pq_cell_errors: expected prior_rows >= 0, found {prior_rows}")
    mean = np.broadcast_to((sums.sum(axis=1) / counts.sum(axis=1))[:, None], sums.shape)
    weight = counts + prior_rows
    out = np.divide(sums + prior_rows * mean, weight, out=mean.copy(), where=weight > 0)
    return out.astype(np.float32)


@jit_batch
def pq_code_error_scales(codes, cell_errors):
    """sqrt(sum_m cell_errors[m, codes[i, m]]) per row, float32 (n,): codes uint8 (n, M) one
    sub-code per byte, cell_errors float32 (M, ksub) from `pq_cell_errors`; summed in float64
    in sub-space order."""
    n, m = codes.shape
    out = np.empty(n, dtype=np.float32)
    for i in prange(n):
        acc = 0.0
        for j in range(m):
            acc += np.float64(cell_errors[j, codes[i, j]])
        out[i] = np.float32(np.sqrt(acc))
    return out


# Queries from which `pq_lut` makes its tables in a parallel loop (fewer: one thread, no
# parallel region to launch for a lone query; the sums are the same either way)
LUT_PARALLEL_MIN = 8


def pq_lut_books(books: np.ndarray) -> np.ndarray:
    """The books (M, ksub, dsub) as `pq_lut` reads them: float32 (M, dsub, ksub), contiguous.
    Made once per trained state by the engine: a transposing copy per call cost a lone
    8-bit query more than its tables (PQ48x8: 25 of 38 us)."""
    return np.ascontiguousarray(np.asarray(books, dtype=np.float32).transpose(0, 2, 1))


def pq_book_norms(books: np.ndarray) -> np.ndarray:
    """float32 (M, ksub): each book entry's squared length, the term `pq_lut`'s l2 tables add.
    Made once per trained state by the engine (58 us a call for PQ48x8, 127 us for PQ64x8 of
    768 dims)."""
    return np.ascontiguousarray(np.einsum("mjt,mjt->mj", books, books), dtype=np.float32)


def pq_lut(q: np.ndarray, books: np.ndarray, metric: str, books_t: np.ndarray | None = None,
           book_norms: np.ndarray | None = None) -> np.ndarray:
    """Lookup tables float32 (nq, M, ksub): ip contributions, or negated squared L2.

    The inner products are summed in float32 in each sub-space's dimension order, one query
    at a time (`_lut_row`): the same sums on every CPU and whatever the batch, in a parallel
    loop over queries from LUT_PARALLEL_MIN. `books_t`: `pq_lut_books(books)`, and for l2
    `book_norms`: `pq_book_norms(books)`, each made here when not given. (Before stop 47 a
    batched matrix product per sub-space and a transposing copy: 17 ms on one core for 2,000
    wordnet-gemma queries of PQ192x4, 3.8 ms now.)"""
    m, _, dsub = books.shape
    qp = pq_pad(np.atleast_2d(np.asarray(q, dtype=np.float32)), m, dsub).reshape(-1, m, dsub)
    if books_t is None:
        books_t = pq_lut_books(books)
    if books_t.shape != (m, dsub, books.shape[1]) or books_t.dtype != np.float32 or not books_t.flags.c_contiguous:
        raise ValueError(f"books_t: expected pq_lut_books(books), float32 {(m, dsub, books.shape[1])} contiguous, "
                         f"found {books_t.dtype} {books_t.shape}")
    ip = np.empty((qp.shape[0], m, books.shape[1]), dtype=np.float32)
    if qp.shape[0] >= LUT_PARALLEL_MIN:
        _lut_rows_parallel(qp, books_t, ip)
    else:
        _lut_rows(qp, books_t, ip)
    if metric == "ip":
        return ip
    if book_norms is None:
        book_norms = pq_book_norms(books)
    if book_norms.shape != books.shape[:2] or book_norms.dtype != np.float32:
        raise ValueError(f"book_norms: expected pq_book_norms(books), float32 {books.shape[:2]}, "
                         f"found {book_norms.dtype} {book_norms.shape}")
    q_norms = np.einsum("qmt,qmt->qm", qp, qp)
    return np.ascontiguousarray(-(q_norms[:, :, None] - 2.0 * ip + book_norms[None]), dtype=np.float32)


@jit_inline
def _lut_row(qp, books_t, out, i):
    """out[i, j, k] = sum_t qp[i, j, t] books_t[j, t, k], summed in float32 in t order (the
    loop over k vectorizes without reordering any sum)."""
    m, dsub = qp.shape[1], qp.shape[2]
    ksub = books_t.shape[2]
    for j in range(m):
        row = out[i, j]
        for k in range(ksub):
            row[k] = np.float32(0.0)
        for t in range(dsub):
            v = qp[i, j, t]
            b = books_t[j, t]
            for k in range(ksub):
                row[k] += v * b[k]


@jit
def _lut_rows(qp, books_t, out):
    """`pq_lut`'s inner products, one query after another."""
    for i in range(qp.shape[0]):
        _lut_row(qp, books_t, out, i)


@jit_batch
def _lut_rows_parallel(qp, books_t, out):
    """`_lut_rows` in a parallel loop over queries."""
    for i in prange(qp.shape[0]):
        _lut_row(qp, books_t, out, i)


@jit
def pq4_pack(codes):
    """uint8 (n, M) 4-bit sub-codes -> uint8 (n, ceil(M/2)): sub-code 2j low nibble, 2j+1 high."""
    n, m = codes.shape
    nb = (m + 1) // 2
    out = np.zeros((n, nb), dtype=np.uint8)
    for i in range(n):
        for j in range(m):
            if j % 2 == 0:
                out[i, j // 2] |= codes[i, j] & 15
            else:
                out[i, j // 2] |= (codes[i, j] & 15) << 4
    return out


@jit
def pq4_unpack(packed, m):
    """Inverse of `pq4_pack`."""
    n = packed.shape[0]
    out = np.empty((n, m), dtype=np.uint8)
    for i in range(n):
        for j in range(m):
            b = packed[i, j // 2]
            out[i, j] = (b & 15) if j % 2 == 0 else (b >> 4)
    return out


@jit
def lut_sum(lut, codes, i):
    """sum_j lut[j, codes[i, j]] for one code row.

    Not fastmath, on purpose: with reassociation allowed LLVM turns table-lookup loops into
    AVX-512 gathers with 64-bit index multiplies, measured 2-3x slower than scalar loads."""
    s = np.float32(0.0)
    for j in range(codes.shape[1]):
        s += lut[j, codes[i, j]]
    return s


@jit
def _push(heap_scores, heap_ids, s, idx):
    # the id test comes last: rows that lose on score (nearly all) cost the score compare only
    if (s > heap_scores[0] or (s == heap_scores[0] and idx < heap_ids[0])) and idx >= 0:
        topk_push(heap_scores, heap_ids, s, idx)


@jit
def _push4(heap_scores, heap_ids, s0, s1, s2, s3, i, ids):
    _push(heap_scores, heap_ids, s0, ids[i])
    _push(heap_scores, heap_ids, s1, ids[i + 1])
    _push(heap_scores, heap_ids, s2, ids[i + 2])
    _push(heap_scores, heap_ids, s3, ids[i + 3])


@jit_inline
def _sums4(lut, codes, i):
    """The table sums of code rows i .. i + 3, each in float32 in sub-space order."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for j in range(codes.shape[1]):
        s0 += lut[j, codes[i, j]]
        s1 += lut[j, codes[i + 1, j]]
        s2 += lut[j, codes[i + 2, j]]
        s3 += lut[j, codes[i + 3, j]]
    return s0, s1, s2, s3


@jit
def _scan_list(lut, codes, ids, start, stop, bias, heap_scores, heap_ids):
    # Four code rows at a time (faiss's distance_four_codes idea): four independent sums let
    # the table loads overlap; measured 1.5x faster than one row at a time, while splitting
    # one row's sum into several accumulators made LLVM emit gathers and ran slower.
    b = np.float32(bias)
    stop4 = start + (stop - start) // 4 * 4
    for i in range(start, stop4, 4):
        s0, s1, s2, s3 = _sums4(lut, codes, i)
        # one compare for the four rows in the common case, none of them reaching the heap
        # (0.71x the time of four compares and calls on wordnet-minilm PQ48x8)
        if b + max(max(s0, s1), max(s2, s3)) >= heap_scores[0]:
            _push4(heap_scores, heap_ids, b + s0, b + s1, b + s2, b + s3, i, ids)
    for i in range(stop4, stop):
        _push(heap_scores, heap_ids, b + lut_sum(lut, codes, i), ids[i])


@jit
def pq_lut_scan(luts, codes, ids, list_offsets, probes, probe_bias, k, floor):
    """One query: luts (L, M, ksub), probes (P,), probe_bias (P,) -> sorted top-k of the rows
    scoring >= floor (-inf: all; kernels/topk.py)."""
    heap_scores, heap_ids = topk_init_floor(k, floor)
    n_tables = luts.shape[0]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        _scan_list(luts[t], codes, ids, list_offsets[lst], list_offsets[lst + 1], probe_bias[p], heap_scores, heap_ids)
    topk_finish(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def pq_lut_scan_batch(luts, codes, ids, list_offsets, probes, probe_bias, k, floors):
    """`pq_lut_scan` for every query (floors (nq,)), parallel over queries: (nq, k) scores
    and ids."""
    nq = luts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = pq_lut_scan(luts[qi], codes, ids, list_offsets, probes[qi], probe_bias[qi], k, floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def _scan_list_scaled(lut, codes, ids, row_scale, start, stop, bias, heap_scores, heap_ids):
    # `_scan_list` with each row's whole score times its scale g (float16 bits): four rows
    # at a time, one compare of their best against the heap for the four
    b = np.float32(bias)
    stop4 = start + (stop - start) // 4 * 4
    for i in range(start, stop4, 4):
        s0, s1, s2, s3 = _sums4(lut, codes, i)
        s0 = f16_to_f32(row_scale[i]) * (b + s0)
        s1 = f16_to_f32(row_scale[i + 1]) * (b + s1)
        s2 = f16_to_f32(row_scale[i + 2]) * (b + s2)
        s3 = f16_to_f32(row_scale[i + 3]) * (b + s3)
        if max(max(s0, s1), max(s2, s3)) >= heap_scores[0]:
            _push4(heap_scores, heap_ids, s0, s1, s2, s3, i, ids)
    for i in range(stop4, stop):
        _push(heap_scores, heap_ids, f16_to_f32(row_scale[i]) * (b + lut_sum(lut, codes, i)), ids[i])


@jit
def pq_lut_scan_scaled(lut, codes, ids, row_scale, list_offsets, probes, probe_bias, k, floor):
    """One query: the top-k of g_i * (probe_bias[p] + sum_j lut[j, code_j]) over the probed
    lists (lut (M, ksub), one table for every list; probes and probe_bias (P,)), g_i =
    row_scale[i] a float16 given as its uint16 bits (n,), rows in list order. PQ x8 under
    ip with row norms: ``g = |x| / |x_hat|``, the score ``|x| <q, x_hat> / |x_hat|``
    (engine/quantizers.py). Sorted scores and ids of the rows scoring >= floor, as
    `pq_lut_scan`."""
    heap_scores, heap_ids = topk_init_floor(k, floor)
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        _scan_list_scaled(lut, codes, ids, row_scale, list_offsets[lst], list_offsets[lst + 1], probe_bias[p],
                          heap_scores, heap_ids)
    topk_finish(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def pq_lut_scan_scaled_batch(luts, codes, ids, row_scale, list_offsets, probes, probe_bias, k, floors):
    """`pq_lut_scan_scaled` for every query (luts (nq, M, ksub), probes and probe_bias
    (nq, P), floors (nq,)), parallel over queries: (nq, k) scores and ids."""
    nq = luts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = pq_lut_scan_scaled(luts[qi], codes, ids, row_scale, list_offsets, probes[qi], probe_bias[qi], k,
                                  floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def pq_lut_scan_l2(ip2, terms, codes, ids, list_offsets, probes, probe_bias, k, floor):
    """One query, l2 on residuals: `pq_lut_scan` with each probed list's table made as it
    is scanned, ip2 - terms[l] (ip2 (M, ksub): 2 <q_j, b_j>; terms: `pq_list_terms`;
    probe_bias: -|q - c_l|^2), into one buffer that stays in cache: the results of
    `pq_lut_scan` with those tables, without writing nq x P tables first (minilm
    IVF256,PQ48x8 nprobe 32: 1.5 GB for 1,000 queries). Empty lists cost no table."""
    heap_scores, heap_ids = topk_init_floor(k, floor)
    m, ksub = ip2.shape
    lut = np.empty((m, ksub), dtype=np.float32)
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0 or list_offsets[lst + 1] == list_offsets[lst]:
            continue
        for j in range(m):
            for c in range(ksub):
                lut[j, c] = ip2[j, c] - terms[lst, j, c]
        _scan_list(lut, codes, ids, list_offsets[lst], list_offsets[lst + 1], probe_bias[p], heap_scores, heap_ids)
    topk_finish(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def pq_lut_scan_l2_batch(ip2, terms, codes, ids, list_offsets, probes, probe_bias, k, floors):
    """`pq_lut_scan_l2` for every query (ip2 (nq, M, ksub), probes and probe_bias (nq, P),
    floors (nq,)), parallel over queries: (nq, k) scores and ids."""
    nq = ip2.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = pq_lut_scan_l2(ip2[qi], terms, codes, ids, list_offsets, probes[qi], probe_bias[qi], k, floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


# ---------------------------------------------------------------- cosine to the reconstruction
#
# For unit vectors PQ's reconstruction x_hat is shorter than x by a per-row amount (|x_hat|^2
# = 1 - |x - x_hat|^2 on average, since k-means residuals are orthogonal to their centroids on
# average), so <q, x_hat> under-rates the rows coded worst. The cosine to the reconstruction,
# <q, x_hat> / |x_hat|, ranks better (recall@10 of the codes, 1,000 queries: wordnet-minilm
# PQ56x8 0.727 -> 0.754, IVF256,PQ56x8 at nprobe 32 0.700 -> 0.742; wordnet-gemma PQ56x8
# 0.677 -> 0.694). |x_hat|^2 is a sum over sub-quantizers too:
# |c|^2 + sum_j norms[j, code_j] with norms[j, i] = 2 <c_j, book_j,i> + |book_j,i|^2 for the
# centroid c the codes are residuals of, so the codes give it without a stored byte (the
# scan's filter derives one byte a row in RAM from them, `pq_inv_norm_bounds`).


@jit
def pq_norm_table(books, centroid):
    """norms (M, ksub) float32 and |c|^2 float32 for the reconstructions c + decode(code) of
    a width-`len(centroid)` codec: |c + decode(code)|^2 = norm0 + sum_j norms[j, code_j].
    books (M, ksub, dsub); dims past the width (M * dsub > width pads) are not decoded and
    not counted."""
    m, ksub, dsub = books.shape
    width = centroid.shape[0]
    norms = np.empty((m, ksub), dtype=np.float32)
    for j in range(m):
        for i in range(ksub):
            s = 0.0
            for d in range(min(dsub, width - j * dsub)):
                v = np.float64(books[j, i, d])
                s += 2.0 * centroid[j * dsub + d] * v + v * v
            norms[j, i] = s
    n0 = 0.0
    for d in range(width):
        n0 += np.float64(centroid[d]) * centroid[d]
    return norms, np.float32(n0)


@jit_batch
def pq_list_terms(books, centroids):
    """(nlist, M, ksub) float32: `pq_norm_table` of every centroid (lists in parallel). For
    l2 on residuals, -|(q - c) - b|^2 summed over the sub-spaces is
    -|q - c|^2 + sum_j (2 <q_j, b_j> - terms[l, j, b_j]): a query's l2 tables for all its
    probed lists from one inner-product table (`pq_lut_scan_l2`), as faiss's IVFPQ does with
    its precomputed table."""
    nlist = centroids.shape[0]
    m, ksub, _ = books.shape
    out = np.empty((nlist, m, ksub), dtype=np.float32)
    for lst in prange(nlist):
        table, _ = pq_norm_table(books, centroids[lst])
        out[lst] = table
    return out


@jit_batch
def pq_own_list_terms(codes, order, list_offsets, books, centroids):
    """Each row's l2 term with its own list's centroid c folded in, float32 (n,) in input
    order: ``sum_j terms[l, j, code_j]`` (`pq_list_terms`: ``|r_hat|^2 + 2 <c, r_hat>``,
    r_hat = decode(code)), summed in float64 in sub-space order. Then -|q - c - r_hat|^2 =
    -(|q - c|^2 - 2 <q, r_hat> + term): one inner-product table a query serves every probed
    list (engine/quantizers.py `PQ.own_list_terms`). codes uint8 (n, M) one sub-code per
    byte in input order, the rows of list l ``order[list_offsets[l]:list_offsets[l + 1]]``,
    centroids in the coded space. Lists in parallel."""
    n, m = codes.shape
    out = np.zeros(n, dtype=np.float32)
    for lst in prange(list_offsets.shape[0] - 1):
        if list_offsets[lst + 1] > list_offsets[lst]:
            table, _ = pq_norm_table(books, centroids[lst])
            for t in range(list_offsets[lst], list_offsets[lst + 1]):
                i = order[t]
                acc = 0.0
                for j in range(m):
                    acc += np.float64(table[j, codes[i, j]])
                out[i] = np.float32(acc)
    return out


@jit_inline
def _inv_sqrt(n2):
    """float32 1 / sqrt(n2) of a float64 squared length; 1 for a (near) zero length (the
    scans score such a reconstruction as is)."""
    return np.float32(1.0 / np.sqrt(n2)) if n2 > 1e-12 else np.float32(1.0)


@jit_batch
def pq4_block_inv_norms(blocks, block_ids, block_offsets, books, centroids):
    """1 / |x_hat| of every fast-scan block row, float32 (n_blocks * 32,): blocks uint8
    (n_blocks, n_pairs, 32) as kernels/fastscan.py `fs_layout` packs 4-bit PQ codes (byte
    [b, j, r] holds block row r's sub-codes 2j, low nibble, and 2j + 1), the blocks of list l
    at block_offsets[l:l + 2] residuals of centroids[l] (in the coded space). |x_hat|^2 is
    `pq_norm_table`'s norm0 + sum_j norms[j, code_j] summed in float64; 1 where it is at
    most 1e-12 (as `_inv_norm_decoded`), 0 on padding rows (block_ids -1). Lists in
    parallel; the fast scan's cosine mode multiplies a row's score by it (rounded to
    float16, engine/quantizers.py)."""
    n_blocks, n_pairs, width = blocks.shape
    m = books.shape[0]
    out = np.zeros(n_blocks * width, dtype=np.float32)
    if m > 2 * n_pairs:
        raise ValueError("pq4_block_inv_norms: the blocks hold fewer sub-codes than the books")
    for lst in prange(block_offsets.shape[0] - 1):
        b0 = block_offsets[lst]
        b1 = block_offsets[lst + 1]
        if b1 == b0:
            continue
        norms, norm0 = pq_norm_table(books, centroids[lst])
        for b in range(b0, b1):
            for r in range(width):
                if block_ids[b * width + r] < 0:
                    continue
                n2 = np.float64(norm0)
                for j in range(m):
                    byte = np.int64(blocks[b, j // 2, r])
                    n2 += np.float64(norms[j, (byte & 15) if j % 2 == 0 else (byte >> 4)])
                out[b * width + r] = _inv_sqrt(n2)
    return out


# A row's 1 / |x_hat| in the scan comes from decoding it (`_inv_norm_decoded`: float64 sums
# of each sub-space's squares, added in sub-space order), or from a float64 table of those
# sub-space sums (`pq_sub_norms`) which gives the same value bit for bit in M lookups.
# Before the scan pays for that it bounds the row's score with an interval of that value
# read from one byte per row (`pq_inv_norm_bounds`): the byte picks one of INV_BUCKETS
# intervals [inv_lo[b], inv_hi[b]] on a geometric grid over the index's range, each two
# grid steps wide (the last: the whole range). The index-wide range alone
# let most rows of an IVF index through (each list's centroid moves its rows' norms):
# IVF256,PQ56x8 cosine scanned at 1.4x the time of ip on wordnet-minilm, IVF256,OPQ32x8 at
# 2.8x on wordnet-gemma's first 256 dims.
INV_BUCKETS = 256
# The grid's points are computed in float64 and rounded to float32 outwards by this much
# (far more than the float64 power's and the cast's rounding).
_GRID_REL = 2.0 ** -22


@jit
def pq_inv_norm_bounds(books, centroids, codes, list_offsets):
    """One byte per row of `codes` (in list order, list l at list_offsets[l:l + 2], residuals
    of centroids[l]) with inv_lo[byte] <= 1 / |x_hat| <= inv_hi[byte], the value the cosine
    scan multiplies the row's score by: (bytes uint8 (n,), inv_lo float32 (INV_BUCKETS,),
    inv_hi float32 (INV_BUCKETS,)), tables of ones without rows. Byte b < INV_BUCKETS - 1
    spans points b to b + 2 of a geometric grid of INV_BUCKETS steps over the rows' range,
    and every row gets the narrow bucket its exact value (`pq_row_inv_norms`, the scan's
    value bit for bit) falls in; the last byte spans the whole range. Costs
    `pq_row_inv_norms` and 4 bytes a row while it runs."""
    n = codes.shape[0]
    out = np.full(n, INV_BUCKETS - 1, dtype=np.uint8)
    inv_lo = np.ones(INV_BUCKETS, dtype=np.float32)
    inv_hi = np.ones(INV_BUCKETS, dtype=np.float32)
    if n == 0:
        return out, inv_lo, inv_hi
    inv = pq_row_inv_norms(books, centroids, codes, list_offsets)
    lo = np.float64(inv.min())
    hi = np.float64(inv.max())
    # float32 tables rounded outwards: inv_lo[b] <= grid[b], inv_hi[b] >= grid[b + 2]
    ratio = hi / lo
    for b in range(INV_BUCKETS - 1):
        inv_lo[b] = np.float32(lo * ratio ** (b / INV_BUCKETS) * (1.0 - _GRID_REL))
        inv_hi[b] = np.float32(lo * ratio ** ((b + 2) / INV_BUCKETS) * (1.0 + _GRID_REL))
    inv_lo[INV_BUCKETS - 1] = np.float32(lo * (1.0 - _GRID_REL))
    inv_hi[INV_BUCKETS - 1] = np.float32(hi * (1.0 + _GRID_REL))
    log_ratio = np.log(ratio)
    last = INV_BUCKETS - 2  # the narrow buckets are 0..last
    for i in range(n):
        a = inv[i]
        t = int(np.log(a / lo) / log_ratio * INV_BUCKETS) if log_ratio > 0 else 0
        t = min(max(t, 0), last)
        while t > 0 and inv_lo[t] > a:  # the log's rounding: the bucket starting at or below a
            t -= 1
        while t < last and inv_lo[t + 1] <= a:
            t += 1
        if inv_lo[t] <= a <= inv_hi[t]:  # always but where the grid's rounding fails it
            out[i] = t
    return out, inv_lo, inv_hi


@jit_inline
def _sub_norm(books, centroid, j, c):
    """float64 |centroid_j + books[j, c]|^2 over sub-space j's dims within the width, summed in
    dimension order: one term of `_inv_norm_decoded`'s sum."""
    dsub = books.shape[2]
    s = 0.0
    for t in range(min(dsub, centroid.shape[0] - j * dsub)):
        v = np.float64(centroid[j * dsub + t]) + np.float64(books[j, c, t])
        s += v * v
    return s


@jit
def _inv_norm_decoded(books, centroid, codes, i):
    """1 / |centroid + decode(code row i)|: each sub-space's squares summed in float64 in
    dimension order (`_sub_norm`), those sums added in sub-space order; 1 for a (near) zero
    length. The sub-space sums are independent chains (the CPU overlaps them), and
    `pq_sub_norms` tables them."""
    n2 = 0.0
    for j in range(codes.shape[1]):
        n2 += _sub_norm(books, centroid, j, codes[i, j])
    return _inv_sqrt(n2)


@jit
def pq_sub_norms(books, centroid):
    """(M, ksub) float64: `_sub_norm` of every book entry with `centroid`'s sub-vector, so that
    `_inv_norm_tabled` gives `_inv_norm_decoded`'s value bit for bit in M lookups."""
    m, ksub, _ = books.shape
    out = np.empty((m, ksub), dtype=np.float64)
    for j in range(m):
        for c in range(ksub):
            out[j, c] = _sub_norm(books, centroid, j, c)
    return out


@jit_batch
def pq_list_sub_norms(books, centroids):
    """(nlist, M, ksub) float64: `pq_sub_norms` of every centroid (lists in parallel), the
    tables `pq_lut_scan_cosine` takes."""
    m, ksub, _ = books.shape
    out = np.empty((centroids.shape[0], m, ksub), dtype=np.float64)
    for lst in prange(centroids.shape[0]):
        out[lst] = pq_sub_norms(books, centroids[lst])
    return out


@jit_inline
def _inv_norm_tabled(sub_norms, codes, i):
    n2 = 0.0
    for j in range(codes.shape[1]):
        n2 += sub_norms[j, codes[i, j]]
    return _inv_sqrt(n2)


@jit_batch
def pq_row_inv_norms(books, centroids, codes, list_offsets):
    """``1 / |centroids[l] + decode(code)|`` of every row of `codes` (uint8 (n, M), in list order,
    list l at list_offsets[l:l + 2]), float32 (n,), each as `_inv_norm_decoded` (float64
    sub-space sums; 1 for a length of at most 1e-6). Lists in parallel; a list of more
    rows than ksub reads its `pq_sub_norms` (the same values, 10-25x fewer cycles a row)."""
    out = np.ones(codes.shape[0], dtype=np.float32)
    ksub = books.shape[1]
    for lst in prange(list_offsets.shape[0] - 1):
        start, stop = list_offsets[lst], list_offsets[lst + 1]
        if stop - start > ksub:
            tab = pq_sub_norms(books, centroids[lst])
            for i in range(start, stop):
                out[i] = _inv_norm_tabled(tab, codes, i)
        else:
            for i in range(start, stop):
                out[i] = _inv_norm_decoded(books, centroids[lst], codes, i)
    return out


@jit
def _best_cosine(s, lo, hi):
    """The largest s * v for v in [lo, hi] (float32 rounding keeps the order)."""
    return s * hi if s > 0 else s * lo


@jit
def _push_cosine(heap_scores, heap_ids, s, bound, i, idx, books, centroid, codes, sub_norms, tabled):
    # bound >= s * 1 / |x_hat| (`_best_cosine`): a row whose best case loses is not normed
    if bound >= heap_scores[0] and idx >= 0:
        inv = _inv_norm_tabled(sub_norms, codes, i) if tabled else _inv_norm_decoded(books, centroid, codes, i)
        _push(heap_scores, heap_ids, s * inv, idx)


@jit
def _scan_list_cosine(lut, codes, ids, start, stop, bias, books, centroid, sub_norms, tabled, inv_bytes, inv_lo,
                      inv_hi, heap_scores, heap_ids):
    m = codes.shape[1]
    b = np.float32(bias)
    stop4 = start + (stop - start) // 4 * 4
    # The four-row sums of `_scan_list`, written out again on purpose: with a shared helper
    # returning the four sums this scan took 1.30-1.39 s against 1.17-1.29 s written out
    # (minilm PQ48x8, 1,000 queries, one thread, six rounds each).
    for i in range(start, stop4, 4):
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for j in range(m):
            s0 += lut[j, codes[i, j]]
            s1 += lut[j, codes[i + 1, j]]
            s2 += lut[j, codes[i + 2, j]]
            s3 += lut[j, codes[i + 3, j]]
        t0, t1, t2, t3 = b + s0, b + s1, b + s2, b + s3
        u0 = _best_cosine(t0, inv_lo[inv_bytes[i]], inv_hi[inv_bytes[i]])
        u1 = _best_cosine(t1, inv_lo[inv_bytes[i + 1]], inv_hi[inv_bytes[i + 1]])
        u2 = _best_cosine(t2, inv_lo[inv_bytes[i + 2]], inv_hi[inv_bytes[i + 2]])
        u3 = _best_cosine(t3, inv_lo[inv_bytes[i + 3]], inv_hi[inv_bytes[i + 3]])
        # one compare for the four rows in the common case: none can reach the heap
        if max(max(u0, u1), max(u2, u3)) >= heap_scores[0]:
            _push_cosine(heap_scores, heap_ids, t0, u0, i, ids[i], books, centroid, codes, sub_norms, tabled)
            _push_cosine(heap_scores, heap_ids, t1, u1, i + 1, ids[i + 1], books, centroid, codes, sub_norms, tabled)
            _push_cosine(heap_scores, heap_ids, t2, u2, i + 2, ids[i + 2], books, centroid, codes, sub_norms, tabled)
            _push_cosine(heap_scores, heap_ids, t3, u3, i + 3, ids[i + 3], books, centroid, codes, sub_norms, tabled)
    for i in range(stop4, stop):
        t = b + lut_sum(lut, codes, i)
        _push_cosine(heap_scores, heap_ids, t, _best_cosine(t, inv_lo[inv_bytes[i]], inv_hi[inv_bytes[i]]), i,
                     ids[i], books, centroid, codes, sub_norms, tabled)


@jit
def _check_sub_norms(sub_norms, books, centroids):
    """Whether the cosine scan reads tables (sub_norms (nlist, M, ksub)) or decodes (shape
    (1, 0, 0)); any other shape, which the scan would read past, is refused."""
    tabled = sub_norms.shape[1] > 0
    if sub_norms.shape[0] < 1 or (tabled and (sub_norms.shape[0] != centroids.shape[0]
                                             or sub_norms.shape[1] != books.shape[0]
                                             or sub_norms.shape[2] != books.shape[1])):
        raise ValueError("pq_lut_scan_cosine: expected sub_norms of shape (nlist, M, ksub) or (1, 0, 0)")
    return tabled


@jit
def pq_lut_scan_cosine(lut, codes, ids, list_offsets, probes, probe_bias, books, centroids, sub_norms, inv_bytes,
                       inv_lo, inv_hi, k, floor):
    """One query: the top-k of (probe_bias[p] + sum_j lut[j, code_j]) / |centroids[l] +
    decode(code)| over the probed lists l = probes[p], the cosine to the reconstruction (lut
    (M, ksub): <q, book>; probe_bias: <q, centroid>). Sorted scores and ids, as
    `pq_lut_scan`. A row's norm is computed only when its score times the bound of its
    1 / |x_hat| that its byte gives (`pq_inv_norm_bounds`: inv_bytes, inv_lo, inv_hi) can
    reach the heap; the result equals normalising every row. sub_norms: (nlist, M, ksub)
    `pq_list_sub_norms` (the norm in M lookups), or shape (1, 0, 0) to decode each such row
    (the same value). Only rows scoring >= floor (-inf: all; kernels/topk.py) are kept."""
    tabled = _check_sub_norms(sub_norms, books, centroids)
    heap_scores, heap_ids = topk_init_floor(k, floor)
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        _scan_list_cosine(lut, codes, ids, list_offsets[lst], list_offsets[lst + 1], probe_bias[p], books,
                          centroids[lst], sub_norms[lst if tabled else 0], tabled, inv_bytes, inv_lo, inv_hi,
                          heap_scores, heap_ids)
    topk_finish(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def pq_lut_scan_cosine_batch(luts, codes, ids, list_offsets, probes, probe_bias, books, centroids, sub_norms,
                             inv_bytes, inv_lo, inv_hi, k, floors):
    """`pq_lut_scan_cosine` for every query (luts (nq, M, ksub), probes and probe_bias
    (nq, P), floors (nq,)), parallel over queries: (nq, k) scores and ids."""
    _check_sub_norms(sub_norms, books, centroids)  # outside the parallel loop
    nq = luts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = pq_lut_scan_cosine(luts[qi], codes, ids, list_offsets, probes[qi], probe_bias[qi], books, centroids,
                                  sub_norms, inv_bytes, inv_lo, inv_hi, k, floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids
