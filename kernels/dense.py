"""Uncompressed scans: Flat (float32 rows) and F16 (half-precision rows, as uint16 bits).

Numba has no float16 type, so F16 rows are passed as their uint16 bit patterns and widened
with LLVM's `fpext half -> float` (`f16_to_f32`), which vectorises to VCVTPH2PS.

Scores are larger-is-better (kernels/topk.py): the inner product plus `probe_bias` for ip,
the negated squared distance to `q` for l2 (for residual lists the caller passes q - centre
per probe in `qs` (L, dim), L = 1 or P). Same inverted-list arguments as kernels/pq.py; rows
with id < 0 are never returned.
`dense_rescore(_batch)` re-scores a shortlist exactly (the store's re-ranking): float64
accumulation in eight fixed lanes, so identical rows get bit-identical scores wherever they
sit (ties then fall to the smaller id) and the result does not depend on SIMD width.

Reference: tests/reference/dense.py.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import cgutils, types
from numba.core.errors import TypingError
from numba.typed import List
from numba.extending import intrinsic

from ._jit import jit, jit_batch, jit_fast, target_has
from .topk import bits_f32, topk_finish, topk_init_floor, topk_push, topk_sort

__all__ = [
    "f16_to_f32",
    "dense_scan",
    "dense_scan_batch",
    "dense_rescore",
    "dense_rescore_batch",
    "sole_segment",
    "mapped_rows",
    "rerank_rows",
    "rerank_topk",
    "rerank_topk_batch",
    "rerank_topk64",
    "rerank_topk64_batch",
    "bounded_walk",
    "bounded_walk_batch",
    "bounded_walk_resume",
    "bounded_walk_resume_batch",
    "walk_start",
    "walk_seed",
    "walk_floor",
    "walk_order",
    "walk_read",
    "vector_list",
    "WALK_STATE",
    "RESCORE_IP",
    "RESCORE_COSINE",
    "RESCORE_L2",
]

RESCORE_IP, RESCORE_COSINE, RESCORE_L2 = 0, 1, 2
# A paused walk's state (`bounded_walk_resume`): rows in `top`, rows read (a prefix of the
# order), the end of the round it stopped before, and how far the upper bounds then reached.
WALK_STATE = 4
# bytes of each row asked for ahead of its scoring (`_prefetch_row`). Whole rows cost more
# than they saved (Zen 4, four rows at a time, 2,000 queries x 20-100 random rows of a
# cached map, cosine, ns a row 384-d / 768-d float32: whole rows 300 / 380, none 255 / 324,
# the first 1, 2 or 4 lines 240 / 295, 250 / 305, 235 / 290)
_PREFETCH_BYTES = 256


@intrinsic
def _widen(typingctx, value):
    # float32 rows pass through; uint16 rows are float16 bit patterns; anything else is
    # refused when the kernel compiles (float64 would be rounded here but read as float16
    # bits by the vector loads of `_make_lane_sums`).
    if value == types.float32:
        sig = types.float32(value)

        def codegen(context, builder, signature, args):
            return context.cast(builder, args[0], signature.args[0], types.float32)

        return sig, codegen
    if isinstance(value, types.Integer) and value.bitwidth == 16:
        sig = types.float32(value)
        if not _HAS_F16C:
            # Without F16C, LLVM lowers `fpext half` to a runtime call Numba cannot link
            # (the process aborts): widen by integer arithmetic instead (exact, slower).
            def codegen(context, builder, signature, args):
                return context.compile_internal(builder, _soft_f16_to_f32, signature, args)

            return sig, codegen

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return sig, codegen
    raise TypingError(f"dense kernels: expected float32 values or float16 bits (uint16), found {value}")


_HAS_F16C = target_has("f16c")


def _soft_f16_to_f32(h):
    # IEEE half -> single by bits: normal numbers re-bias the exponent (15 -> 127), subnormal
    # halves are m * 2**-24 (exact in float32), all-ones exponents stay inf/NaN.
    x = np.uint32(h)
    sign = (x & np.uint32(0x8000)) << np.uint32(16)
    exp = (x >> np.uint32(10)) & np.uint32(0x1F)
    mant = x & np.uint32(0x3FF)
    if exp == 0:
        value = np.float32(mant) * np.float32(5.960464477539063e-08)  # 2**-24
        return -value if sign else value
    if exp == 31:
        return bits_f32(sign | np.uint32(0x7F800000) | (mant << np.uint32(13)))
    return bits_f32(sign | ((exp + np.uint32(112)) << np.uint32(23)) | (mant << np.uint32(13)))


@jit
def f16_to_f32(bits):
    """Widen a float16 given as its uint16 bit pattern to float32 (exact)."""
    return _widen(np.uint16(bits))


@jit_fast
def _row_score(q, x, i, is_l2):
    acc = np.float32(0.0)
    if is_l2:
        for d in range(x.shape[1]):
            diff = q[d] - _widen(x[i, d])
            acc += diff * diff
        return -acc
    for d in range(x.shape[1]):
        acc += q[d] * _widen(x[i, d])
    return acc


@jit
def dense_scan(qs, x, ids, list_offsets, probes, probe_bias, is_l2, k, floor):
    """One query: qs (L, dim) float32; x float32 (n, dim) or uint16 (n, dim) holding f16.
    Only rows scoring >= floor (-inf: all; kernels/topk.py) are kept."""
    heap_scores, heap_ids = topk_init_floor(k, floor)
    n_tables = qs.shape[0]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        q = qs[p if n_tables > 1 else 0]
        for i in range(list_offsets[lst], list_offsets[lst + 1]):
            s = _row_score(q, x, i, is_l2)
            if not is_l2:
                s += probe_bias[p]
            s = np.float32(s)
            if (s > heap_scores[0] or (s == heap_scores[0] and ids[i] < heap_ids[0])) and ids[i] >= 0:
                topk_push(heap_scores, heap_ids, s, ids[i])
    topk_finish(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def dense_scan_batch(qs, x, ids, list_offsets, probes, probe_bias, is_l2, k, floors):
    """`dense_scan` for every query: qs (nq, L, dim), probes/probe_bias (nq, P), floors
    (nq,)."""
    nq = qs.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = dense_scan(qs[qi], x, ids, list_offsets, probes[qi], probe_bias[qi], is_l2, k, floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


def _emit_widen_vec(builder, v, dtype):
    """<8 x float32 or uint16 (float16 bits)> -> <8 x double>, exactly as `_widen` then
    float64 per element: with F16C an fpext of half, else the bit arithmetic of
    `_soft_f16_to_f32` on all eight lanes (LLVM would call a runtime routine Numba cannot
    link)."""
    vd = ir.VectorType(ir.DoubleType(), 8)
    if dtype == types.float32:
        return builder.fpext(v, vd)
    if _HAS_F16C:
        return builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 8)), vd)
    i32 = ir.IntType(32)
    vi = ir.VectorType(i32, 8)
    vf = ir.VectorType(ir.FloatType(), 8)

    def const(x):
        return ir.Constant(vi, [x] * 8)

    x = builder.zext(v, vi)
    sign = builder.shl(builder.and_(x, const(0x8000)), const(16))
    exp = builder.and_(builder.lshr(x, const(10)), const(0x1F))
    mant = builder.and_(x, const(0x3FF))
    normal = builder.or_(builder.or_(sign, builder.shl(builder.add(exp, const(112)), const(23))),
                         builder.shl(mant, const(13)))
    special = builder.or_(builder.or_(sign, const(0x7F800000)), builder.shl(mant, const(13)))
    tiny = builder.fmul(builder.uitofp(mant, vf), ir.Constant(vf, [5.960464477539063e-08] * 8))
    tiny = builder.select(builder.icmp_unsigned("!=", sign, const(0)), builder.fneg(tiny), tiny)
    bits = builder.select(builder.icmp_unsigned("==", exp, const(31)), special, normal)
    out = builder.select(builder.icmp_unsigned("==", exp, const(0)), tiny, builder.bitcast(bits, vf))
    return builder.fpext(out, vd)


def _make_lane_sums(diff, norm=False):
    """An intrinsic (a, b, head) -> float64: over j < head (a multiple of 8), eight lanes
    (lane i: j = i, i + 8, ...) each summing a[j] * b[j] (diff: (a[j] - b[j])^2) in float64
    in order, reduced as (((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))): the float64
    operations of the scalar loops below, in one vector register. a, b 1-D with unit stride
    (the caller checks), float32 or float16 bits (uint16). LLVM left the scalar loops
    scalar: 364 ns a 768-d row, cached (measured). norm: (the dot product, and b's with
    itself), each as `_dot_lanes` sums it, in one pass over b (two independent chains).

    b may also be a tuple of G rows (same dtype): each row's sums are the one-row sums, bit
    for bit, returned flat ((s_0, ..., s_G-1), with norm (dot_0, bb_0, dot_1, ...)). One pass
    then widens a once for all rows, runs G or 2G independent chains and has the G rows'
    loads in flight together, which is what counts for rows read from memory (Zen 4, rows
    of a cached map at random, cosine, ns a row 384-d / 768-d: one at a time 300-320 /
    420-435, four at once 255-280 / 320-345; rows in L1/L2, inner product: 111 / 163 against
    80 / 116)."""

    @intrinsic
    def lane_sums(typingctx, a, b, head):
        n_rows = len(b) if isinstance(b, types.BaseTuple) else 1
        row_type = b[0] if isinstance(b, types.BaseTuple) else b
        for arr in (a, row_type):
            if arr.dtype not in (types.float32, types.uint16):
                raise TypingError(f"dense kernels: expected float32 values or float16 bits (uint16), found {arr.dtype}")
        n_out = n_rows * (2 if norm else 1)
        sig = (types.float64 if n_out == 1 else types.UniTuple(types.float64, n_out))(a, b, head)

        def codegen(context, builder, signature, args):
            vd = ir.VectorType(ir.DoubleType(), 8)
            rows = cgutils.unpack_tuple(builder, args[1], n_rows) if isinstance(b, types.BaseTuple) else [args[1]]
            a_arr = context.make_array(signature.args[0])(context, builder, args[0])
            b_arrs = [context.make_array(row_type)(context, builder, r) for r in rows]
            n = context.cast(builder, args[2], signature.args[2], types.int64)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vd, [0.0] * 8)) for _ in range(n_out)]

            def load(arr, dtype, j):
                elem = ir.FloatType() if dtype == types.float32 else ir.IntType(16)
                ptr = builder.bitcast(builder.gep(arr.data, [j]), ir.VectorType(elem, 8).as_pointer())
                return _emit_widen_vec(builder, builder.load(ptr, align=1), dtype)

            def add(ptr, term):
                builder.store(builder.fadd(builder.load(ptr), term), ptr)

            with cgutils.for_range_slice(builder, ir.Constant(ir.IntType(64), 0), n,
                                         ir.Constant(ir.IntType(64), 8), inc=True) as (j, _):
                x = load(a_arr, signature.args[0].dtype, j)
                for g, b_arr in enumerate(b_arrs):
                    y = load(b_arr, row_type.dtype, j)
                    if diff:
                        d = builder.fsub(x, y)
                        term = builder.fmul(d, d)
                    else:
                        term = builder.fmul(x, y)
                    if norm:
                        add(accs[2 * g], term)
                        add(accs[2 * g + 1], builder.fmul(y, y))
                    else:
                        add(accs[g], term)

            def reduce(ptr):
                acc = builder.load(ptr)
                lane = [builder.extract_element(acc, ir.Constant(ir.IntType(32), i)) for i in range(8)]
                return builder.fadd(builder.fadd(builder.fadd(lane[0], lane[1]), builder.fadd(lane[2], lane[3])),
                                    builder.fadd(builder.fadd(lane[4], lane[5]), builder.fadd(lane[6], lane[7])))

            if n_out == 1:
                return reduce(accs[0])
            return context.make_tuple(builder, signature.return_type, [reduce(p) for p in accs])

        return sig, codegen

    return lane_sums


_dot_vec = _make_lane_sums(False)
_dist_vec = _make_lane_sums(True)
_dot_norm_vec = _make_lane_sums(False, norm=True)


@jit
def _dot_lanes(a, b):
    """sum_j a[j] * b[j] in float64, eight fixed lanes (a, b float32 or f16 bits): in vector
    IR (`_dot_vec`) when both have unit stride, else as scalars, the same operations."""
    dim = a.shape[0]
    head = dim - dim % 8
    if a.strides[0] == a.itemsize and b.strides[0] == b.itemsize:
        head_sum = _dot_vec(a, b, head)
    else:
        l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = 0.0
        for j in range(0, head, 8):
            l0 += np.float64(_widen(a[j])) * np.float64(_widen(b[j]))
            l1 += np.float64(_widen(a[j + 1])) * np.float64(_widen(b[j + 1]))
            l2 += np.float64(_widen(a[j + 2])) * np.float64(_widen(b[j + 2]))
            l3 += np.float64(_widen(a[j + 3])) * np.float64(_widen(b[j + 3]))
            l4 += np.float64(_widen(a[j + 4])) * np.float64(_widen(b[j + 4]))
            l5 += np.float64(_widen(a[j + 5])) * np.float64(_widen(b[j + 5]))
            l6 += np.float64(_widen(a[j + 6])) * np.float64(_widen(b[j + 6]))
            l7 += np.float64(_widen(a[j + 7])) * np.float64(_widen(b[j + 7]))
        head_sum = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))
    return head_sum + _dot_tail(a, b, head)


@jit
def _dot_tail(a, b, head):
    # the dims past the eight lanes, summed from 0 in order (added to the lanes' sum)
    tail = 0.0
    for j in range(head, a.shape[0]):
        tail += np.float64(_widen(a[j])) * np.float64(_widen(b[j]))
    return tail


@jit
def _dist_tail(a, b, head):
    tail = 0.0
    for j in range(head, a.shape[0]):
        d = np.float64(a[j]) - np.float64(_widen(b[j]))
        tail += d * d
    return tail


@jit
def _dist_lanes(a, b):
    """sum_j (a[j] - b[j])^2 in float64, eight fixed lanes (b float32 or f16 bits): in
    vector IR (`_dist_vec`) when both have unit stride, else as scalars."""
    dim = a.shape[0]
    head = dim - dim % 8
    if a.strides[0] == a.itemsize and b.strides[0] == b.itemsize:
        head_sum = _dist_vec(a, b, head)
    else:
        l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = 0.0
        for j in range(0, head, 8):
            d0 = np.float64(a[j]) - np.float64(_widen(b[j]))
            d1 = np.float64(a[j + 1]) - np.float64(_widen(b[j + 1]))
            d2 = np.float64(a[j + 2]) - np.float64(_widen(b[j + 2]))
            d3 = np.float64(a[j + 3]) - np.float64(_widen(b[j + 3]))
            d4 = np.float64(a[j + 4]) - np.float64(_widen(b[j + 4]))
            d5 = np.float64(a[j + 5]) - np.float64(_widen(b[j + 5]))
            d6 = np.float64(a[j + 6]) - np.float64(_widen(b[j + 6]))
            d7 = np.float64(a[j + 7]) - np.float64(_widen(b[j + 7]))
            l0 += d0 * d0
            l1 += d1 * d1
            l2 += d2 * d2
            l3 += d3 * d3
            l4 += d4 * d4
            l5 += d5 * d5
            l6 += d6 * d6
            l7 += d7 * d7
        head_sum = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))
    return head_sum + _dist_tail(a, b, head)


@intrinsic
def _prefetch_row(typingctx, vectors, row):
    """Hint the CPU to fetch the start of row `row` of a 2-D C-contiguous array (its first
    _PREFETCH_BYTES): shortlisted rows sit at random places in a large map; the start of
    each next row requested while the current ones are scored sets the hardware prefetcher
    going on the rest of it."""
    sig = types.void(vectors, row)

    def codegen(context, builder, signature, args):
        arr_type = signature.args[0]
        arr = context.make_array(arr_type)(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)]),
            "llvm.prefetch.p0i8")
        stride = builder.extract_value(arr.strides, 0)
        base = builder.ptrtoint(arr.data, i64)
        start = builder.add(base, builder.mul(builder.sext(args[1], i64), stride))
        n_bytes = builder.mul(builder.extract_value(arr.shape, 1),
                              ir.Constant(i64, context.get_abi_sizeof(context.get_data_type(arr_type.dtype))))
        cap = ir.Constant(i64, _PREFETCH_BYTES)
        n_bytes = builder.select(builder.icmp_unsigned("<", n_bytes, cap), n_bytes, cap)
        with cgutils.for_range_slice(builder, ir.Constant(i64, 0), n_bytes, ir.Constant(i64, 64), inc=True) as (off, _):
            addr = builder.inttoptr(builder.add(start, off), i8p)
            builder.call(fn, [addr, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                              ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()

    return sig, codegen


@jit
def _unit(a):
    return a.strides[0] == a.itemsize


@jit
def _row_total(query, v, head, s, vv, metric, q_norm):
    """A row's score from the eight lanes' sums over its first `head` dims (s; vv: <v, v>
    under cosine, else unused): the tail dims added as `_dot_lanes` / `_dist_lanes` add
    them, then the cosine (0 for a zero row) or the sum itself."""
    if metric == RESCORE_L2:
        return s + _dist_tail(query, v, head)
    if metric != RESCORE_COSINE:
        return s + _dot_tail(query, v, head)
    den = q_norm * np.sqrt(vv + _dot_tail(v, v, head))
    dot = s + _dot_tail(query, v, head)
    return dot / den if den > 0 else 0.0


@jit
def _score_row(query, v, metric, q_norm):
    """The exact score of one row in the user's convention (l2: squared distance)."""
    if metric == RESCORE_L2:
        return _dist_lanes(query, v)
    if metric != RESCORE_COSINE:
        return _dot_lanes(query, v)
    if _unit(query) and _unit(v):
        # <q, v> and <v, v> in one pass over the row, each summed as _dot_lanes sums it
        head = v.shape[0] - v.shape[0] % 8
        dot, vv = _dot_norm_vec(query, v, head)
        return _row_total(query, v, head, dot, vv, metric, q_norm)
    # scalar lanes, tails included (no dims left for `_row_total` to add)
    return _row_total(query, v, v.shape[0], _dot_lanes(query, v), _dot_lanes(v, v), metric, q_norm)


@jit
def _score_rows4(query, v4, metric, q_norm):
    """`_score_row` of four rows at once (v4: a tuple of four 1-D rows; query and rows with
    unit stride): the same scores bit for bit, four rows' sums in one pass
    (`_make_lane_sums`)."""
    head = query.shape[0] - query.shape[0] % 8
    if metric == RESCORE_COSINE:
        d = _dot_norm_vec(query, v4, head)
        return (_row_total(query, v4[0], head, d[0], d[1], metric, q_norm),
                _row_total(query, v4[1], head, d[2], d[3], metric, q_norm),
                _row_total(query, v4[2], head, d[4], d[5], metric, q_norm),
                _row_total(query, v4[3], head, d[6], d[7], metric, q_norm))
    d = _dist_vec(query, v4, head) if metric == RESCORE_L2 else _dot_vec(query, v4, head)
    return (_row_total(query, v4[0], head, d[0], 0.0, metric, q_norm),
            _row_total(query, v4[1], head, d[1], 0.0, metric, q_norm),
            _row_total(query, v4[2], head, d[2], 0.0, metric, q_norm),
            _row_total(query, v4[3], head, d[3], 0.0, metric, q_norm))


@jit
def _file_at(first, vectors, file_ix, j):
    # the dense file holding candidate j: `first` (a 2-D array) when file_ix is None, else
    # vectors[file_ix[j]] (a typed List whose item 0 is `first`, read without the List)
    if file_ix is None or file_ix[j] == 0:
        return first
    return vectors[file_ix[j]]


@jit
def _score_order(query, first, vectors, file_ix, rows, order, start, stop, metric, q_norm, out):
    """out[j] = `_score_row` of candidate j = order[p] for p in [start, stop) (rows >= 0),
    four rows at a time (`_score_rows4`) where the four and the query have unit stride,
    asking for the start of the next four rows while these are scored."""
    for p in range(start, min(start + 4, stop)):
        _prefetch_row(_file_at(first, vectors, file_ix, order[p]), rows[order[p]])
    p = start
    while p + 4 <= stop:
        for n in range(p + 4, min(p + 8, stop)):
            _prefetch_row(_file_at(first, vectors, file_ix, order[n]), rows[order[n]])
        j0, j1, j2, j3 = order[p], order[p + 1], order[p + 2], order[p + 3]
        v4 = (_file_at(first, vectors, file_ix, j0)[rows[j0]], _file_at(first, vectors, file_ix, j1)[rows[j1]],
              _file_at(first, vectors, file_ix, j2)[rows[j2]], _file_at(first, vectors, file_ix, j3)[rows[j3]])
        if _unit(query) and _unit(v4[0]) and _unit(v4[1]) and _unit(v4[2]) and _unit(v4[3]):
            out[j0], out[j1], out[j2], out[j3] = _score_rows4(query, v4, metric, q_norm)
        else:
            out[j0] = _score_row(query, v4[0], metric, q_norm)
            out[j1] = _score_row(query, v4[1], metric, q_norm)
            out[j2] = _score_row(query, v4[2], metric, q_norm)
            out[j3] = _score_row(query, v4[3], metric, q_norm)
        p += 4
    while p < stop:
        j = order[p]
        out[j] = _score_row(query, _file_at(first, vectors, file_ix, j)[rows[j]], metric, q_norm)
        p += 1


@jit
def _rescore_one(query, vectors, rows, metric, out):
    q_norm = np.sqrt(_dot_lanes(query, query)) if metric == RESCORE_COSINE else 1.0
    # visit the rows in file order (ascending), whatever order the shortlist has; the -1
    # (not in this file) sort first
    order = np.argsort(rows, kind="mergesort")
    start = 0
    while start < rows.shape[0] and rows[order[start]] < 0:
        start += 1
    _score_order(query, vectors, None, None, rows, order, start, rows.shape[0], metric, q_norm, out)


@jit
def dense_rescore(queries, vectors, rows, metric, out):
    """Exact scores of a shortlist, written into out float64 (nq, R) where rows >= 0.

    queries float32 (nq, dim); vectors (n, dim) float32 or float16 bit patterns (uint16),
    typically a read-only map of a dense file; rows int64 (nq, R) row numbers into
    `vectors`, -1 = not in this file (out left unchanged there). metric: RESCORE_IP
    (<q, v>), RESCORE_COSINE (<q, v> / (|q| |v|), 0 for a zero vector) or RESCORE_L2
    (|q - v|^2). Each query visits its rows in ascending order. Returns the number of rows
    read (rows >= 0)."""
    n_read = 0
    for i in range(queries.shape[0]):
        _rescore_one(queries[i], vectors, rows[i], metric, out[i])
        for r in range(rows.shape[1]):
            if rows[i, r] >= 0:
                n_read += 1
    return n_read


@jit
def sole_segment(seg_of):
    """The segment every candidate lies in: g when each seg_of >= 0 (int64 (nq, C)) equals
    g, -1 when there is none, -2 when they lie in several."""
    g = -1
    for i in range(seg_of.shape[0]):
        for j in range(seg_of.shape[1]):
            s = seg_of[i, j]
            if s >= 0:
                if g < 0:
                    g = s
                elif s != g:
                    return -2
    return g


@jit
def mapped_rows(seg_of, rows, g, dense_row):
    """Row in segment g's dense file of each candidate of g: dense_row[rows] (dense_row
    None: the file holds the segment's rows one to one), -1 where seg_of != g. rows int64
    (nq, C), local rows of the segment where seg_of == g."""
    out = np.full(rows.shape, -1, dtype=np.int64)
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            if seg_of[i, j] == g:
                if dense_row is None:
                    out[i, j] = rows[i, j]
                else:
                    out[i, j] = dense_row[rows[i, j]]
    return out


@jit
def rerank_rows(queries, vectors, rows, ids, k, metric):
    """`dense_rescore` of one file's rows (int64 (nq, C), -1 = no row, whose id is -1 too)
    and the top k of those scores (`rerank_topk64`) in one call: float64 scores and int64
    ids (nq, k), and the rows read. A few queries' re-rank costs a call, not a dozen."""
    exact = np.zeros(rows.shape, dtype=np.float64)
    n_read = dense_rescore(queries, vectors, rows, metric, exact)
    scores, top = rerank_topk64(exact, ids, k, metric == RESCORE_L2)
    return scores, top, n_read


@jit_batch
def dense_rescore_batch(queries, vectors, rows, metric, out):
    """`dense_rescore` with queries spread over threads (same results)."""
    counts = np.zeros(queries.shape[0], dtype=np.int64)
    for i in prange(queries.shape[0]):
        _rescore_one(queries[i], vectors, rows[i], metric, out[i])
        c = 0
        for r in range(rows.shape[1]):
            if rows[i, r] >= 0:
                c += 1
        counts[i] = c
    return counts.sum()


@jit
def _rerank_topk_one(exact, ids, k, is_l2, out_s, out_i):
    heap_s = np.full(k, -np.inf, dtype=np.float64)
    heap_i = np.full(k, -1, dtype=np.int64)
    for r in range(exact.shape[0]):
        if ids[r] < 0:
            continue
        s = -exact[r] if is_l2 else exact[r]
        topk_push(heap_s, heap_i, s, ids[r])
    topk_sort(heap_s, heap_i)
    for j in range(k):
        out_s[j] = -heap_s[j] if is_l2 else heap_s[j]
        out_i[j] = heap_i[j]


@jit_batch
def rerank_topk64_batch(exact, ids, k, is_l2):
    """Top-k of exact scores float64 (nq, R) with their ids int64 (nq, R) (-1 = empty):
    larger first (smaller first for l2), ties by smaller id; float64 scores and int64 ids
    (nq, k), padded with -inf (+inf for l2) and -1."""
    nq = exact.shape[0]
    out_s = np.empty((nq, k), dtype=np.float64)
    out_i = np.empty((nq, k), dtype=np.int64)
    for i in prange(nq):
        _rerank_topk_one(exact[i], ids[i], k, is_l2, out_s[i], out_i[i])
    return out_s, out_i


@jit
def rerank_topk64(exact, ids, k, is_l2):
    """Serial twin of `rerank_topk64_batch`."""
    nq = exact.shape[0]
    out_s = np.empty((nq, k), dtype=np.float64)
    out_i = np.empty((nq, k), dtype=np.int64)
    for i in range(nq):
        _rerank_topk_one(exact[i], ids[i], k, is_l2, out_s[i], out_i[i])
    return out_s, out_i


def rerank_topk_batch(exact, ids, k, is_l2):
    """`rerank_topk64_batch` with float32 scores (what a search returns)."""
    scores, top = rerank_topk64_batch(exact, ids, k, is_l2)
    return scores.astype(np.float32), top


def rerank_topk(exact, ids, k, is_l2):
    """`rerank_topk64` with float32 scores (what a search returns)."""
    scores, top = rerank_topk64(exact, ids, k, is_l2)
    return scores.astype(np.float32), top


@jit
def _walk_one(query, vectors, file_ix, rows, order, up_sorted, n_valid, k, step, metric, exact, done, top, state,
              avail, tau_out):
    # rows are scored larger-is-better (l2: the negated distance); `top` holds the k best
    # exact scores so far, ascending, so top[0] is tau once k are read. Resumes from
    # `state` (`walk_start`), pauses (False) before a round that reaches past `avail`.
    q_norm = np.sqrt(_dot_lanes(query, query)) if metric == RESCORE_COSINE else 1.0
    count = state[0]
    ptr = state[1]
    end = state[2]
    first = vectors[0]
    while ptr < end <= avail:
        _score_order(query, first, vectors, file_ix, rows, order, ptr, end, metric, q_norm, exact)
        for p in range(ptr, end):
            j = order[p]
            s = exact[j]
            if metric == RESCORE_L2:
                s = -s
            exact[j] = s
            done[j] = True
            if count < k or s > top[0]:
                # insert into the ascending buffer, dropping its smallest when full
                if count < k:
                    at = count
                    count += 1
                    while at > 0 and top[at - 1] > s:
                        top[at] = top[at - 1]
                        at -= 1
                    top[at] = s
                else:
                    at = 0
                    while at + 1 < k and top[at + 1] < s:
                        top[at] = top[at + 1]
                        at += 1
                    top[at] = s
        ptr = end
        tau = top[0] if count >= k else -np.inf
        reach = ptr
        while reach < n_valid and up_sorted[reach] >= tau:
            reach += 1
        end = min(ptr + step, reach)
        state[3] = reach
    state[0] = count
    state[1] = ptr
    state[2] = end
    if ptr < end:  # paused: the next round reaches past avail
        return False
    tau_out[0] = top[0] if count >= k else -np.inf
    return True


@jit
def _walk_whole(query, vectors, file_ix, rows, order, up_sorted, n_valid, k, step, metric, exact, done, tau_out):
    # one walk from start to end (no limit): the rows it read
    top = np.empty((1, k))
    state = np.empty((1, WALK_STATE), dtype=np.int64)
    walk_start(k, np.array([n_valid]), top, state)
    _walk_one(query, vectors, file_ix, rows, order, up_sorted, n_valid, k, step, metric, exact, done, top[0], state[0],
              n_valid, tau_out)
    return state[0, 1]


@jit
def bounded_walk(queries, vectors, file_ix, rows, order, up_sorted, n_valid, k, step, metric, exact, done, tau):
    """The walk of vecz.engine.bounds (`bounded_rerank`) for each query, compiled: visit the
    candidates in `order` (by upper bound, best first, `up_sorted` their bounds), read the
    first k, then up to `step` at a time while the next upper bound is >= the k-th exact
    score so far. vectors: a typed List of (n, dim) arrays (one per dense file, float32 or
    float16 bit patterns), candidate j of query i at vectors[file_ix[i, j]][rows[i, j]].
    Writes exact scores (larger-is-better: l2 negated) and done flags (nq, C) and the final
    k-th exact score tau (nq,) (-inf when fewer than k were read); returns the rows read
    per query."""
    nq = queries.shape[0]
    out = np.zeros(nq, dtype=np.int64)
    for i in range(nq):
        out[i] = _walk_whole(queries[i], vectors, file_ix[i], rows[i], order[i], up_sorted[i], n_valid[i], k, step,
                             metric, exact[i], done[i], tau[i : i + 1])
    return out


@jit_batch
def bounded_walk_batch(queries, vectors, file_ix, rows, order, up_sorted, n_valid, k, step, metric, exact, done,
                       tau):
    """`bounded_walk`, parallel over queries."""
    nq = queries.shape[0]
    out = np.zeros(nq, dtype=np.int64)
    for i in prange(nq):
        out[i] = _walk_whole(queries[i], vectors, file_ix[i], rows[i], order[i], up_sorted[i], n_valid[i], k, step,
                             metric, exact[i], done[i], tau[i : i + 1])
    return out


@jit
def walk_read(done, exact, ids, reader_ix, n_readers, metric):
    """What a walk read (`done`, (nq, C)): its rows' exact scores in the user's convention
    (float64; the walk keeps them larger-is-better, l2 negated; 0 where not read), their
    ids (-1 where not read) and the rows read from each of the `n_readers` dense files
    (`reader_ix`, (nq, C)), in one call: the top k is then `rerank_topk64` of the first
    two (``AutoWalk.result``)."""
    nq, c = done.shape
    is_l2 = metric == RESCORE_L2
    user = np.zeros((nq, c), dtype=np.float64)
    keep = np.full((nq, c), -1, dtype=np.int64)
    counts = np.zeros(n_readers, dtype=np.int64)
    for i in range(nq):
        for j in range(c):
            if done[i, j]:
                user[i, j] = -exact[i, j] if is_l2 else exact[i, j]
                keep[i, j] = ids[i, j]
                if reader_ix[i, j] >= 0:
                    counts[reader_ix[i, j]] += 1
    return user, keep, counts


@jit
def vector_list(first):
    """A typed List holding the (n, dim) array `first` (a dense file's rows), the form
    `bounded_walk` takes them in; more files are appended by the caller. Built here because
    from Python the first append to an empty typed List types it, ~20 us a call."""
    out = List()
    out.append(first)
    return out


@jit
def walk_order(better, z_hi, scale, valid):
    """The order a bounded walk visits its candidates in: upper = better + z_hi * scale
    (float64 (nq, C) each; -inf where not `valid`), and per query the candidates sorted by
    upper bound descending, ties in shortlist order (a stable sort of -upper, as numpy's
    ``argsort(kind="stable")``). Returns order int64 (nq, C), the sorted bounds float64
    (nq, C) and the valid candidates' count int64 (nq,). One compiled call instead of six
    numpy calls over a lone query's (1, C) arrays."""
    nq, c = better.shape
    order = np.empty((nq, c), dtype=np.int64)
    up_sorted = np.empty((nq, c), dtype=np.float64)
    n_valid = np.zeros(nq, dtype=np.int64)
    neg = np.empty(c, dtype=np.float64)
    for i in range(nq):
        for j in range(c):
            if valid[i, j]:
                neg[j] = -(better[i, j] + z_hi[i, j] * scale[i, j])
                n_valid[i] += 1
            else:
                neg[j] = np.inf
        o = np.argsort(neg, kind="mergesort")
        for j in range(c):
            order[i, j] = o[j]
            up_sorted[i, j] = -neg[o[j]]
    return order, up_sorted, n_valid


@jit
def walk_start(k, n_valid, top, state):
    """Set the walks' state (`bounded_walk_resume`: top (nq, k), state (nq, WALK_STATE), n_valid
    (nq,)) to their start: nothing read, the first round the k best upper bounds."""
    top[:] = -np.inf
    for i in range(state.shape[0]):
        state[i, 0] = 0
        state[i, 1] = 0
        state[i, 2] = min(k, n_valid[i])
        state[i, 3] = state[i, 2]


@jit
def bounded_walk_resume(queries, vectors, file_ix, rows, order, up_sorted, n_valid, k, step, metric, exact, done,
                        tau, top, state, avail, active):
    """`bounded_walk` that stops before a round needing a candidate at position >= avail[i]
    of its order, so that the caller can have those rows' pages fetched together first (a
    page fault per row costs a storage round trip each when the file is not cached).

    top float64 (nq, k) and state int64 (nq, WALK_STATE) carry each walk across calls
    (`walk_start` sets them up); active bool (nq,): the queries to advance (others are
    left as they are). Returns bool (nq,): the walks that paused. A paused walk's
    state[i, 2] is the end of the round it needs (> avail[i]) and state[i, 3] the
    candidates whose upper bound then reached the k-th exact score (state[i, 3] >= state[i, 2]);
    state[i, 1] is the rows read so far. A finished walk has written tau[i]. Every walk
    reads what `bounded_walk` reads, in the same rounds, whatever avail is."""
    nq = queries.shape[0]
    paused = np.zeros(nq, dtype=np.bool_)
    for i in range(nq):
        if active[i]:
            paused[i] = not _walk_one(queries[i], vectors, file_ix[i], rows[i], order[i], up_sorted[i], n_valid[i],
                                      k, step, metric, exact[i], done[i], top[i], state[i], avail[i],
                                      tau[i : i + 1])
    return paused


@jit_batch
def bounded_walk_resume_batch(queries, vectors, file_ix, rows, order, up_sorted, n_valid, k, step, metric, exact, done,
                              tau, top, state, avail, active):
    """`bounded_walk_resume`, parallel over queries (a batch whose pages are not asked for)."""
    nq = queries.shape[0]
    paused = np.zeros(nq, dtype=np.bool_)
    for i in prange(nq):
        if active[i]:
            paused[i] = not _walk_one(queries[i], vectors, file_ix[i], rows[i], order[i], up_sorted[i], n_valid[i],
                                      k, step, metric, exact[i], done[i], top[i], state[i], avail[i],
                                      tau[i : i + 1])
    return paused


@jit
def walk_seed(k, n_valid, seeds, top, state):
    """`walk_start` with a first round of `seeds` candidates (at most n_valid[i]) instead of
    k: `bounded_walk_resume` with avail = state[:, 2] then reads those and pauses (a shard's
    seed rows, whose exact scores set the floor of every shard's walk: `walk_floor`).
    seeds = 0: nothing is read before the floor is set."""
    walk_start(k, n_valid, top, state)
    for i in range(state.shape[0]):
        state[i, 2] = min(seeds, n_valid[i])
        state[i, 3] = state[i, 2]


@jit
def walk_floor(top, state, up_sorted, n_valid, k, step, floor):
    """Put a floor under each walk's k-th exact score (walks set up by `walk_seed` or
    `walk_start`, paused or finished, not started by `bounded_walk`): floor[i] is a k-th
    exact score of rows read elsewhere (larger-is-better; -inf: none). The walk's buffer
    becomes the k largest of its exact scores so far and k copies of floor[i], as if k rows
    scoring floor[i] had been read, and its next round is set from there: from now on it
    reads a candidate only while its upper bound is >= max(floor[i], its own k-th exact
    score), and the tau it writes is that maximum. floor[i] = -inf leaves the walk to go on
    as it would have."""
    merged = np.empty(k)
    for i in range(state.shape[0]):
        a = min(state[i, 0], k) - 1  # the exact scores so far: top[i, :count] ascending
        f = floor[i]
        for out in range(k - 1, -1, -1):
            if a >= 0 and top[i, a] > f:
                merged[out] = top[i, a]
                a -= 1
            else:
                merged[out] = f
        top[i, :k] = merged
        state[i, 0] = k
        ptr = state[i, 1]
        reach = ptr
        while reach < n_valid[i] and up_sorted[i, reach] >= merged[0]:
            reach += 1
        state[i, 2] = min(ptr + step, reach)
        state[i, 3] = reach
