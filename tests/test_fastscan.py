"""kernels/fastscan.py against tests/reference/pq.py: exact uint16 accumulators (AVX2 and
scalar paths), the block layout, table quantization bounds and exact scan scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import binary, fastscan, pq
from tests.reference.ivf import random_layout, random_probes
from tests.reference.pq import fastscan_accumulate_ref, fs_layout_ref, pq_scan_candidates_ref
from tests.reference.topk import assert_topk_exact

SETTINGS = settings(max_examples=50, deadline=None, database=None)
BLOCK = fastscan.BLOCK
def _scalar_full(blocks, b, qluts, out):
    fastscan._scalar_accumulate(blocks, b, 0, blocks.shape[1], qluts, out)


ACCUMULATORS = [pytest.param(fastscan.fs_block_accumulate, id="dispatch"),
                pytest.param(_scalar_full, id="scalar")]


def _qluts(rng, m, qmax):
    """uint8 (2 * n_pairs, 32) tables as `fs_quantize_lut` lays them out: each 16-entry
    table stored twice, rows past M zero."""
    n_pairs = (m + 1) // 2
    out = np.zeros((2 * n_pairs, 32), dtype=np.uint8)
    t = rng.integers(0, qmax + 1, size=(m, 16)).astype(np.uint8)
    out[:m, :16] = t
    out[:m, 16:] = t
    return out


def test_shuffle_flag_matches_dispatch():
    if fastscan.HAS_SHUFFLE:
        assert fastscan.fs_block_accumulate_range is not fastscan._scalar_accumulate


@SETTINGS
@given(n_blocks=st.integers(1, 3), levels=st.integers(1, 4), pairs=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_block_accumulate_range_splits_the_sum(n_blocks, levels, pairs, seed):
    # Per-level accumulation (RB through the fast scan) must equal the reference on each
    # level's slice of sub-codes, on both the shuffle and the scalar path.
    rng = np.random.default_rng(seed)
    m = 2 * pairs * levels
    codes = rng.integers(0, 16, size=(n_blocks * BLOCK, m)).astype(np.uint8)
    blocks, _, _ = fs_layout_ref(codes, np.arange(n_blocks * BLOCK), np.array([0, n_blocks * BLOCK]))
    qluts = _qluts(rng, 2 * pairs, 255)
    out = np.empty(BLOCK, dtype=np.uint16)
    out_scalar = np.empty(BLOCK, dtype=np.uint16)
    for b in range(n_blocks):
        for lv in range(levels):
            fastscan.fs_block_accumulate_range(blocks, b, lv * pairs, pairs, qluts, out)
            fastscan._scalar_accumulate(blocks, b, lv * pairs, pairs, qluts, out_scalar)
            sl = codes[b * BLOCK : (b + 1) * BLOCK, lv * 2 * pairs : (lv + 1) * 2 * pairs]
            ref = fastscan_accumulate_ref(sl, qluts)
            np.testing.assert_array_equal(out, ref)
            np.testing.assert_array_equal(out_scalar, ref)


@pytest.mark.parametrize("accumulate", ACCUMULATORS)
@SETTINGS
@given(n_blocks=st.integers(1, 4), m=st.sampled_from([1, 2, 3, 7, 8, 16, 33]), seed=st.integers(0, 2**32 - 1),
       full_range=st.booleans(), readonly=st.booleans())
def test_block_accumulate_exact(accumulate, n_blocks, m, seed, full_range, readonly):
    rng = np.random.default_rng(seed)
    n_pairs = (m + 1) // 2
    # in-contract tables (qmax = 65535 // M, no overflow) or full-range bytes
    qmax = 255 if full_range else min(255, 65535 // (2 * n_pairs))
    codes = rng.integers(0, 16, size=(n_blocks * BLOCK, m)).astype(np.uint8)
    blocks, _, _ = fs_layout_ref(codes, np.arange(n_blocks * BLOCK), np.array([0, n_blocks * BLOCK]))
    qluts = _qluts(rng, m, qmax)
    if readonly:
        blocks.setflags(write=False)
        qluts.setflags(write=False)
    out = np.empty(BLOCK, dtype=np.uint16)
    for b in range(n_blocks):
        accumulate(blocks, b, qluts, out)
        ref = fastscan_accumulate_ref(codes[b * BLOCK : (b + 1) * BLOCK], qluts[:m])
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("accumulate", ACCUMULATORS)
def test_block_accumulate_overflow_wraps_like_reference(accumulate):
    # 300 sub-quantizers of 255 exceed 65535: both paths wrap modulo 2**16 identically.
    m = 300
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 16, size=(BLOCK, m)).astype(np.uint8)
    blocks, _, _ = fs_layout_ref(codes, np.arange(BLOCK), np.array([0, BLOCK]))
    qluts = np.full((m, 32), 255, dtype=np.uint8)
    out = np.empty(BLOCK, dtype=np.uint16)
    accumulate(blocks, 0, qluts, out)
    np.testing.assert_array_equal(out, np.full(BLOCK, (255 * m) % 65536, np.uint16))


@SETTINGS
@given(n=st.integers(0, 100), m=st.sampled_from([1, 2, 3, 5, 8, 13]), nlist=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_layout_matches_reference(n, m, nlist, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    offsets, ids = random_layout(rng, n, nlist)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, ids, offsets)
    ref_b, ref_i, ref_o = fs_layout_ref(codes, ids, offsets)
    assert blocks.dtype == np.uint8 and blocks.flags.c_contiguous
    assert block_ids.dtype == np.int64 and block_offsets.dtype == np.int64
    np.testing.assert_array_equal(block_offsets, ref_o)
    np.testing.assert_array_equal(block_ids, ref_i)
    np.testing.assert_array_equal(blocks.reshape(ref_b.shape), ref_b)


@SETTINGS
@given(nq=st.integers(0, 3), n_tab=st.integers(1, 3), m=st.sampled_from([1, 2, 3, 8, 13, 64]),
       seed=st.integers(0, 2**32 - 1), const=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_quantize_lut_bounds(nq, n_tab, m, seed, const, scale):
    rng = np.random.default_rng(seed)
    luts = (rng.standard_normal((nq, n_tab, m, 16)) * scale).astype(np.float32)
    if const:
        luts[..., :] = luts[..., :1]  # constant tables: zero span, no NaN
    qluts, steps, biases = fastscan.fs_quantize_lut(luts)
    n_pairs = (m + 1) // 2
    qmax = min(255, 65535 // (2 * n_pairs))
    assert qluts.shape == (nq, n_tab, 2 * n_pairs, 32) and qluts.dtype == np.uint8
    assert steps.shape == (nq, n_tab) and biases.shape == (nq, n_tab)
    assert np.all(np.isfinite(steps)) and np.all(steps > 0) and np.all(np.isfinite(biases))
    assert int(qluts.max(initial=0)) <= qmax
    # the worst-case accumulator fits in uint16
    assert 2 * n_pairs * qmax <= 65535
    np.testing.assert_array_equal(qluts[..., :16], qluts[..., 16:])
    np.testing.assert_array_equal(qluts[:, :, m:], 0)
    lut64 = luts.astype(np.float64)
    mins = lut64.min(axis=3)
    np.testing.assert_allclose(biases, mins.sum(axis=2), rtol=1e-5, atol=1e-5 * scale * m)
    rec = mins[..., None] + steps[:, :, None, None].astype(np.float64) * qluts[:, :, :m, :16]
    err = np.abs(rec - lut64)
    assert np.all(err <= steps[:, :, None, None] * (0.5 + 1e-3) + 1e-6 * scale)


def _scan_inputs(rng, nq, n, m, nlist, n_probe, per_probe):
    n_tab = n_probe if per_probe else 1
    luts = rng.standard_normal((nq, n_tab, m, 16)).astype(np.float32)
    if rng.random() < 0.3:
        luts = np.rint(luts * 4).astype(np.float32)  # coarse tables: many equal scores
    codes = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    if n > 2:
        codes[n - 1] = codes[0]  # duplicate rows: equal scores, ties by id
    offsets, ids = random_layout(rng, n, nlist)
    probes = random_probes(rng, nq, nlist, n_probe)
    bias = rng.standard_normal((nq, n_probe)).astype(np.float32)
    return luts, codes, ids, offsets, probes, bias


def _exact_candidates(qlut, step, base_bias, codes, ids, offsets, probes, probe_bias, m):
    """Every candidate of one query with the kernel's float32 formula
    score = float32(bias + probe_bias) + float32(step * acc), acc exact (reference)."""
    out_i, out_s = [], []
    for p, lst in enumerate(probes):
        if lst < 0:
            continue
        t = p if qlut.shape[0] > 1 else 0
        rows = slice(offsets[lst], offsets[lst + 1])
        acc = fastscan_accumulate_ref(codes[rows], qlut[t, :m]).astype(np.float32)
        base = np.float32(base_bias[t]) + np.float32(probe_bias[p])
        s = base + np.float32(step[t]) * acc
        out_i.extend(ids[rows])
        out_s.extend(s.astype(np.float32))
    return np.array(out_i, dtype=np.int64), np.array(out_s, dtype=np.float32)


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 90), m=st.sampled_from([1, 2, 3, 4, 8, 13]),
       nlist=st.integers(1, 4), n_probe=st.integers(1, 5), per_probe=st.booleans(), k=st.integers(1, 100),
       seed=st.integers(0, 2**32 - 1))
def test_scan_exact_scores_and_ties(nq, n, m, nlist, n_probe, per_probe, k, seed):
    rng = np.random.default_rng(seed)
    luts, codes, ids, offsets, probes, bias = _scan_inputs(rng, nq, n, m, nlist, n_probe, per_probe)
    qluts, steps, biases = fastscan.fs_quantize_lut(luts)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, ids, offsets)
    for a in (qluts, steps, biases, blocks, block_ids, block_offsets, probes, bias):
        a.setflags(write=False)  # memory-mapped inputs are read-only
    got_s, got_i = fastscan.fs_scan_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, bias, k)
    for q in range(nq):
        s, i = fastscan.fs_scan(qluts[q], steps[q], biases[q], blocks, block_ids, block_offsets,
                                probes[q], bias[q], k)
        np.testing.assert_array_equal(got_i[q], i)  # batch driver = serial twin
        np.testing.assert_array_equal(got_s[q], s)
        cand_i, cand_s = _exact_candidates(qluts[q], steps[q], biases[q], codes, ids, offsets, probes[q], bias[q], m)
        assert_topk_exact(s, i, cand_s, cand_i, k)
        # and the quantized score approximates the float table sum within M half-steps
        ref_i, ref_s = pq_scan_candidates_ref(luts[q], codes, ids, offsets, probes[q], bias[q])
        assert np.array_equal(ref_i, cand_i)
        t = np.array([p if per_probe else 0 for p, lst in enumerate(probes[q]) if lst >= 0
                      for _ in range(offsets[lst], offsets[lst + 1])], dtype=np.int64)
        if len(t):
            tol = steps[q][t].astype(np.float64) * (0.5 * m + 0.01) + 1e-4 * (1 + np.abs(ref_s))
            assert np.all(np.abs(cand_s - ref_s) <= tol)


@settings(max_examples=10, deadline=None, database=None)
@given(n=st.integers(1, 70), m=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**32 - 1))
def test_scan_of_pq4_codes_end_to_end(n, m, seed):
    # The engine's path: 4-bit PQ codes, packed for storage, unpacked into the block layout.
    rng = np.random.default_rng(seed)
    dim = 2 * m + 1
    x = rng.standard_normal((n, dim)).astype(np.float32)
    books = rng.standard_normal((m, 16, pq.pq_dsub(dim, m))).astype(np.float32)
    codes = pq.pq4_unpack(pq.pq4_pack(pq.pq_encode(x, books)), m)
    ids = np.arange(n, dtype=np.int64)
    offsets = np.array([0, n], np.int64)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, ids, offsets)
    luts = pq.pq_lut(rng.standard_normal((1, dim)).astype(np.float32), books, "ip")[:, None]
    qluts, steps, biases = fastscan.fs_quantize_lut(luts)
    s, i = fastscan.fs_scan(qluts[0], steps[0], biases[0], blocks, block_ids, block_offsets,
                            np.zeros(1, np.int64), np.zeros(1, np.float32), n + 3)
    cand_i, cand_s = _exact_candidates(qluts[0], steps[0], biases[0], codes, ids, offsets,
                                       np.zeros(1, np.int64), np.zeros(1, np.float32), m)
    assert_topk_exact(s, i, cand_s, cand_i, n + 3)


@SETTINGS
@given(n=st.integers(1, 70), dim=st.sampled_from([1, 7, 8, 13, 64]), levels=st.integers(1, 4),
       is_l2=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_rb_fast_scan_matches_float_tables(n, dim, levels, is_l2, seed):
    # RB through the fast scan (kernels.fastscan.fs_scan_factors, level-0 tables quantized to
    # uint8) against the float-table scorer kernels.binary.rb_lut_scan: every row's score
    # within the rounding bound |g| * 2 * (bytes per level) * step (each of the 2 * nbytes
    # nibble tables of a level rounds by <= step/2, and the level weights sum to < 2).
    rng = np.random.default_rng(seed)
    nbytes = binary.rb_nbytes(dim)
    mask = np.packbits(np.arange(nbytes * 8) < dim, bitorder="little")
    bits = (rng.integers(0, 256, size=(n, levels, nbytes)).astype(np.uint8) & mask)
    factors = np.abs(rng.standard_normal((n, 2))).astype(np.float32) + 0.1
    ids = np.arange(n, dtype=np.int64)
    offsets = np.array([0, n], dtype=np.int64)
    q = rng.standard_normal((1, dim)).astype(np.float32)
    probes = np.zeros(1, dtype=np.int64)
    bias = np.full(1, 0.25, dtype=np.float32)
    q_sq = np.full(1, float((q * q).sum()) + 1.0, dtype=np.float32)
    ref_s, ref_i = binary.rb_lut_scan(binary.rb_lut(q, levels), bits.reshape(n, -1), factors, ids, offsets,
                                      probes, bias, q_sq, is_l2, n)
    blocks, block_ids, block_offsets = fastscan.fs_layout(binary.rb_nibbles(bits), ids, offsets)
    row_factors = fastscan.fs_row_values(factors, block_ids.shape[0], offsets)
    qluts, steps, biases = fastscan.fs_quantize_lut(binary.rb_nibble_lut(q, 1)[:, None])
    got_s, got_i = fastscan.fs_scan_factors(qluts[0], steps[0], biases[0], levels, blocks, block_ids, row_factors,
                                            block_offsets, probes, bias, q_sq, is_l2, n)
    assert sorted(got_i.tolist()) == list(range(n))
    ref = dict(zip(ref_i.tolist(), ref_s.tolist()))
    bound = factors[:, 0] * 2 * nbytes * float(steps[0, 0]) * (2 if is_l2 else 1) + 1e-4
    for idx, score in zip(got_i.tolist(), got_s.tolist()):
        assert abs(score - ref[idx]) <= bound[idx] * 1.001, (idx, score, ref[idx], bound[idx])
