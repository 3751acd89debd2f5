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

Reference: tests/test_transform.py checks orthogonality and the monotone ITQ objective.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import numpy as np

from ._jit import jit

__all__ = ["mrl_truncate", "mrl_truncate_checked", "normalize_rows", "normalize_rows_checked", "random_rotation",
           "itq_rotation"]


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


def _polar(m: np.ndarray) -> np.ndarray:
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
            rot = _polar(mt.T)
        else:
            with svd_scope():
                rot = _polar(mt.T)
    return np.ascontiguousarray(rot, dtype=np.float32)
