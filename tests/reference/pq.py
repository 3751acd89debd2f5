"""Product-quantization oracles: padding, brute-force encoding, decoding, lookup tables,
the inverted-list scan as a list of every candidate's score, 4-bit packing, and the 4-bit
fast-scan pieces (block layout and the exact uint16 accumulators)."""

from __future__ import annotations

import numpy as np

from .ivf import probed_rows

__all__ = [
    "pq_pad_ref",
    "pq_sub_dists_ref",
    "pq_encode_ref",
    "pq_decode_ref",
    "pq_lut_ref",
    "pq4_pack_ref",
    "pq_scan_candidates_ref",
    "fastscan_accumulate_ref",
    "fs_layout_ref",
]


def pq_pad_ref(x, m):
    """Zero-pad the columns of x (n, dim) to M * ceil(dim / M), float64."""
    x = np.asarray(x, dtype=np.float64)
    n, dim = x.shape
    dsub = -(-dim // m)
    out = np.zeros((n, m * dsub))
    out[:, :dim] = x
    return out


def pq_sub_dists_ref(x, books):
    """float64 (n, M, ksub): squared distance of each sub-vector to each centroid."""
    m, ksub, dsub = books.shape
    x = np.asarray(x, dtype=np.float64)
    xp = np.zeros((x.shape[0], m * dsub))  # the books' width (rows may be narrower than ceil(dim / M) gives)
    xp[:, :x.shape[1]] = x
    xp = xp.reshape(-1, m, dsub)
    b = np.asarray(books, dtype=np.float64)
    out = np.empty((xp.shape[0], m, ksub))
    for i in range(xp.shape[0]):
        for j in range(m):
            out[i, j] = ((xp[i, j][None, :] - b[j]) ** 2).sum(axis=1)
    return out


def pq_encode_ref(x, books):
    """uint8 (n, M): first nearest centroid per sub-space."""
    return np.argmin(pq_sub_dists_ref(x, books), axis=2).astype(np.uint8)


def pq_decode_ref(codes, books, dim):
    """float32 (n, dim): concatenated centroids, loops."""
    m, _, dsub = books.shape
    n = codes.shape[0]
    out = np.zeros((n, m * dsub), dtype=np.float32)
    for i in range(n):
        for j in range(m):
            out[i, j * dsub : (j + 1) * dsub] = books[j, codes[i, j]]
    return out[:, :dim]


def pq_cell_errors_ref(r, codes, books, prior_rows):
    """Each cell's mean squared coding error over the rows coded there, shrunk toward its
    sub-space's mean by prior_rows rows (a cell no row reached: that mean), float64 (M, ksub):
    loops, one cell at a time."""
    m, ksub, dsub = books.shape
    n, dim = r.shape
    pad = pq_pad_ref(r, m).astype(np.float64).reshape(n, m, dsub)
    out = np.empty((m, ksub))
    for j in range(m):
        width = max(0, min(dsub, dim - j * dsub))  # padded dims count nothing
        sq = ((pad[:, j, :width] - books[j, codes[:, j], :width].astype(np.float64)) ** 2).sum(axis=1)
        mean = sq.mean()
        for c in range(ksub):
            mine = sq[codes[:, j] == c]
            weight = len(mine) + prior_rows
            out[j, c] = (mine.sum() + prior_rows * mean) / weight if weight > 0 else mean
    return out


def pq_lut_ref(q, books, metric):
    """float64 (nq, M, ksub): <q_m, c> for ip, -|q_m - c|^2 for l2."""
    m, ksub, dsub = books.shape
    qp = pq_pad_ref(np.atleast_2d(q), m).reshape(-1, m, dsub)
    b = np.asarray(books, dtype=np.float64)
    out = np.empty((qp.shape[0], m, ksub))
    for i in range(qp.shape[0]):
        for j in range(m):
            if metric == "ip":
                out[i, j] = b[j] @ qp[i, j]
            else:
                out[i, j] = -((qp[i, j][None, :] - b[j]) ** 2).sum(axis=1)
    return out


def pq4_pack_ref(codes):
    """uint8 (n, ceil(M/2)): sub-code 2j in the low nibble, 2j + 1 in the high one."""
    n, m = codes.shape
    out = np.zeros((n, (m + 1) // 2), dtype=np.uint8)
    for i in range(n):
        for j in range(m):
            out[i, j // 2] |= (int(codes[i, j]) & 15) << (4 * (j % 2))
    return out


def pq_scan_candidates_ref(luts, codes, ids, list_offsets, probes, probe_bias):
    """Every candidate of one query: ids (c,) and float64 scores bias + sum_m lut[m, code_m].

    luts (L, M, ksub) with L = 1 (shared) or L = P (per probe); probes -1 are skipped.
    """
    out_ids, out_s = [], []
    luts = np.asarray(luts, dtype=np.float64)
    m = codes.shape[1]
    for p, t, i in probed_rows(list_offsets, probes, luts.shape[0]):
        out_ids.append(ids[i])
        out_s.append(float(probe_bias[p]) + sum(luts[t, j, codes[i, j]] for j in range(m)))
    return np.array(out_ids, dtype=np.int64), np.array(out_s, dtype=np.float64)


def fastscan_accumulate_ref(codes, qlut):
    """Exact fast-scan accumulators: uint16 (n,) sum_m qlut[m, codes[:, m]] modulo 2**16.

    codes uint8 (n, M) unpacked 4-bit sub-codes, qlut (M, >= 16) integer tables (only the
    first 16 entries of each row are read)."""
    codes = np.asarray(codes)
    n, m = codes.shape
    total = np.zeros(n, dtype=np.int64)
    for j in range(m):
        total += np.asarray(qlut[j], dtype=np.int64)[codes[:, j].astype(np.intp)]
    return (total % 65536).astype(np.uint16)


def fs_layout_ref(codes, ids, list_offsets, block=32):
    """Blocked layout, loops: blocks uint8 (n_blocks, ceil(M/2), block), ids with -1 padding,
    block offsets of each list."""
    codes = np.asarray(codes)
    n, m = codes.shape
    n_pairs = (m + 1) // 2
    nlist = len(list_offsets) - 1
    block_offsets = [0]
    for lst in range(nlist):
        size = list_offsets[lst + 1] - list_offsets[lst]
        block_offsets.append(block_offsets[-1] + -(-size // block))
    total = block_offsets[-1]
    blocks = np.zeros((total, n_pairs, block), dtype=np.uint8)
    block_ids = np.full(total * block, -1, dtype=np.int64)
    for lst in range(nlist):
        for r, i in enumerate(range(list_offsets[lst], list_offsets[lst + 1])):
            b = block_offsets[lst] + r // block
            v = r % block
            block_ids[b * block + v] = ids[i]
            for j in range(m):
                blocks[b, j // 2, v] |= (int(codes[i, j]) & 15) << (4 * (j % 2))
    return blocks, block_ids, np.array(block_offsets, dtype=np.int64)


def probe_luts_ref(ip: np.ndarray, terms: np.ndarray, probes: np.ndarray, w: float = 2.0) -> np.ndarray:
    """l2 tables of every probe without the -|q - c|^2 term (nq, P, M, ksub): w ip[q] -
    terms[probes[q, p]] in float32 (w = 2: PQ's inner products and list terms; w = 1: RB's
    level-0 tables of q R and of c R), zeros where the probe is < 0."""
    out = np.float32(w) * ip[:, None] - terms[np.maximum(probes, 0)]
    out[probes < 0] = 0
    return out.astype(np.float32)
