"""Vector transforms applied before coding: Matryoshka truncation and rotations.

- `mrl_truncate(x, dim, renorm)`: keep the first `dim` columns; with `renorm` each row is
  rescaled to unit L2 norm (zero rows stay zero). float32 (n, dim), C-contiguous.
- `random_rotation(dim, seed)`: a Haar-random orthogonal float32 (dim, dim) matrix (QR of a
  Gaussian matrix with the sign fix), applied as x @ R.
- `itq_rotation(x, seed, n_iter)`: iterative quantization (Gong & Lazebnik): starting from
  a random rotation, alternate B = sign(x R) and the orthogonal Procrustes solution
  R = U V^T of x^T B = U S V^T, which lowers the 1-bit quantization error of the rows.
  x^T B is updated from the signs that flipped (a few percent per iteration) rather than
  recomputed, and the iterations stop early at a fixed point (no sign flips: R is final).
- `matmul_rows(x, w)` / `matmul_rows_batch`: x @ w in float32, float32 (n, m)
  C-contiguous, each row's sums in one fixed order whatever the batch around it (what the
  encoders rotate and assign rows with). BLAS does not promise that: on an AMD Zen 5
  (OpenBLAS's Haswell kernels) a row's product had other last bits as row 3 than as row 7
  of a batch, so a row's code depended on its batch (chunked, reversed or Ray-built codes
  differed from a one-pass build).

Reference: tests/test_transform.py checks orthogonality and the monotone ITQ objective.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import numpy as np

from numba import prange

from ._jit import jit, jit_batch

__all__ = ["mrl_truncate", "mrl_truncate_checked", "normalize_rows", "normalize_rows_checked", "random_rotation",
           "itq_rotation", "polar", "matmul_rows", "matmul_rows_batch"]


@jit
def _row_sq_norm(a):
    """sum_t a[t]^2 in float64, in one fixed order: 8 interleaved partial sums, then a fixed
    tree. Independent chains run ~2x faster than one, and with no fastmath the result is
    the same on every CPU (so a row normalises to the same float32 values everywhere)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n = a.shape[0]
    m = n - n % 8
    for t in range(0, m, 8):
        v = np.float64(a[t])
        s0 += v * v
        v = np.float64(a[t + 1])
        s1 += v * v
        v = np.float64(a[t + 2])
        s2 += v * v
        v = np.float64(a[t + 3])
        s3 += v * v
        v = np.float64(a[t + 4])
        s4 += v * v
        v = np.float64(a[t + 5])
        s5 += v * v
        v = np.float64(a[t + 6])
        s6 += v * v
        v = np.float64(a[t + 7])
        s7 += v * v
    tail = 0.0
    for t in range(m, n):
        v = np.float64(a[t])
        tail += v * v
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail


@jit
def _scale_rows(x, out):
    # float64 norms: a float32 sum of squares underflows below ~1e-19 and overflows above
    # ~1e19. One pass per row, no float64 copy of x (numpy's norm of x.astype(float64) took
    # 0.5 s on 117,647 x 384). Returns the first all-zero row, or -1.
    first_zero = -1
    for i in range(x.shape[0]):
        xi = x[i]
        oi = out[i]
        acc = _row_sq_norm(xi)
        if acc > 0:
            inv = 1.0 / np.sqrt(acc)
        else:
            inv = 1.0
            if first_zero < 0:
                first_zero = i
        for j in range(xi.shape[0]):
            oi[j] = np.float32(np.float64(xi[j]) * inv)
    return first_zero


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32 C-contiguous."""
    return normalize_rows_checked(x)[0]


def normalize_rows_checked(x: np.ndarray) -> tuple[np.ndarray, int]:
    """`normalize_rows` and the index of the first all-zero row (-1 if none)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    first_zero = _scale_rows(x, out)
    return out, int(first_zero)


def mrl_truncate(x: np.ndarray, dim: int, renorm: bool) -> np.ndarray:
    return mrl_truncate_checked(x, dim, renorm)[0]


def mrl_truncate_checked(x: np.ndarray, dim: int, renorm: bool) -> tuple[np.ndarray, int]:
    """`mrl_truncate` and, with `renorm`, the first row whose kept dims are all zero (else -1)."""
    out = np.ascontiguousarray(np.asarray(x)[:, :dim], dtype=np.float32)
    return normalize_rows_checked(out) if renorm else (out, -1)


# Rows per pass over w: their accumulators (8 x 384 floats) stay in L1 while each row of w
# is read once for all of them.
_MATMUL_GROUP_ROWS = 8


@jit
def _matmul_group(x, w, out, a, b):
    """out[a:b] = x[a:b] @ w: out[r, j] accumulates x[r, i] * w[i, j] over i in order,
    a float32 multiply then a float32 add each (no fastmath: no contraction, no
    reassociation), the same for every row wherever it stands, and equal bit for bit to
    numpy's ``out += x[:, i:i+1] * w[i]`` for i = 0, 1, ... Eight terms per load and store
    of the accumulator (the order is unchanged): as fast as OpenBLAS's sgemm on 117,647 x 384
    by 384 x 384 (0.17 s, 2 threads; one term per load and store took 0.44 s)."""
    d = x.shape[1]
    m = w.shape[1]
    for r in range(a, b):
        for j in range(m):
            out[r, j] = 0.0
    d8 = d - d % 8
    for i in range(0, d8, 8):
        r0 = w[i]
        r1 = w[i + 1]
        r2 = w[i + 2]
        r3 = w[i + 3]
        r4 = w[i + 4]
        r5 = w[i + 5]
        r6 = w[i + 6]
        r7 = w[i + 7]
        for r in range(a, b):
            x0 = x[r, i]
            x1 = x[r, i + 1]
            x2 = x[r, i + 2]
            x3 = x[r, i + 3]
            x4 = x[r, i + 4]
            x5 = x[r, i + 5]
            x6 = x[r, i + 6]
            x7 = x[r, i + 7]
            orow = out[r]
            for j in range(m):
                acc = orow[j]
                acc += x0 * r0[j]
                acc += x1 * r1[j]
                acc += x2 * r2[j]
                acc += x3 * r3[j]
                acc += x4 * r4[j]
                acc += x5 * r5[j]
                acc += x6 * r6[j]
                acc += x7 * r7[j]
                orow[j] = acc
    for i in range(d8, d):
        ri = w[i]
        for r in range(a, b):
            xi = x[r, i]
            orow = out[r]
            for j in range(m):
                orow[j] += xi * ri[j]


@jit
def _matmul_rows(x, w, out):
    n = x.shape[0]
    for a in range(0, n, _MATMUL_GROUP_ROWS):
        _matmul_group(x, w, out, a, min(n, a + _MATMUL_GROUP_ROWS))


@jit_batch
def _matmul_rows_batch(x, w, out):
    n = x.shape[0]
    n_groups = (n + _MATMUL_GROUP_ROWS - 1) // _MATMUL_GROUP_ROWS
    for g in prange(n_groups):
        a = g * _MATMUL_GROUP_ROWS
        _matmul_group(x, w, out, a, min(n, a + _MATMUL_GROUP_ROWS))


def _matmul_args(x: np.ndarray, w: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"matmul_rows: expected x (n, d) and w (d, m), found {x.shape} and {w.shape}")
    shape = (x.shape[0], w.shape[1])
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"matmul_rows: out must be C-contiguous float32 {shape}, found {out.dtype} {out.shape}")
    return x, w, out


def matmul_rows(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x @ w, float32 (n, m), into `out` when given; row r depends on x[r] and w only."""
    x, w, out = _matmul_args(x, w, out)
    _matmul_rows(x, w, out)
    return out


def matmul_rows_batch(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`matmul_rows` over Numba's threads (groups of 8 rows in parallel), the same values."""
    x, w, out = _matmul_args(x, w, out)
    _matmul_rows_batch(x, w, out)
    return out


def random_rotation(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((dim, dim))
    qm, rm = np.linalg.qr(g)
    qm *= np.sign(np.diag(rm))[None, :]
    return np.ascontiguousarray(qm, dtype=np.float32)


@jit
def _itq_signs(x, v, b, mt, max_flips):
    """One ITQ sign step in place: b <- sign(v) (+1 at 0) and, for each sign that flips,
    mt[j] += 2 b[i, j] x[i] so that mt stays (x^T b)^T, in float64. Returns the flips, or -1
    once more than `max_flips` flipped (b is still completed; mt is then stale and the
    caller recomputes it with one matrix product)."""
    n, d = v.shape
    flips = 0
    for i in range(n):
        xi = x[i]
        for j in range(d):
            s = np.float32(1.0) if v[i, j] >= 0 else np.float32(-1.0)
            if s != b[i, j]:
                b[i, j] = s
                flips += 1
                if flips <= max_flips:
                    w = 2.0 * np.float64(s)
                    row = mt[j]
                    for t in range(d):
                        row[t] += w * np.float64(xi[t])
    return flips if flips <= max_flips else -1


def polar(m: np.ndarray) -> np.ndarray:
    """The orthogonal factor U V^T of m = U S V^T (float64): the Procrustes rotation.

    (Through eigh(m^T m) it would take half the time, but x^T B is ill-conditioned on real
    embeddings (cond > 1e4 on wordnet-minilm residuals), where S^-1 amplifies rounding.)"""
    u, _, vt = np.linalg.svd(m)
    return u @ vt


# Above this fraction of flipped signs, one matrix product recomputes x^T B faster than
# the row-by-row updates (a flip costs one float64 row update of width d; the product
# costs n d^2 multiply-adds in float32 BLAS).
_ITQ_SPARSE_FRACTION = 0.05


def itq_rotation(x: np.ndarray, seed: int, n_iter: int = 50,
                 svd_scope: Callable[[], ContextManager[Any]] | None = None) -> np.ndarray:
    # The product x R per iteration runs in float32 (half the time of float64; only signs
    # come out of it); x^T B is kept in float64 (updated by the flipped signs), and the
    # Procrustes step and the rotation stay float64 so the result is orthogonal to float64
    # precision before the final cast. Each SVD runs inside `svd_scope()` when given (the RB
    # quantizer passes one that holds BLAS to one thread: a threaded 384 x 384 SVD is slower,
    # 39 against 30 ms on 2 cores), while the products keep the threads: ITQ of 8192 x 384
    # rows took 0.57-0.66 s against 0.73-0.75 s all on one thread, the same rotation bit for bit.
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    rot = random_rotation(d, seed).astype(np.float64)
    b: np.ndarray | None = None
    mt = np.zeros((d, d), dtype=np.float64)  # (x^T B)^T, rows contiguous for the updates
    max_flips = int(_ITQ_SPARSE_FRACTION * n * d)
    for _ in range(n_iter):
        v = x @ rot.astype(np.float32)
        if b is None:
            b = np.where(v >= 0, np.float32(1.0), np.float32(-1.0))
            flips = -1
        else:
            flips = _itq_signs(x, v, b, mt, max_flips)
            if flips == 0:
                break  # B = sign(x R) again: R = polar(x^T B) is a fixed point
        if flips < 0:
            mt = (b.T @ x).astype(np.float64)
        if svd_scope is None:
            rot = polar(mt.T)
        else:
            with svd_scope():
                rot = polar(mt.T)
    return np.ascontiguousarray(rot, dtype=np.float32)
