"""Vector transforms applied before coding: Matryoshka truncation and rotations.

- `mrl_truncate(x, dim, renorm)`: keep the first `dim` columns; with `renorm` each row is
  rescaled to unit L2 norm (zero rows stay zero). float32 (n, dim), C-contiguous.
- `random_rotation(dim, seed)`: a Haar-random orthogonal float32 (dim, dim) matrix (QR of a
  Gaussian matrix with the sign fix), applied as x @ R.
- `itq_rotation(x, seed, n_iter)`: iterative quantization (Gong & Lazebnik): starting from
  a random rotation, alternate B = sign(x R) and the orthogonal Procrustes solution
  R = U V^T of x^T B = U S V^T, which lowers the 1-bit quantization error of the rows.
Reference: tests/test_transform.py checks orthogonality and the monotone ITQ objective.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mrl_truncate", "normalize_rows", "random_rotation", "itq_rotation"]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    # float64 norms: a float32 sum of squares underflows below ~1e-19 and overflows above ~1e19
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def mrl_truncate(x: np.ndarray, dim: int, renorm: bool) -> np.ndarray:
    out = np.ascontiguousarray(np.asarray(x)[:, :dim], dtype=np.float32)
    return normalize_rows(out) if renorm else out


def random_rotation(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((dim, dim))
    qm, rm = np.linalg.qr(g)
    qm *= np.sign(np.diag(rm))[None, :]
    return np.ascontiguousarray(qm, dtype=np.float32)


def itq_rotation(x: np.ndarray, seed: int, n_iter: int = 50) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    rot = random_rotation(x.shape[1], seed).astype(np.float64)
    for _ in range(n_iter):
        b = np.where(x @ rot >= 0, 1.0, -1.0)
        u, _, vt = np.linalg.svd(x.T @ b)
        rot = u @ vt
    return np.ascontiguousarray(rot, dtype=np.float32)
