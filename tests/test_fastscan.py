"""kernels/fastscan.py against tests/reference/pq.py: exact uint16 accumulators (AVX2 and
scalar paths), the block layout, table quantization bounds and exact scan scores; the
multi-query and list-major scans against the single-query kernels (bit-identical results),
and vecz.engine.codecs.CodeIndex's use of them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vecz.kernels import binary, fastscan, pq
from tests.reference.ivf import random_layout, random_probes
from tests.reference.pq import fastscan_accumulate_ref, fs_layout_ref, pq_scan_candidates_ref
from tests.reference.topk import assert_topk_exact, no_floors

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
    # fs_block_bytes undoes the packing: row v of block b has the bytes of its code
    # (sub-codes 2j, 2j + 1 in byte j's low and high nibble; padding rows zero)
    rows = fastscan.fs_block_bytes(blocks)
    assert rows.shape == (blocks.shape[0] * BLOCK, (m + 1) // 2) and rows.flags.c_contiguous
    padded = np.zeros((n, 2 * rows.shape[1]), dtype=np.uint8)
    padded[:, :m] = codes
    for lst in range(nlist):
        for i, r in enumerate(range(offsets[lst], offsets[lst + 1])):
            at = block_offsets[lst] * BLOCK + i
            np.testing.assert_array_equal(rows[at], padded[r, 0::2] | (padded[r, 1::2] << 4))
    assert not rows[block_ids < 0].any()


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


def _sized_layout(rng, sizes):
    """random_layout with the given list sizes: offsets and distinct shuffled ids."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    n = int(offsets[-1])
    return offsets, rng.permutation(3 * n + 5)[:n].astype(np.int64)


def _scan_inputs(rng, nq, n, m, nlist, n_probe, per_probe, sizes=None):
    if sizes is not None:
        n, nlist = int(sum(sizes)), len(sizes)
    n_tab = n_probe if per_probe else 1
    luts = rng.standard_normal((nq, n_tab, m, 16)).astype(np.float32)
    if rng.random() < 0.3:
        luts = np.rint(luts * 4).astype(np.float32)  # coarse tables: many equal scores
    codes = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    if n > 2:
        codes[n - 1] = codes[0]  # duplicate rows: equal scores, ties by id
    offsets, ids = random_layout(rng, n, nlist) if sizes is None else _sized_layout(rng, sizes)
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
    got_s, got_i = fastscan.fs_scan_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, bias, k,
                                          no_floors(qluts))
    for q in range(nq):
        s, i = fastscan.fs_scan(qluts[q], steps[q], biases[q], blocks, block_ids, block_offsets,
                                probes[q], bias[q], k, -np.inf)
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
                            np.zeros(1, np.int64), np.zeros(1, np.float32), n + 3, -np.inf)
    cand_i, cand_s = _exact_candidates(qluts[0], steps[0], biases[0], codes, ids, offsets,
                                       np.zeros(1, np.int64), np.zeros(1, np.float32), m)
    assert_topk_exact(s, i, cand_s, cand_i, n + 3)


@SETTINGS
@given(n=st.integers(1, 70), dim=st.sampled_from([1, 7, 8, 13, 64]), levels=st.integers(1, 4),
       is_l2=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_rb_fast_scan_matches_float_tables(n, dim, levels, is_l2, seed):
    # RB through the fast scan (vecz.kernels.fastscan.fs_scan_factors, level-0 tables quantized to
    # uint8) against the float-table scorer vecz.kernels.binary.rb_lut_scan: every row's score
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
                                            block_offsets, probes, bias, q_sq, is_l2, n, -np.inf)
    assert sorted(got_i.tolist()) == list(range(n))
    ref = dict(zip(ref_i.tolist(), ref_s.tolist()))
    bound = factors[:, 0] * 2 * nbytes * float(steps[0, 0]) * (2 if is_l2 else 1) + 1e-4
    for idx, score in zip(got_i.tolist(), got_s.tolist()):
        assert abs(score - ref[idx]) <= bound[idx] * 1.001, (idx, score, ref[idx], bound[idx])


# --------------------------------------------------------------------------- multi-query scans
# fs_scan_multi / fs_scan_factors_multi scan a group of queries that probe the same lists in
# one pass over the codes, a pure speed-up: every result must equal the single-query kernels'
# exactly.

ROW_COUNTS = st.one_of(st.sampled_from([0, 1, 31, 32, 33, 100]), st.integers(0, 300))
MULTI_SETTINGS = settings(max_examples=40, deadline=None, database=None)


def _shared_probes(rng, nq, nlist, n_probe):
    """(nq, n_probe) probe rows drawn from a pool of at most 3 distinct rows, so queries
    share their lists (and so form groups) as they do without IVF or with popular lists."""
    pool = random_probes(rng, int(rng.integers(1, 4)), nlist, n_probe)
    return np.ascontiguousarray(pool[rng.integers(0, pool.shape[0], size=nq)])


def _rb_inputs(rng, nq, n, dim, levels, nlist, n_probe, per_probe, sizes=None):
    """RB codes as the engine lays them out (random bits, duplicate rows, g of both signs and
    zero), per-query level-0 tables, probes and per-probe terms."""
    if sizes is not None:
        n, nlist = int(sum(sizes)), len(sizes)
    nbytes = binary.rb_nbytes(dim)
    mask = np.packbits(np.arange(nbytes * 8) < dim, bitorder="little")
    bits = rng.integers(0, 256, size=(n, levels, nbytes)).astype(np.uint8) & mask
    factors = np.empty((n, 2), dtype=np.float32)
    factors[:, 0] = rng.standard_normal(n) + rng.choice([0.0, 1.5], size=n)
    factors[:, 1] = np.abs(rng.standard_normal(n)) * 2
    if n:
        factors[rng.random(n) < 0.1, 0] = 0.0  # zero residuals
    if rng.random() < 0.3:
        factors[:, 0] = np.rint(factors[:, 0])  # few distinct g: many equal scores
    if n > 2:
        dup = rng.integers(0, n, size=max(1, n // 5))
        bits[dup] = bits[0]  # duplicate rows: equal scores, ties by id
        factors[dup] = factors[0]
    offsets, ids = random_layout(rng, n, nlist) if sizes is None else _sized_layout(rng, sizes)
    blocks, block_ids, block_offsets = fastscan.fs_layout(binary.rb_nibbles(bits), ids, offsets)
    row_factors = fastscan.fs_row_values(factors, block_ids.shape[0], offsets)
    n_tab = n_probe if per_probe else 1
    q = rng.standard_normal((nq * n_tab, dim)).astype(np.float32)
    luts = binary.rb_nibble_lut(q, 1).reshape(nq, n_tab, -1, 16)
    qluts, steps, biases = fastscan.fs_quantize_lut(luts)
    probes = _shared_probes(rng, nq, nlist, n_probe)
    bias = rng.standard_normal((nq, n_probe)).astype(np.float32)
    q_sq = (np.abs(rng.standard_normal((nq, n_probe))) * dim).astype(np.float32)
    return (qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, probes, bias, q_sq)


def _readonly(*arrays):
    for a in arrays:
        a.setflags(write=False)  # memory-mapped inputs are read-only


def _spread(rng, qluts):
    """The same tables with rows 64 bytes apart (junk in between): the shuffle kernels' loop
    for table rows that are not 32 contiguous bytes."""
    wide = rng.integers(0, 256, size=qluts.shape[:-1] + (64,)).astype(np.uint8)
    wide[..., :32] = qluts
    return wide[..., :32]


@SETTINGS
@given(n_blocks=st.integers(1, 3), n_q=st.integers(1, 2 * fastscan.LANES + 1), n_tab=st.integers(1, 3),
       pairs=st.integers(1, 9), levels=st.integers(1, 3), spread=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_block_accumulate_lanes_matches_reference(n_blocks, n_q, n_tab, pairs, levels, spread, seed):
    # Every lane equals the single-query accumulator of its own query's tables, on the
    # shuffle and the scalar path; lanes past the last query repeat query q_first. spread:
    # table rows 64 bytes apart instead of 32 (the kernels' second loop).
    rng = np.random.default_rng(seed)
    lanes = fastscan.LANES
    m = 2 * pairs * levels
    codes = rng.integers(0, 16, size=(n_blocks * BLOCK, m)).astype(np.uint8)
    blocks, _, _ = fs_layout_ref(codes, np.arange(n_blocks * BLOCK), np.array([0, n_blocks * BLOCK]))
    qluts = np.stack([np.stack([_qluts(rng, 2 * pairs, 255) for _ in range(n_tab)]) for _ in range(n_q)])
    if spread:
        qluts = _spread(rng, qluts)
    _readonly(blocks, qluts)
    out = np.empty((lanes, BLOCK), dtype=np.uint16)
    out_scalar = np.empty((lanes, BLOCK), dtype=np.uint16)
    out_group = np.empty((lanes, BLOCK), dtype=np.uint16)
    for b in range(n_blocks):
        for lv in range(levels):
            t = int(rng.integers(0, n_tab))
            q_first = int(rng.integers(0, n_q))
            fastscan.fs_block_accumulate_lanes(blocks, b, lv * pairs, pairs, qluts, t, q_first, out)
            fastscan._scalar_accumulate_lanes(blocks, b, lv * pairs, pairs, qluts, t, q_first, out_scalar)
            n_lanes = min(lanes, n_q - q_first)
            fastscan.fs_block_accumulate_group(blocks, b, lv * pairs, pairs, qluts, t, q_first, n_lanes, out_group)
            sl = codes[b * BLOCK : (b + 1) * BLOCK, lv * 2 * pairs : (lv + 1) * 2 * pairs]
            for lane in range(lanes):
                qi = q_first + lane if q_first + lane < n_q else q_first
                ref = fastscan_accumulate_ref(sl, qluts[qi, t])
                np.testing.assert_array_equal(out[lane], ref)
                np.testing.assert_array_equal(out_scalar[lane], ref)
                if lane < n_lanes:
                    np.testing.assert_array_equal(out_group[lane], ref)


_F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@SETTINGS
@given(base=_F32, step=st.one_of(_F32, st.floats(2.0**-20, 2.0**-7, width=32)), floor=_F32,
       near=st.integers(-3, 65540))
@example(base=0.0, step=np.inf, floor=0.0, near=0)
@example(base=-np.inf, step=1.0, floor=-np.inf, near=-1)
@example(base=-np.inf, step=5.192455314859856e+33, floor=-np.inf, near=0)  # a top score overflowing to NaN
def test_acc_floor_is_the_least_sum_that_reaches_the_heap(base, step, floor, near):
    # fs_scan_multi tests only rows whose sum is at least _acc_floor: every sum below it
    # must score below the floor (by the float32 formula of fs_scan), and for a positive
    # finite step it is the least sum that reaches the floor. `near` puts the floor on a
    # reachable score; base 0, step inf, floor 0 (inf * 0 = NaN) failed once.
    sums = np.arange(65536, dtype=np.float32)
    b, a = np.float32(base), np.float32(step)
    with np.errstate(all="ignore"):
        if 0 <= near <= 65535 and np.isfinite(b) and np.isfinite(a):
            floor = float(b + a * np.float32(near))
        scores = b + a * sums
    got = int(fastscan._acc_floor(b, a, np.float32(floor)))
    # what the scan relies on, always: no sum below it reaches the floor
    assert not (scores[:got] >= np.float32(floor)).any()
    if not 0 < a < np.inf:  # not monotone (inf * 0 is NaN): every row is tested
        assert got == 0
        return
    reach = np.flatnonzero(scores >= np.float32(floor))
    assert got == (int(reach[0]) if reach.size else 65535)


@SETTINGS
@given(nq=st.integers(0, 40), n_probe=st.integers(0, 3), distinct=st.integers(1, 4), group=st.integers(1, 9),
       seed=st.integers(0, 2**32 - 1))
def test_query_groups_partition_queries_by_probe_rows(nq, n_probe, distinct, group, seed):
    rng = np.random.default_rng(seed)
    pool = rng.integers(-1, 3, size=(distinct, n_probe))
    probes = pool[rng.integers(0, distinct, size=nq)].astype(np.int64)
    order, offsets = fastscan.fs_query_groups(probes, group)
    assert order.dtype == np.int64 and offsets.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order), np.arange(nq))
    assert offsets[0] == 0 and offsets[-1] == nq
    assert np.all(np.diff(offsets) >= 1)  # no empty group
    for a, e in itertools.pairwise(offsets):
        assert e - a <= group
        assert (probes[order[a:e]] == probes[order[a]]).all()
    # as few groups as the runs allow: each run of equal rows splits into ceil(run / group)
    counts = np.unique(probes, axis=0, return_counts=True)[1] if nq else []
    assert len(offsets) - 1 == sum(-(-int(c) // group) for c in counts)
    if nq and (probes == probes[0]).all():
        np.testing.assert_array_equal(order, np.arange(nq))  # no permutation without IVF


@MULTI_SETTINGS
@given(nq=st.integers(1, 19), n=ROW_COUNTS, m=st.sampled_from([1, 3, 8, 13]), nlist=st.integers(1, 3),
       n_probe=st.integers(1, 3), per_probe=st.booleans(), k=st.one_of(st.integers(1, 4), st.integers(1, 130)),
       group=st.sampled_from([1, 2, 3, fastscan.LANES - 1, fastscan.LANES, fastscan.LANES + 3]),
       seed=st.integers(0, 2**32 - 1))
def test_scan_multi_equals_single(nq, n, m, nlist, n_probe, per_probe, k, group, seed):
    rng = np.random.default_rng(seed)
    luts, codes, ids, offsets, _, bias = _scan_inputs(rng, nq, n, m, nlist, n_probe, per_probe)
    probes = _shared_probes(rng, nq, nlist, n_probe)
    qluts, steps, biases = fastscan.fs_quantize_lut(luts)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, ids, offsets)
    order, group_offsets = fastscan.fs_query_groups(probes, group)
    ql, sp, bi, pr, pb = (np.ascontiguousarray(a[order]) for a in (qluts, steps, biases, probes, bias))
    _readonly(ql, sp, bi, pr, pb, blocks, block_ids, block_offsets, group_offsets)
    ref_s, ref_i = fastscan.fs_scan_batch(ql, sp, bi, blocks, block_ids, block_offsets, pr, pb, k, no_floors(ql))
    got_s, got_i = fastscan.fs_scan_multi_batch(ql, sp, bi, blocks, block_ids, block_offsets, pr, pb,
                                                group_offsets, k, no_floors(ql))
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_s, ref_s)
    a, e = int(group_offsets[0]), int(group_offsets[1])  # the serial twin on one group
    s, i = fastscan.fs_scan_multi(ql[a:e], sp[a:e], bi[a:e], blocks, block_ids, block_offsets, pr[a], pb[a:e], k,
                                  no_floors(ql[a:e]))
    np.testing.assert_array_equal(i, ref_i[a:e])
    np.testing.assert_array_equal(s, ref_s[a:e])


@MULTI_SETTINGS
@given(nq=st.integers(1, 19), n=ROW_COUNTS, dim=st.sampled_from([1, 7, 16, 33]), levels=st.integers(1, 3),
       nlist=st.integers(1, 3), n_probe=st.integers(1, 3), per_probe=st.booleans(), is_l2=st.booleans(),
       k=st.one_of(st.integers(1, 4), st.integers(1, 130)),
       group=st.sampled_from([1, 3, fastscan.LANES, fastscan.LANES + 3]),
       seed=st.integers(0, 2**32 - 1))
def test_scan_factors_multi_equal_single(nq, n, dim, levels, nlist, n_probe, per_probe, is_l2, k, group, seed):
    rng = np.random.default_rng(seed)
    (qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, probes, bias,
     q_sq) = _rb_inputs(rng, nq, n, dim, levels, nlist, n_probe, per_probe)
    order, group_offsets = fastscan.fs_query_groups(probes, group)
    ql, sp, bi, pr, pb, qs = (np.ascontiguousarray(a[order]) for a in (qluts, steps, biases, probes, bias, q_sq))
    _readonly(ql, sp, bi, pr, pb, qs, blocks, block_ids, row_factors, block_offsets, group_offsets)
    common = (levels, blocks, block_ids, row_factors)
    ref_s, ref_i = fastscan.fs_scan_factors_batch(ql, sp, bi, *common, block_offsets, pr, pb, qs, is_l2, k,
                                                  no_floors(ql))
    runs = [fastscan.fs_scan_factors_multi_batch(ql, sp, bi, *common, block_offsets, pr, pb, qs, is_l2,
                                                 group_offsets, k, no_floors(ql))]
    a, e = int(group_offsets[0]), int(group_offsets[1])
    s, i = fastscan.fs_scan_factors_multi(ql[a:e], sp[a:e], bi[a:e], *common, block_offsets, pr[a], pb[a:e],
                                          qs[a:e], is_l2, k, no_floors(ql[a:e]))
    runs.append((np.concatenate([s, ref_s[e:]]), np.concatenate([i, ref_i[e:]])))
    for got_s, got_i in runs:
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_array_equal(got_s, ref_s)


def _rb_scan_numpy(qluts, steps, biases, levels, blocks, block_ids, row_factors, block_offsets, probes, probe_bias,
                   probe_q_sq, is_l2, k):
    """`fs_scan_factors` in plain numpy: every real row's score in the kernel's float32
    operations (comb = sum_l 2**-l float32(acc_l); ip: pbias + g * (base + step * comb); l2:
    -((q_sq - 2 est) + |r|^2) in float32), then the best k by (score desc, id asc),
    padded with (-inf, -1); a NaN or -inf score never enters. A 1-D uint16 row_factors is the
    scaled mode (g alone, float16 bits): 0 + g * ((bias + pbias) + step * comb); a 1-D
    float32 one holds |r|^2 alone, g = 1."""
    scaled = row_factors.ndim == 1 and row_factors.dtype == np.uint16
    terms_alone = row_factors.ndim == 1 and not scaled
    level_pairs = blocks.shape[1] // levels
    level_sum, w = np.float32(0.0), np.float32(1.0)
    for _ in range(levels):
        level_sum, w = np.float32(level_sum + w), np.float32(w * np.float32(0.5))
    lut_ix = np.arange(blocks.shape[1]) % level_pairs  # every level reads level 0's tables
    found_s, found_i = [], []
    for p, lst in enumerate(probes.tolist()):
        if lst < 0:
            continue
        t = p if qluts.shape[0] > 1 else 0
        tab = qluts[t].astype(np.uint16)
        base = np.float32(biases[t] * level_sum)
        pbias = probe_bias[p]
        if scaled:
            base, pbias = np.float32(base + pbias), np.float32(0.0)
        for b in range(block_offsets[lst], block_offsets[lst + 1]):
            c = blocks[b]  # (pairs, 32)
            sums = tab[2 * lut_ix[:, None], c & 15] + tab[2 * lut_ix[:, None] + 1, c >> 4]  # (pairs, 32) uint16
            comb, w = np.zeros(BLOCK, np.float32), np.float32(1.0)
            for lv in range(levels):
                acc = sums[lv * level_pairs:(lv + 1) * level_pairs].sum(axis=0, dtype=np.uint16)  # wraps as uint16
                comb = (comb + w * acc.astype(np.float32)).astype(np.float32)
                w = np.float32(w * np.float32(0.5))
            rows = slice(b * BLOCK, (b + 1) * BLOCK)
            if scaled:
                g, r_sq = row_factors[rows].view(np.float16).astype(np.float32), np.zeros(BLOCK, np.float32)
            elif terms_alone:
                g, r_sq = np.ones(BLOCK, np.float32), row_factors[rows]
            else:
                g, r_sq = row_factors[rows, 0], row_factors[rows, 1]
            with np.errstate(invalid="ignore", over="ignore"):  # inf factors give NaN, as in the kernel
                est = (g * (base + steps[t] * comb)).astype(np.float32)
                if is_l2:
                    score = -((probe_q_sq[p] - np.float32(2.0) * est) + r_sq)
                else:
                    score = pbias + est
            score = score.astype(np.float32)
            real = (block_ids[rows] >= 0) & (score > -np.inf)  # NaN fails the comparison too
            found_s.append(score[real])
            found_i.append(block_ids[rows][real])
    s = np.concatenate(found_s) if found_s else np.zeros(0, np.float32)
    i = np.concatenate(found_i) if found_i else np.zeros(0, np.int64)
    order = np.lexsort((i, -s.astype(np.float64)))[:k]
    out_s = np.full(k, -np.inf, np.float32)
    out_i = np.full(k, -1, np.int64)
    out_s[:len(order)], out_i[:len(order)] = s[order], i[order]
    return out_s, out_i


@MULTI_SETTINGS
@given(n=ROW_COUNTS, dim=st.sampled_from([1, 7, 16, 33, 64]), levels=st.integers(1, 4), nlist=st.integers(1, 4),
       n_probe=st.integers(1, 4), per_probe=st.booleans(), is_l2=st.booleans(),
       k=st.one_of(st.integers(1, 4), st.integers(1, 130)), special=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_scan_factors_single_equals_numpy(n, dim, levels, nlist, n_probe, per_probe, is_l2, k, special, seed):
    # The one-query kernel (its block work in one-lane vector IR) against plain numpy: the
    # same scores bit for bit, the same ids and order (ties by id; duplicate rows; g of both
    # signs and zero; NaN and infinite factors when special).
    rng = np.random.default_rng(seed)
    (qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, probes, bias,
     q_sq) = _rb_inputs(rng, 1, n, dim, levels, nlist, n_probe, per_probe)
    if special and row_factors.shape[0]:
        pick = rng.integers(0, row_factors.shape[0], size=3)
        row_factors[pick[0], 0] = np.nan
        row_factors[pick[1], 0] = np.inf
        row_factors[pick[2], 1] = np.inf
    ref_s, ref_i = _rb_scan_numpy(qluts[0], steps[0], biases[0], levels, blocks, block_ids, row_factors,
                                  block_offsets, probes[0], bias[0], q_sq[0], is_l2, k)
    _readonly(blocks, block_ids, row_factors, block_offsets)
    got_s, got_i = fastscan.fs_scan_factors(qluts[0], steps[0], biases[0], levels, blocks, block_ids, row_factors,
                                            block_offsets, probes[0], bias[0], q_sq[0], is_l2, k, -np.inf)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_s, ref_s)


def test_scan_with_a_negative_step_is_exact():
    # A block's largest sum bounds its scores only for step >= 0: every row is scored, so a
    # negative step (which fs_quantize_lut never makes) still gives the exact top-k
    # (a review's case: the block-maximum test once skipped list 1's better rows).
    codes = np.zeros((64, 2), np.uint8)
    codes[:32, 0] = 5
    codes[32:, 0] = np.arange(32) % 16
    ids = np.arange(64, dtype=np.int64)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, ids, np.array([0, 32, 64], np.int64))
    qluts = np.zeros((1, 2, 32), np.uint8)
    qluts[0, 0, :16] = qluts[0, 0, 16:] = np.arange(16)
    s, i = fastscan.fs_scan(qluts, np.float32([-1.0]), np.float32([0.0]), blocks, block_ids, block_offsets,
                            np.array([0, 1], np.int64), np.zeros(2, np.float32), 3, -np.inf)
    np.testing.assert_array_equal(s, [0.0, 0.0, -1.0])
    np.testing.assert_array_equal(i, [32, 48, 33])


def test_scans_refuse_tables_that_do_not_cover_the_blocks():
    # tables for 2 sub-quantizers against blocks of 16: the shuffles read the bytes past the
    # tables (no error; a top score of 14.4 where these tables allow at most 3.2); factor
    # scans also need one (g, |r|^2) entry for each block row
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (64, 16)).astype(np.uint8)
    blocks, bids, boffs = fastscan.fs_layout(codes, np.arange(64, dtype=np.int64), np.array([0, 64], np.int64))
    ql, st_, bi = fastscan.fs_quantize_lut(rng.standard_normal((1, 1, 2, 16)).astype(np.float32))
    probes, pbias = np.zeros(1, np.int64), np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="covering every pair"):
        fastscan.fs_scan(ql[0], st_[0], bi[0], blocks, bids, boffs, probes, pbias, 5, -np.inf)
    with pytest.raises(ValueError, match="covering every pair"):
        fastscan.fs_scan_multi(ql, st_, bi, blocks, bids, boffs, probes, pbias[None], 5, no_floors(ql))
    (qluts, steps, biases, rb_blocks, block_ids, row_factors, block_offsets, rb_probes, bias,
     q_sq) = _rb_inputs(rng, 1, 40, 16, 2, 1, 1, False)
    args = (steps[0], biases[0], 2, rb_blocks, block_ids)
    tail = (block_offsets, rb_probes[0], bias[0], q_sq[0], False, 5, -np.inf)
    fastscan.fs_scan_factors(qluts[0], *args, row_factors, *tail)  # as made: accepted
    with pytest.raises(ValueError, match="covering every pair"):
        fastscan.fs_scan_factors(np.ascontiguousarray(qluts[0][:, :1]), *args, row_factors, *tail)
    with pytest.raises(ValueError, match="each of the blocks' rows"):
        fastscan.fs_scan_factors(qluts[0], *args, np.ascontiguousarray(row_factors[:32]), *tail)

def test_one_query_scans_refuse_float64_terms():
    # the one-lane kernels hold their per-probe terms (and the factor scans probe_q_sq) as
    # float32: float64 ones are refused, not rounded or misread. Each term through the shared
    # checks (small kernels), and each scan kernel once through them (a float64 signature of a
    # scan kernel is a compile of its own: 16 of them took 24 s of the suite)
    rng = np.random.default_rng(4)
    (qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, probes, bias,
     q_sq) = _rb_inputs(rng, 1, 40, 16, 2, 1, 1, False)
    args = dict(steps=steps[0], biases=biases[0], bias=bias[0], q_sq=q_sq[0])
    fastscan._check_factor_terms(qluts[0], 2, args["steps"], args["biases"], args["bias"], args["q_sq"], row_factors,
                                 blocks)
    for name in args:
        wide = {**args, name: args[name].astype(np.float64)}
        with pytest.raises(ValueError, match="float32"):
            fastscan._check_factor_terms(qluts[0], 2, wide["steps"], wide["biases"], wide["bias"], wide["q_sq"],
                                         row_factors, blocks)
    wide = {**args, "q_sq": q_sq[0].astype(np.float64)}
    with pytest.raises(ValueError, match="float32"):
        fastscan.fs_scan_factors(qluts[0], wide["steps"], wide["biases"], 2, blocks, block_ids, row_factors,
                                 block_offsets, probes[0], wide["bias"], wide["q_sq"], False, 5, -np.inf)
    with pytest.raises(ValueError, match="float32"):  # the group kernel's lanes too
        fastscan.fs_scan_factors_multi(qluts, wide["steps"][None], wide["biases"][None], 2, blocks, block_ids,
                                       row_factors, block_offsets, probes[0], wide["bias"][None],
                                       wide["q_sq"][None], False, 5, no_floors(qluts))
    codes = rng.integers(0, 16, size=(40, 4)).astype(np.uint8)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, np.arange(40, dtype=np.int64),
                                                          np.array([0, 40], np.int64))
    qluts, pq_steps, pq_biases = fastscan.fs_quantize_lut(rng.standard_normal((1, 1, 4, 16)).astype(np.float32))
    terms = dict(steps=pq_steps[0], biases=pq_biases[0], bias=np.zeros(1, np.float32))
    fastscan._check_terms(qluts[0], 1, terms["steps"], terms["biases"], terms["bias"], blocks)
    for name in terms:
        wide = {**terms, name: terms[name].astype(np.float64)}
        with pytest.raises(ValueError, match="float32"):
            fastscan._check_terms(qluts[0], 1, wide["steps"], wide["biases"], wide["bias"], blocks)
    wide = {**terms, "steps": pq_steps[0].astype(np.float64)}
    with pytest.raises(ValueError, match="float32"):
        fastscan.fs_scan(qluts[0], wide["steps"], wide["biases"], blocks, block_ids, block_offsets,
                         np.zeros(1, np.int64), wide["bias"], 5, -np.inf)
    with pytest.raises(ValueError, match="float32"):
        fastscan.fs_scan_multi(qluts, wide["steps"][None], wide["biases"][None], blocks, block_ids, block_offsets,
                               np.zeros(1, np.int64), wide["bias"][None], 5, no_floors(qluts))


def test_scans_refuse_blocks_that_are_not_c_contiguous():
    # the shuffle kernels address a block's bytes from the array's start (b * n_pairs + p) * 32:
    # a strided view (here every other block of a bigger layout) read other blocks' codes on
    # CPUs with a byte shuffle and was right only on the scalar path (a review found it)
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 16, size=(96, 6)).astype(np.uint8)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, np.arange(96, dtype=np.int64),
                                                          np.array([0, 96], np.int64))
    twice = np.repeat(blocks, 2, axis=0)[::2]
    assert np.array_equal(twice, blocks) and not twice.flags.c_contiguous
    qluts, steps, biases = fastscan.fs_quantize_lut(rng.standard_normal((1, 1, 6, 16)).astype(np.float32))
    out = np.zeros(32, np.uint16)
    fastscan.fs_block_accumulate(blocks, 1, qluts[0, 0], out)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastscan.fs_block_accumulate(twice, 1, qluts[0, 0], out)
    args = (steps[0], biases[0])
    bias = np.zeros(1, np.float32)
    probe = np.zeros(1, np.int64)
    want = fastscan.fs_scan(qluts[0], *args, blocks, block_ids, block_offsets, probe, bias, 5, -np.inf)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastscan.fs_scan(qluts[0], *args, twice, block_ids, block_offsets, probe, bias, 5, -np.inf)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastscan.fs_scan_lists(qluts, steps, biases, twice, block_ids, block_offsets, probe[None], bias[None], 5,
                               no_floors(qluts))
    got = fastscan.fs_scan(qluts[0], *args, np.ascontiguousarray(twice), block_ids, block_offsets, probe, bias, 5,
                           -np.inf)
    np.testing.assert_array_equal(got[1], want[1])


def test_scan_factors_refuses_strided_row_factors():
    # the one-lane row kernel reads 32 rows of (g, |r|^2) as one vector
    rng = np.random.default_rng(3)
    (qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, probes, bias,
     q_sq) = _rb_inputs(rng, 1, 40, 16, 2, 1, 1, False)
    wide = np.zeros((row_factors.shape[0], 3), np.float32)
    wide[:, :2] = row_factors
    with pytest.raises(ValueError, match="C-contiguous float32"):
        fastscan.fs_scan_factors(qluts[0], steps[0], biases[0], 2, blocks, block_ids, wide[:, :2],
                                 block_offsets, probes[0], bias[0], q_sq[0], False, 5, -np.inf)


@pytest.mark.parametrize("is_l2", [False, True])
def test_equal_scores_keep_smaller_ids(is_l2):
    # Every row identical, and later blocks hold smaller ids: once a query's top k is full,
    # every later row ties its k-th score and must still enter by its smaller id. The k
    # smallest ids must come back from the one-query, group and list-major drivers alike.
    n, dim, k = 200, 16, 5
    rng = np.random.default_rng(0)
    bits = np.repeat(rng.integers(0, 256, size=(1, 1, 2)).astype(np.uint8), n, axis=0)
    factors = np.tile(np.array([[0.75, 2.0]], np.float32), (n, 1))
    ids = np.arange(n, dtype=np.int64)[::-1].copy()  # later blocks, smaller ids
    offsets = np.array([0, n], np.int64)
    blocks, block_ids, block_offsets = fastscan.fs_layout(binary.rb_nibbles(bits), ids, offsets)
    rf = fastscan.fs_row_values(factors, block_ids.shape[0], offsets)
    qluts, steps, biases = fastscan.fs_quantize_lut(
        binary.rb_nibble_lut(rng.standard_normal((3, dim)).astype(np.float32), 1)[:, None])
    probes = np.zeros((3, 1), np.int64)
    bias = np.zeros((3, 1), np.float32)
    q_sq = np.full((3, 1), 4.0, np.float32)
    s, i = fastscan.fs_scan_factors_batch(qluts, steps, biases, 1, blocks, block_ids, rf, block_offsets,
                                          probes, bias, q_sq, is_l2, k, no_floors(qluts))
    sm, im = fastscan.fs_scan_factors_multi_batch(qluts, steps, biases, 1, blocks, block_ids, rf,
                                                  block_offsets, probes, bias, q_sq, is_l2, np.array([0, 3]), k,
                                                  no_floors(qluts))
    sl, il = fastscan.fs_scan_factors_lists_batch(qluts, steps, biases, 1, blocks, block_ids, rf,
                                                  block_offsets, probes, bias, q_sq, is_l2, k, no_floors(qluts), 1)
    for got in (i, im, il):
        np.testing.assert_array_equal(got, np.tile(np.arange(k), (3, 1)))
    np.testing.assert_array_equal(s, sm)
    np.testing.assert_array_equal(s, sl)


@MULTI_SETTINGS
@given(n=st.integers(33, 400), dim=st.sampled_from([8, 24, 40]), levels=st.integers(1, 3), is_l2=st.booleans(),
       k=st.integers(1, 6), negative_step=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_scan_factors_multi_equal_single_for_every_sign(n, dim, levels, is_l2, k, negative_step, seed):
    # Scores t = base + step * comb straddling zero (step of either sign) and g of both
    # signs (the engine's tables give step > 0 and mostly negative t; this is harsher): the
    # one-query kernel equals the numpy reference, and the group kernel equals it bit for bit.
    rng = np.random.default_rng(seed)
    (qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, probes, bias,
     q_sq) = _rb_inputs(rng, 3, n, dim, levels, 1, 1, False)
    level_pairs = blocks.shape[1] // levels
    comb = np.zeros(block_ids.shape[0])
    for lv in range(levels):
        codes = np.concatenate([blocks[:, lv * level_pairs + j, :] for j in range(level_pairs)], axis=0)
        nib = np.stack([codes & 15, codes >> 4], axis=-1).reshape(level_pairs, -1, BLOCK, 2)
        acc = sum(qluts[0, 0, 2 * j + h, nib[j, :, :, h]].astype(np.int64) for j in range(level_pairs)
                  for h in range(2))
        comb += 2.0**-lv * acc.reshape(-1)
    level_sum = sum(2.0**-lv for lv in range(levels))
    steps = np.full_like(steps, rng.uniform(0.01, 0.1) * (-1 if negative_step else 1))
    biases = np.full_like(biases, -steps[0, 0] * np.median(comb) / level_sum)
    probes = np.zeros_like(probes)  # one list, shared by the group
    args = (levels, blocks, block_ids, row_factors)
    ref = fastscan.fs_scan_factors_batch(qluts, steps, biases, *args, block_offsets, probes, bias, q_sq,
                                         is_l2, k, no_floors(qluts))
    multi = fastscan.fs_scan_factors_multi_batch(qluts, steps, biases, *args, block_offsets, probes, bias,
                                                 q_sq, is_l2, np.array([0, 3]), k, no_floors(qluts))
    for q in range(qluts.shape[0]):
        want_s, want_i = _rb_scan_numpy(qluts[q], steps[q], biases[q], *args, block_offsets, probes[q], bias[q],
                                        q_sq[q], is_l2, k)
        np.testing.assert_array_equal(ref[1][q], want_i)
        np.testing.assert_array_equal(ref[0][q], want_s)
    np.testing.assert_array_equal(multi[1], ref[1])
    np.testing.assert_array_equal(multi[0], ref[0])


@pytest.mark.parametrize("spec", ["RB1", "RB2", "PQ16x4", "IVF3,RB2", "IVF3,PQ16x4"])
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_code_index_multi_query_search_unchanged(spec, metric, monkeypatch):
    # CodeIndex scans groups of queries with the multi-query drivers (no IVF: every query;
    # IVF: queries probing the same lists, permuted together and back); the results must
    # equal the one-query-at-a-time path exactly, for a batch that is not a whole number of
    # groups, a tail group small enough to take the single-query accumulators, and k > n.
    from vecz.engine.codecs import Codec, CodeIndex

    rng = np.random.default_rng(11)
    dim, n = 48, 301
    centers = rng.standard_normal((6, dim)).astype(np.float32) * 3
    x = centers[rng.integers(0, 6, size=n)] + rng.standard_normal((n, dim)).astype(np.float32)
    x[200:240] = x[0]  # duplicate rows: equal scores, ties by id
    q = centers[rng.integers(0, 6, size=2 * fastscan.LANES + 5)] + rng.standard_normal(
        (2 * fastscan.LANES + 5, dim)).astype(np.float32)
    codec = Codec(spec, dim, metric, seed=1).train(x)
    enc = codec.encode(x)
    for keep_rows in (True, False):
        index = codec.index(enc.codes, enc.lists, keep_rows=keep_rows)
        for k, nprobe, nq in [(1, 1, len(q)), (10, 2, len(q)), (n + 7, 3, fastscan.LANES + 1), (10, 1, 2)]:
            monkeypatch.setattr(CodeIndex, "_MULTI_QUERY", True)
            got = index.search(q[:nq], k, nprobe=nprobe)
            monkeypatch.setattr(CodeIndex, "_MULTI_QUERY", False)
            ref = codec.search(q[:nq], enc.codes, enc.lists, k, nprobe=nprobe)
            np.testing.assert_array_equal(got.ids, ref.ids)
            np.testing.assert_array_equal(got.scores, ref.scores)
            assert got.stats == ref.stats


# --------------------------------------------------------------------------- list-major scans
# fs_scan_lists / fs_scan_factors_lists scan each query's first SEED_PROBES probes on their
# own, then IVF batches list by list, each list once for up to LANES of the queries that
# probe it, every query pushing into its own heap. Also only a speed-up: results must equal
# the single-query kernels' exactly, whatever the visit order.

LIST_SIZES = st.lists(st.sampled_from([0, 1, 31, 32, 33, 100]), min_size=1, max_size=6)
LIST_SETTINGS = settings(max_examples=30, deadline=None, database=None)


def _own_probes(rng, nq, nlist, n_probe):
    """Each query its own probes (random_probes: distinct lists, some -1), and a few queries
    with a list probed twice (the kernels accept it: both passes push the same rows)."""
    probes = random_probes(rng, nq, nlist, n_probe)
    if n_probe > 1:
        twice = rng.random(nq) < 0.2
        probes[twice, 1] = probes[twice, 0]
    return np.ascontiguousarray(probes)


@SETTINGS
@given(n_blocks=st.integers(1, 3), n_q=st.integers(1, 12), n_tab=st.integers(1, 3), pairs=st.integers(1, 9),
       n_lanes=st.integers(1, fastscan.LANES), spread=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_block_accumulate_gather_matches_reference(n_blocks, n_q, n_tab, pairs, n_lanes, spread, seed):
    # Lane i accumulates with tables qluts[lane_q[i], lane_t[i]] (any queries, any tables),
    # on the shuffle and the scalar path, and the chunk helper agrees on its n_lanes lanes;
    # spread as in test_block_accumulate_lanes_matches_reference.
    rng = np.random.default_rng(seed)
    lanes = fastscan.LANES
    codes = rng.integers(0, 16, size=(n_blocks * BLOCK, 2 * pairs)).astype(np.uint8)
    blocks, _, _ = fs_layout_ref(codes, np.arange(n_blocks * BLOCK), np.array([0, n_blocks * BLOCK]))
    qluts = np.stack([np.stack([_qluts(rng, 2 * pairs, 255) for _ in range(n_tab)]) for _ in range(n_q)])
    if spread:
        qluts = _spread(rng, qluts)
    _readonly(blocks, qluts)
    outs = [np.empty((lanes, BLOCK), dtype=np.uint16) for _ in range(3)]
    for b in range(n_blocks):
        lane_q = rng.integers(0, n_q, size=lanes).astype(np.int64)
        lane_t = rng.integers(0, n_tab, size=lanes).astype(np.int64)
        fastscan.fs_block_accumulate_gather(blocks, b, 0, pairs, qluts, lane_q, lane_t, outs[0])
        fastscan._scalar_accumulate_gather(blocks, b, 0, pairs, qluts, lane_q, lane_t, outs[1])
        fastscan._accumulate_chunk(blocks, b, 0, pairs, qluts, lane_q, lane_t, n_lanes, outs[2])
        for lane in range(lanes):
            ref = fastscan_accumulate_ref(codes[b * BLOCK : (b + 1) * BLOCK], qluts[lane_q[lane], lane_t[lane]])
            np.testing.assert_array_equal(outs[0][lane], ref)
            np.testing.assert_array_equal(outs[1][lane], ref)
            if lane < n_lanes:
                np.testing.assert_array_equal(outs[2][lane], ref)


@SETTINGS
@given(nq=st.integers(0, 12), nlist=st.integers(1, 5), n_probe=st.integers(0, 4), first=st.integers(0, 5),
       seed=st.integers(0, 2**32 - 1))
def test_invert_probes_lists_every_probe_once(nq, nlist, n_probe, first, seed):
    rng = np.random.default_rng(seed)
    probes = _own_probes(rng, nq, nlist, n_probe)
    offsets, queries, probe_index = fastscan.fs_invert_probes(probes, nlist, first)
    assert offsets.shape == (nlist + 1,) and offsets[0] == 0
    pairs = {(int(q), int(p)) for q, p in zip(queries, probe_index)}
    # every probe from `first` on (the list-major scans seed their heaps with the ones before)
    assert len(pairs) == len(queries) == int((probes[:, first:] >= 0).sum())
    assert (probe_index >= first).all()
    for lst in range(nlist):
        sl = slice(offsets[lst], offsets[lst + 1])
        assert (probes[queries[sl], probe_index[sl]] == lst).all()
        assert (np.diff(queries[sl]) >= 0).all()  # query order within a list


@LIST_SETTINGS
@given(nq=st.integers(1, 21), sizes=LIST_SIZES, m=st.sampled_from([1, 3, 8, 13]), n_probe=st.integers(1, 5),
       per_probe=st.booleans(), k=st.one_of(st.integers(1, 4), st.integers(1, 400)), n_parts=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_scan_lists_equals_single(nq, sizes, m, n_probe, per_probe, k, n_parts, seed):
    rng = np.random.default_rng(seed)
    luts, codes, ids, offsets, _, bias = _scan_inputs(rng, nq, 0, m, 0, n_probe, per_probe, sizes=sizes)
    probes = _own_probes(rng, nq, len(sizes), n_probe)
    qluts, steps, biases = fastscan.fs_quantize_lut(luts)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, ids, offsets)
    _readonly(qluts, steps, biases, probes, bias, blocks, block_ids, block_offsets)
    args = (qluts, steps, biases, blocks, block_ids, block_offsets, probes, bias, k)
    floors = no_floors(args[0])
    ref_s, ref_i = fastscan.fs_scan_batch(*args, floors)
    for got_s, got_i in (fastscan.fs_scan_lists_batch(*args, floors, n_parts), fastscan.fs_scan_lists(*args, floors)):
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_array_equal(got_s, ref_s)


def test_quantize_into_refuses_bad_minima():
    # minima the row intrinsics would store 16 at a time past a strided view: refused
    lut = np.zeros((16, 16), dtype=np.float32)
    out = np.zeros((16, 32), dtype=np.uint8)
    steps, biases = np.zeros(1, np.float32), np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="mins"):
        fastscan.fs_quantize_into(lut, 255, out, np.zeros(32, np.float32)[::2], steps, biases, 0)
    with pytest.raises(ValueError, match="mins"):
        fastscan.fs_quantize_into(lut, 255, out, np.zeros(8, np.float32), steps, biases, 0)


@LIST_SETTINGS
@given(nq=st.integers(1, 21), sizes=LIST_SIZES, dim=st.sampled_from([1, 7, 16, 33]), levels=st.integers(1, 3),
       n_probe=st.integers(1, 5), per_probe=st.booleans(), is_l2=st.booleans(),
       k=st.one_of(st.integers(1, 4), st.integers(1, 400)), n_parts=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_scan_factors_lists_equal_single(nq, sizes, dim, levels, n_probe, per_probe, is_l2, k, n_parts, seed):
    rng = np.random.default_rng(seed)
    (qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, _, bias,
     q_sq) = _rb_inputs(rng, nq, 0, dim, levels, 0, n_probe, per_probe, sizes=sizes)
    probes = _own_probes(rng, nq, len(sizes), n_probe)
    _readonly(qluts, steps, biases, blocks, block_ids, row_factors, block_offsets, probes, bias, q_sq)
    common = (qluts, steps, biases, levels, blocks, block_ids, row_factors)
    tail = (block_offsets, probes, bias, q_sq, is_l2, k)
    floors = no_floors(common[0])
    ref_s, ref_i = fastscan.fs_scan_factors_batch(*common, *tail, floors)
    runs = [fastscan.fs_scan_factors_lists_batch(*common, *tail, floors, n_parts),
            fastscan.fs_scan_factors_lists(*common, *tail, floors)]
    for got_s, got_i in runs:
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_array_equal(got_s, ref_s)


@LIST_SETTINGS
@given(nq=st.integers(1, 21), sizes=LIST_SIZES, dim=st.sampled_from([1, 7, 16, 33]), n_probe=st.integers(1, 4),
       per_probe=st.booleans(), k=st.one_of(st.integers(1, 4), st.integers(1, 300)),
       group=st.sampled_from([1, 3, fastscan.LANES + 3]), n_parts=st.integers(1, 3), special=st.booleans(),
       terms=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_scan_factors_one_factor_modes_equal_numpy(nq, sizes, dim, n_probe, per_probe, k, group, n_parts, special,
                                                   terms, seed):
    # A 1-D row_factors, one value a block row. Scaled mode, PQ x4 under cosine
    # (engine/quantizers.py): g = 1 / |x_hat| alone, float16 bits, scaling the whole score g
    # * ((bias + pbias) + step * acc). Terms mode (`terms`), PQ x4 under l2 on residuals: the
    # row's own-list term t alone, float32, g = 1, the score -((q_sq - 2 est) + t). The
    # one-query kernel, the multi-query one (groups of queries with the same probes) and the
    # list-major one all equal plain numpy bit for bit: ties by id (duplicate values),
    # values of 0, negative probe biases, and inf/NaN values when special.
    rng = np.random.default_rng(seed)
    (qluts, steps, biases, blocks, block_ids, _, block_offsets, _, bias,
     q_sq) = _rb_inputs(rng, nq, 0, dim, 1, 0, n_probe, per_probe, sizes=sizes)
    probes = _shared_probes(rng, nq, len(sizes), n_probe)
    n_rows = block_ids.shape[0]
    g = rng.uniform(0.5, 2.0, n_rows).astype(np.float32 if terms else np.float16)
    g[rng.random(n_rows) < 0.1] = 0.0
    if n_rows:
        g[rng.random(n_rows) < 0.3] = g[0]
        if special:
            g[rng.integers(0, n_rows, size=2)] = [np.inf, np.nan]
    g = g if terms else g.view(np.uint16)
    if not terms:
        q_sq = np.zeros(bias.shape, np.float32)
    floors = no_floors(qluts)
    ref = [_rb_scan_numpy(qluts[q], steps[q], biases[q], 1, blocks, block_ids, g, block_offsets, probes[q], bias[q],
                          q_sq[q], terms, k) for q in range(nq)]
    ref_s, ref_i = np.stack([r[0] for r in ref]), np.stack([r[1] for r in ref])
    common = (qluts, steps, biases, 1, blocks, block_ids, g)
    runs = [fastscan.fs_scan_factors_batch(*common, block_offsets, probes, bias, q_sq, terms, k, floors),
            fastscan.fs_scan_factors_lists_batch(*common, block_offsets, probes, bias, q_sq, terms, k, floors,
                                                 n_parts)]
    order, group_offsets = fastscan.fs_query_groups(probes, group)
    ql, sp, bi, pr, pb, qs = (np.ascontiguousarray(a[order]) for a in (qluts, steps, biases, probes, bias, q_sq))
    s, i = fastscan.fs_scan_factors_multi_batch(ql, sp, bi, 1, blocks, block_ids, g, block_offsets, pr, pb,
                                                qs, terms, group_offsets, k, floors)
    out_s, out_i = np.empty_like(s), np.empty_like(i)
    out_s[order], out_i[order] = s, i
    runs.append((out_s, out_i))
    for got_s, got_i in runs:
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_array_equal(got_s, ref_s)


def test_scaled_mode_refuses_strided_or_wide_factors():
    # the row kernel reads 32 float16 g (uint16 bits) as one vector: a strided or wider 1-D row_factors
    # is refused by the check every factor scan runs first (called here on its own: inside
    # the batch kernels' parallel loop the error surfaces as SystemError)
    q_sq = np.zeros(1, np.float32)
    g = np.ones(128, np.float16).view(np.uint16)
    fastscan._check_factor_rows(q_sq, g[:64])
    for bad in (g[::2], g[:64].view(np.float16).astype(np.float64)):
        with pytest.raises(ValueError, match="float16"):
            fastscan._check_factor_rows(q_sq, bad)
    # float32 is the terms mode (|r|^2 alone, 32 read as one vector): contiguous only
    terms = np.ones(128, np.float32)
    fastscan._check_factor_rows(q_sq, terms[:64])
    with pytest.raises(ValueError, match="contiguous"):
        fastscan._check_factor_rows(q_sq, terms[::2])


@SETTINGS
@given(nq=st.integers(0, 4), n_tab=st.integers(1, 3), m=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), coarse=st.booleans())
def test_quantize_lut_equals_numpy_expression(nq, n_tab, m, seed, scale, coarse):
    # fs_quantize_lut runs in one compiled pass; it must give the numpy formula's bytes.
    rng = np.random.default_rng(seed)
    luts = (rng.standard_normal((nq, n_tab, m, 16)) * scale).astype(np.float32)
    if coarse:
        luts = np.rint(luts).astype(np.float32)  # ties at .5 steps, constant tables
    n_pairs = (m + 1) // 2
    qmax = min(255, 65535 // max(2 * n_pairs, 1))
    mins = luts.min(axis=3)
    span = (luts.max(axis=3) - mins).max(axis=2)
    step = np.where(span > 0, span / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint((luts - mins[..., None]) / step[..., None, None]), 0, qmax).astype(np.uint8)
    ref = np.zeros((nq, n_tab, 2 * n_pairs, 32), dtype=np.uint8)
    ref[:, :, :m, :16] = q
    ref[:, :, :m, 16:] = q
    got = fastscan.fs_quantize_lut(luts)
    np.testing.assert_array_equal(got[0], ref)
    np.testing.assert_array_equal(got[1], step)
    np.testing.assert_array_equal(got[2], mins.sum(axis=2, dtype=np.float64).astype(np.float32))


@pytest.mark.parametrize("spec", ["IVF3,RB1", "IVF5,RB2", "IVF4,PQ16x4"])
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_code_index_list_major_search_unchanged(spec, metric, monkeypatch):
    # IVF batches of at least LIST_MIN_QUERIES queries scan list-major; the results must
    # equal the one-query-at-a-time path exactly (per-probe tables under l2, k > n, a batch
    # that is not a whole number of lane groups, duplicate rows).
    from vecz.engine.codecs import Codec, CodeIndex

    rng = np.random.default_rng(5)
    dim, n, nq = 40, 260, 2 * fastscan.LANES + 5
    centers = rng.standard_normal((6, dim)).astype(np.float32) * 3
    x = centers[rng.integers(0, 6, size=n)] + rng.standard_normal((n, dim)).astype(np.float32)
    x[100:130] = x[0]  # duplicate rows: equal scores, ties by id
    q = centers[rng.integers(0, 6, size=nq)] + rng.standard_normal((nq, dim)).astype(np.float32)
    codec = Codec(spec, dim, metric, seed=1).train(x)
    enc = codec.encode(x)
    index = codec.index(enc.codes, enc.lists)
    monkeypatch.setattr(CodeIndex, "LIST_MIN_QUERIES", 1)
    monkeypatch.setattr(CodeIndex, "LIST_MIN_QUERIES_PQ", 1)
    for k, nprobe in [(1, 1), (10, 2), (n + 7, 3), (20, 99)]:
        monkeypatch.setattr(CodeIndex, "_MULTI_QUERY", True)
        got = index.search(q, k, nprobe=nprobe)
        monkeypatch.setattr(CodeIndex, "_MULTI_QUERY", False)
        ref = index.search(q, k, nprobe=nprobe)
        np.testing.assert_array_equal(got.ids, ref.ids)
        np.testing.assert_array_equal(got.scores, ref.scores)
        assert got.stats == ref.stats


@SETTINGS
@given(n=st.integers(0, 150), m=st.integers(1, 9), nlist=st.integers(1, 6), n_values=st.integers(0, 2),
       extra=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_packed_layout_equals_the_unpacked_one(n, m, nlist, n_values, extra, seed):
    # fs_layout_packed (one parallel pass from packed codes in input order, used by the
    # store) must equal the reference layout of the unpacked codes in list order, and
    # fs_row_values of the values; `extra` trailing code bytes (RB factors) are ignored.
    rng = np.random.default_rng(seed)
    sub = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    packed = np.concatenate([pq.pq4_pack(sub), rng.integers(0, 256, size=(n, extra)).astype(np.uint8)], axis=1)
    lists = rng.integers(0, nlist, size=n)
    order = np.argsort(lists, kind="stable")
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(lists, minlength=nlist), out=offsets[1:])
    ids = rng.permutation(3 * n + 1)[:n].astype(np.int64)
    values = rng.normal(size=(n, n_values)).astype(np.float32)
    blocks, block_ids, block_offsets, block_values = fastscan.fs_layout_packed(
        packed, (m + 1) // 2, order, ids[order], offsets, values if n_values else None)
    ref_blocks, ref_ids, ref_offsets = fs_layout_ref(sub[order], ids[order], offsets)
    np.testing.assert_array_equal(blocks, ref_blocks)
    np.testing.assert_array_equal(block_ids, ref_ids)
    np.testing.assert_array_equal(block_offsets, ref_offsets)
    np.testing.assert_array_equal(block_values, fastscan.fs_row_values(values[order], block_ids.shape[0], offsets))
    assert block_values.shape == (block_ids.shape[0], n_values)


def test_layouts_refuse_ids_the_reservoirs_cannot_key():
    # the scans key ids up to topk.RES_MAX_ID; a batch driver could not pass on an error
    # raised inside its prange, so the layouts refuse larger ids up front
    from vecz.kernels.topk import RES_MAX_ID
    codes = np.zeros((40, 4), dtype=np.uint8)
    ok = np.arange(40, dtype=np.int64) + RES_MAX_ID - 39
    fastscan.fs_layout(codes, ok, np.array([0, 40]))
    fastscan.fs_layout_packed(codes[:, :2], 2, np.arange(40), ok, np.array([0, 40]))
    for layout in (lambda ids: fastscan.fs_layout(codes, ids, np.array([0, 40])),
                   lambda ids: fastscan.fs_layout_packed(codes[:, :2], 2, np.arange(40), ids, np.array([0, 40]))):
        with pytest.raises(ValueError, match="RES_MAX_ID"):
            layout(ok + 1)
