"""4-bit PQ fast scan: blocked code layout, uint8 lookup tables, byte shuffles.

A 4-bit sub-code indexes a 16-entry table, which fits one 128-bit register; a byte
shuffle (PSHUFB) then performs 16 table lookups per lane in one instruction. This is the
idea of faiss's fast-scan (André et al.) in a simpler layout of our own:

- codes are grouped in blocks of 32 rows; a block stores, for each pair of sub-quantizers
  (2j, 2j + 1), 32 bytes whose byte v holds row v's sub-code 2j in the low nibble and
  2j + 1 in the high nibble: uint8 (n_blocks, n_pairs, 32). Rows past the end of a list
  are padding with id -1 and are never returned.
- tables are quantized per query to uint8 with one shared step `a` and a per-sub-quantizer
  minimum: lut[m, j] ~= min_m + a * qlut[m, j], with qlut <= floor(65535 / M) so that the
  uint16 sum over M sub-quantizers cannot overflow. Each 16-byte table is stored twice
  (32 bytes) so one 256-bit shuffle serves both 128-bit lanes.
- per block: acc[v] = sum_m qlut[m, code[v, m]] in uint16; score = bias + a * acc[v].

`fs_block_accumulate` emits the loop in LLVM IR with the AVX2 `pshuf.b` intrinsic when the
target has AVX2, one 512-bit shuffle per pair where it has AVX-512BW (checked once at
import), and otherwise runs a scalar loop with identical integer results. Reference: tests/reference/pq.py (`fastscan_accumulate_ref`).

Batches of queries that probe the same lists (every query without IVF) are scanned by the
`*_multi` kernels: each block's code bytes are loaded and split into nibbles once for
LANES queries (faiss's `qbs`), and the per-block float work (RB level sums, row scores and
the filter against each query's threshold) runs on all lanes at once in vector IR. This
only saves work: results equal the one-query kernels' bit for bit (tests/test_fastscan.py). Every
kernel here keeps each query's top k in a reservoir (kernels/topk.py: rows appended, cut to
the best k when full) instead of a heap: rows come in no useful order, and a heap's sift for
each admitted row took half of a flat scan at k = 100-200. So block ids are at most
`topk.RES_MAX_ID`: `fs_layout` and `fs_layout_packed` refuse larger ones, and the engine
gives larger ids as ranks (engine/layout.py `CodeIndex`).

IVF batches, whose queries probe different lists, are scanned list-major by the `*_lists`
kernels (faiss's IVF fast scan): the probes are inverted into, per list, the queries that
visit it (`fs_invert_probes`), and each list is scanned once per chunk of up to LANES of
them, the chunk's tables gathered by index (`fs_block_accumulate_gather`). Their rows are
scored and filtered against each query's threshold in vector IR, so only candidates
reach the scalar admission test. Each query's reservoir is first seeded by a scan of its
first `SEED_PROBES` probes on their own (its nearest lists: the engine's probes come best
first) so that its threshold starts high. Each query keeps its own, which admits (score,
id) by a total order, so the visiting order does not change results either.

Under l2 on IVF residuals the engine keeps each row's l2 term with its own list's centroid
folded in (engine/quantizers.py `own_list_terms`), so one table a query serves every probed
list, as under cosine: these kernels take the plan's tables either way.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._jit import jit, jit_batch, target_has
from . import topk
from .topk import res_cut, res_finish, res_init_floors, res_key

__all__ = [
    "BLOCK",
    "LANES",
    "HAS_SHUFFLE",
    "HAS_SHUFFLE_512",
    "fs_layout",
    "fs_layout_packed",
    "fs_quantize_lut",
    "fs_quantize_into",
    "fs_qmax",
    "fs_block_accumulate",
    "fs_block_accumulate_range",
    "fs_block_accumulate_lanes",
    "fs_block_accumulate_group",
    "fs_scan",
    "fs_scan_batch",
    "fs_scan_multi",
    "fs_scan_multi_batch",
    "fs_scan_factors",
    "fs_scan_factors_batch",
    "fs_scan_factors_multi",
    "fs_scan_factors_multi_batch",
    "fs_row_values",
    "fs_block_bytes",
    "fs_query_groups",
    "fs_block_accumulate_gather",
    "fs_invert_probes",
    "SEED_PROBES",
    "fs_scan_lists",
    "fs_scan_lists_batch",
    "fs_scan_factors_lists",
    "fs_scan_factors_lists_batch",
]

BLOCK = 32
# The AVX2 byte shuffle is emitted only when Numba's target has AVX2 (NUMBA_CPU_NAME=x86-64
# on an AVX2 host must get the scalar twins, not an intrinsic LLVM cannot select).
HAS_SHUFFLE = target_has("avx2")
# With AVX-512BW one 512-bit shuffle does both of a pair's 256-bit ones (`_emit_shuffle_lanes`):
# on a Zen 5 the PQ96x4 fast scan went from 6,261-7,489 to 10,072-10,610 QPS: 0.88-1.01x of
# faiss's AVX-512 fast scan in four runs, from 0.66-0.73x.
HAS_SHUFFLE_512 = HAS_SHUFFLE and target_has("avx512bw")


@intrinsic
def _shuffle_accumulate(typingctx, blocks, block_index, pair_start, pair_count, qluts, out):
    """acc (32 x uint16) over pairs [pair_start, pair_start + pair_count) of one block, with
    tables qluts[0 : 2 * pair_count], by byte shuffles; written to `out` (one lane of
    `_emit_shuffle_lanes`, tables 32 bytes apart)."""
    sig = types.void(blocks, block_index, pair_start, pair_count, qluts, out)

    def codegen(context, builder, signature, args):
        blocks_v, index_v, start_v, count_v, qlut_v, out_v = args
        blocks_a = context.make_array(signature.args[0])(context, builder, blocks_v)
        qlut_a = context.make_array(signature.args[4])(context, builder, qlut_v)
        out_a = context.make_array(signature.args[5])(context, builder, out_v)
        i64 = ir.IntType(64)
        row_pairs = builder.extract_value(blocks_a.shape, 1)
        index = context.cast(builder, index_v, signature.args[1], types.int64)
        first = context.cast(builder, start_v, signature.args[2], types.int64)
        n_pairs = context.cast(builder, count_v, signature.args[3], types.int64)
        start = builder.mul(builder.add(builder.mul(index, row_pairs), first), ir.Constant(i64, 32))
        base = builder.gep(blocks_a.data, [start])
        luts = builder.bitcast(qlut_a.data, ir.IntType(8).as_pointer())
        _emit_lanes_either(builder, base, [luts], builder.extract_value(qlut_a.strides, 0), n_pairs, out_a)
        return context.get_dummy_value()

    return sig, codegen


def _emit_shuffle_lanes(builder, base, lane_luts, row_stride, n_pairs, out_a):
    """The loop of the shuffle intrinsics: pairs [0, n_pairs) of the block at `base` (i8*),
    each code byte vector split once and shuffled with every lane's tables (lane_luts: one
    i8* per lane, tables `row_stride` bytes apart); acc of lane i stored to out_a row i.

    No widening (faiss's trick): a shuffle result read as uint16 words adds row 2i + 256 *
    row 2i+1 into `all`, and its high bytes alone into `odd`; at the end even rows = all -
    256 * odd (mod 2**16, the same wrap-around as a uint16 sum). AVX2: two 256-bit shuffles
    per pair (low nibbles with table 2j, high with 2j + 1). AVX-512BW (`HAS_SHUFFLE_512`):
    the pair's 32 code bytes fill both halves of a 512-bit vector, the upper half shifted by
    a nibble, and one shuffle of [table 2j | table 2j + 1] does both; the halves accumulate
    apart and are added at the end, the same integers."""
    wide = HAS_SHUFFLE_512
    n_lanes = len(lane_luts)
    i8 = ir.IntType(8)
    i16 = ir.IntType(16)
    i32 = ir.IntType(32)
    i64 = ir.IntType(64)
    # row_stride None: the tables' rows are 32 contiguous bytes (a constant stride leaves the
    # loop one shared offset; with runtime strides LLVM kept two pointers a lane and spilled
    # them to the stack every pair: 16 loads and 16 stores next to 48 vector instructions)
    packed = row_stride is None
    stride = ir.Constant(i64, 32) if packed else row_stride
    v8 = ir.VectorType(i8, 32)
    v16 = ir.VectorType(i16, 32)
    w16 = ir.VectorType(i16, 16)
    if wide:
        v64 = ir.VectorType(i8, 64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v64, [v64, v64]),
                                            "llvm.x86.avx512.pshuf.b.512")
        low = ir.Constant(v64, [15] * 64)
        nibble = ir.Constant(v16, [0] * 16 + [4] * 16)  # the upper half's words shift by 4
        twice = ir.Constant(ir.VectorType(i32, 64), list(range(32)) * 2)
        joined = ir.Constant(ir.VectorType(i32, 64), list(range(64)))
    else:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8, v8]), "llvm.x86.avx2.pshuf.b")
        low = ir.Constant(v8, [15] * 32)
        four = ir.Constant(v8, [4] * 32)
    sums = v16 if wide else w16
    eight = ir.Constant(sums, [8] * sums.count)
    zero = ir.Constant(sums, [0] * sums.count)
    all_ptrs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_lanes)]
    odd_ptrs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_lanes)]
    with cgutils.for_range(builder, n_pairs) as loop:
        j = loop.index
        codes_ptr = builder.bitcast(builder.gep(base, [builder.mul(j, ir.Constant(i64, 32))]), v8.as_pointer())
        codes = builder.load(codes_ptr, align=1)
        if wide:
            both = builder.bitcast(builder.shuffle_vector(codes, codes, twice), v16)
            nibbles = builder.and_(builder.bitcast(builder.lshr(both, nibble), v64), low)
        else:
            lo = builder.and_(codes, low)
            hi = builder.and_(builder.lshr(codes, four), low)
        t_off = builder.mul(j, builder.add(stride, stride))
        for lane in range(n_lanes):
            p0 = builder.gep(lane_luts[lane], [t_off])
            if wide and packed:  # the pair's two tables are 64 contiguous bytes: one load
                tables = builder.load(builder.bitcast(p0, v64.as_pointer()), align=1)
            elif wide:
                t0 = builder.load(builder.bitcast(p0, v8.as_pointer()), align=1)
                t1 = builder.load(builder.bitcast(builder.gep(p0, [stride]), v8.as_pointer()), align=1)
                tables = builder.shuffle_vector(t0, t1, joined)
            else:
                t0 = builder.load(builder.bitcast(p0, v8.as_pointer()), align=1)
                t1 = builder.load(builder.bitcast(builder.gep(p0, [stride]), v8.as_pointer()), align=1)
            if wide:
                r = builder.bitcast(builder.call(fn, [tables, nibbles]), v16)
                add_all, add_odd = r, builder.lshr(r, eight)
            else:
                r0 = builder.bitcast(builder.call(fn, [t0, lo]), w16)
                r1 = builder.bitcast(builder.call(fn, [t1, hi]), w16)
                add_all = builder.add(r0, r1)
                add_odd = builder.add(builder.lshr(r0, eight), builder.lshr(r1, eight))
            builder.store(builder.add(builder.load(all_ptrs[lane]), add_all), all_ptrs[lane])
            builder.store(builder.add(builder.load(odd_ptrs[lane]), add_odd), odd_ptrs[lane])
    halves = (ir.Constant(ir.VectorType(i32, 16), list(range(16))),
              ir.Constant(ir.VectorType(i32, 16), list(range(16, 32))))
    mask = ir.Constant(ir.VectorType(i32, 32), [i // 2 + (16 if i % 2 else 0) for i in range(32)])
    out_bytes = builder.bitcast(out_a.data, i8.as_pointer())
    out_stride = builder.extract_value(out_a.strides, 0)
    for lane in range(n_lanes):
        all_sum = builder.load(all_ptrs[lane])
        odd_sum = builder.load(odd_ptrs[lane])
        if wide:  # add the halves: pair tables 2j in the lower, 2j + 1 in the upper
            all_sum = builder.add(*(builder.shuffle_vector(all_sum, all_sum, h) for h in halves))
            odd_sum = builder.add(*(builder.shuffle_vector(odd_sum, odd_sum, h) for h in halves))
        even_sum = builder.sub(all_sum, builder.shl(odd_sum, ir.Constant(w16, [8] * 16)))
        acc = builder.shuffle_vector(even_sum, odd_sum, mask)  # interleave even, odd rows
        dst = builder.gep(out_bytes, [builder.mul(ir.Constant(i64, lane), out_stride)])
        builder.store(acc, builder.bitcast(dst, v16.as_pointer()), align=1)


def _emit_lanes_either(builder, base, lane_luts, row_stride, n_pairs, out_a):
    """`_emit_shuffle_lanes` twice behind a runtime test: the constant-stride loop when the
    tables' rows are 32 contiguous bytes (every table `fs_quantize_lut` makes), the loop with
    `row_stride` otherwise. Same integers either way."""
    contiguous = builder.icmp_signed("==", row_stride, ir.Constant(ir.IntType(64), 32))
    with builder.if_else(contiguous, likely=True) as (then, otherwise):
        with then:
            _emit_shuffle_lanes(builder, base, lane_luts, None, n_pairs, out_a)
        with otherwise:
            _emit_shuffle_lanes(builder, base, lane_luts, row_stride, n_pairs, out_a)


def _emit_block_prologue(context, builder, signature, args):
    """What both multi-lane intrinsics below start with, from their shared arguments
    (blocks, block_index, pair_start, pair_count, qluts, ..., out): a pointer to the block's
    first pair, the pair count, the tables' base pointer and strides, and the output array.
    Returns (base, n_pairs, lut_bytes, (q_stride, t_stride, row_stride), qlut_a, out_a)."""
    blocks_a = context.make_array(signature.args[0])(context, builder, args[0])
    qlut_a = context.make_array(signature.args[4])(context, builder, args[4])
    out_a = context.make_array(signature.args[7])(context, builder, args[7])
    i64 = ir.IntType(64)
    row_pairs = builder.extract_value(blocks_a.shape, 1)
    index = context.cast(builder, args[1], signature.args[1], types.int64)
    first_pair = context.cast(builder, args[2], signature.args[2], types.int64)
    n_pairs = context.cast(builder, args[3], signature.args[3], types.int64)
    start = builder.mul(builder.add(builder.mul(index, row_pairs), first_pair), ir.Constant(i64, 32))
    base = builder.gep(blocks_a.data, [start])
    strides = tuple(builder.extract_value(qlut_a.strides, i) for i in range(3))
    lut_bytes = builder.bitcast(qlut_a.data, ir.IntType(8).as_pointer())
    return base, n_pairs, lut_bytes, strides, qlut_a, out_a


def _make_shuffle_accumulate_lanes(n_lanes):
    """`_shuffle_accumulate` for `n_lanes` queries at once: each pair's 32 code bytes are
    loaded and split into nibbles once, then shuffled with every lane's tables (faiss's
    `qbs`); the 2 * n_lanes accumulators stay in registers (AVX-512VL gives 32)."""

    @intrinsic
    def accumulate(typingctx, blocks, block_index, pair_start, pair_count, qluts, table, q_first, out):
        """out[i] (32 x uint16) = acc of one block for query q_first + i (query q_first
        again past the end of qluts: lanes without a query repeat one, results unused),
        tables qluts[q, table, 0 : 2 * pair_count]; qluts (G, L, 2 * n_pairs, 32) with
        rows of 32 contiguous bytes, out (n_lanes, 32)."""
        sig = types.void(blocks, block_index, pair_start, pair_count, qluts, table, q_first, out)

        def codegen(context, builder, signature, args):
            base, n_pairs, lut_bytes, (q_stride, t_stride, row_stride), qlut_a, out_a = _emit_block_prologue(
                context, builder, signature, args)
            i64 = ir.IntType(64)
            table = context.cast(builder, args[5], signature.args[5], types.int64)
            q_first = context.cast(builder, args[6], signature.args[6], types.int64)
            n_q = builder.extract_value(qlut_a.shape, 0)
            lane_luts = []
            for lane in range(n_lanes):
                q = builder.add(q_first, ir.Constant(i64, lane))
                q = builder.select(builder.icmp_signed("<", q, n_q), q, q_first)
                off = builder.add(builder.mul(q, q_stride), builder.mul(table, t_stride))
                lane_luts.append(builder.gep(lut_bytes, [off]))
            _emit_lanes_either(builder, base, lane_luts, row_stride, n_pairs, out_a)
            return context.get_dummy_value()

        return sig, codegen

    return accumulate


def _make_shuffle_accumulate_gather(n_lanes):
    """`_make_shuffle_accumulate_lanes` with each lane's query and table read from index
    arrays: the lanes of a list-major scan are whichever queries probe the list."""

    @intrinsic
    def accumulate(typingctx, blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out):
        """out[i] (32 x uint16) = acc of one block with tables
        qluts[lane_q[i], lane_t[i], 0 : 2 * pair_count] for i < n_lanes; lane_q, lane_t
        contiguous int64 with n_lanes valid entries, qluts (G, L, 2 * n_pairs, 32) with
        rows of 32 contiguous bytes, out (n_lanes, 32)."""
        sig = types.void(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out)

        def codegen(context, builder, signature, args):
            base, n_pairs, lut_bytes, (q_stride, t_stride, row_stride), _, out_a = _emit_block_prologue(
                context, builder, signature, args)
            i64 = ir.IntType(64)
            lq_a = context.make_array(signature.args[5])(context, builder, args[5])
            lt_a = context.make_array(signature.args[6])(context, builder, args[6])
            lane_luts = []
            for lane in range(n_lanes):
                at = ir.Constant(i64, lane)
                q = builder.load(builder.gep(lq_a.data, [at]))
                t = builder.load(builder.gep(lt_a.data, [at]))
                off = builder.add(builder.mul(q, q_stride), builder.mul(t, t_stride))
                lane_luts.append(builder.gep(lut_bytes, [off]))
            _emit_lanes_either(builder, base, lane_luts, row_stride, n_pairs, out_a)
            return context.get_dummy_value()

        return sig, codegen

    return accumulate


def _splat(builder, x, vt):
    v = cgutils.get_null_value(vt)
    for i in range(vt.count):
        v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), i))
    return v


def _lane_rows(context, builder, arr_type, arr_v, elem, n_lanes):
    """Pointers to the n_lanes rows of 32 elements of a 2-D array, as <32 x elem>*."""
    arr = context.make_array(arr_type)(context, builder, arr_v)
    data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
    stride = builder.extract_value(arr.strides, 0)
    vec = ir.VectorType(elem, 32).as_pointer()
    return [builder.bitcast(builder.gep(data, [builder.mul(ir.Constant(ir.IntType(64), lane), stride)]), vec)
            for lane in range(n_lanes)]


def _make_lanes_postprocess(n_lanes):
    """Vector post-processing of `n_lanes` accumulated blocks. Numba fully unrolls 32-row
    loops and then leaves them scalar (measured: as long as the shuffles themselves), so
    these are written as 32-wide vector IR."""

    @intrinsic
    def lanes_comb(typingctx, acc, comb, w, first):
        """comb[i] = (0 if first else comb[i]) + w * float32(acc[i]) for i < n_lanes, the
        same IEEE float32 operations as `fs_scan_factors`'s per-row loop."""
        sig = types.void(acc, comb, w, first)

        def codegen(context, builder, signature, args):
            f32 = ir.FloatType()
            vf = ir.VectorType(f32, 32)
            a_rows = _lane_rows(context, builder, signature.args[0], args[0], ir.IntType(16), n_lanes)
            c_rows = _lane_rows(context, builder, signature.args[1], args[1], f32, n_lanes)
            w = context.cast(builder, args[2], signature.args[2], types.float32)
            first = context.cast(builder, args[3], signature.args[3], types.boolean)
            wv = _splat(builder, w, vf)
            for lane in range(n_lanes):
                x = builder.fmul(wv, builder.uitofp(builder.load(a_rows[lane], align=1), vf))
                old = builder.select(first, cgutils.get_null_value(vf), builder.load(c_rows[lane], align=1))
                builder.store(builder.fadd(old, x), c_rows[lane], align=1)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def lanes_rows(typingctx, comb, row_factors, row0, base, step, pbias, q_sq, thr, is_l2, scores, masks):
        """Row scores of one block for n_lanes queries in vector IR, the same IEEE operations
        as `fs_scan_factors`'s per-row loop: scores[i, v] = pbias + g * (base + step *
        comb[i, v]) (ip) or -((q_sq - 2 est) + |r|^2) in float32 (l2), with (g,
        |r|^2) = row_factors[row0 + v] (rows of 2 contiguous float32; a 1-D uint16 row_factors
        holds g alone as float16 bits and |r|^2 is 0, `fs_scan_factors`'s scaled mode; a 1-D
        float32 one holds |r|^2 alone and g is 1, the l2 row-term mode); base, step, pbias,
        q_sq, thr float32 per lane; masks[i] (int64) has bit v set when scores[i, v] >= thr[i]
        (a superset of the rows that can enter a heap whose minimum is thr[i])."""
        sig = types.void(comb, row_factors, row0, base, step, pbias, q_sq, thr, is_l2, scores, masks)

        def codegen(context, builder, signature, args):
            (comb_v, rf_v, row0_v, base_v, step_v, pbias_v, qsq_v, thr_v, l2_v, sc_v, mk_v) = args
            f32 = ir.FloatType()
            i32 = ir.IntType(32)
            i64 = ir.IntType(64)
            vf = ir.VectorType(f32, 32)
            c_rows = _lane_rows(context, builder, signature.args[0], comb_v, f32, n_lanes)
            s_rows = _lane_rows(context, builder, signature.args[9], sc_v, f32, n_lanes)
            rf = context.make_array(signature.args[1])(context, builder, rf_v)
            row0 = context.cast(builder, row0_v, signature.args[2], types.int64)
            at = builder.gep(builder.bitcast(rf.data, ir.IntType(8).as_pointer()),
                             [builder.mul(row0, builder.extract_value(rf.strides, 0))])
            if signature.args[1].ndim == 1 and signature.args[1].dtype == types.float32:
                # |r|^2 alone (PQ x4 under l2 on residuals, its own list folded in): g = 1
                g = _splat(builder, ir.Constant(f32, 1.0), vf)
                r_sq = builder.load(builder.bitcast(at, vf.as_pointer()), align=4)
            elif signature.args[1].ndim == 1:  # g alone, float16 bits (PQ's cosine scan): |r|^2 = 0
                g = builder.fpext(builder.load(builder.bitcast(at, ir.VectorType(ir.HalfType(), 32).as_pointer()),
                                               align=2), vf)
                r_sq = cgutils.get_null_value(vf)
            else:
                pair = builder.load(builder.bitcast(at, ir.VectorType(f32, 64).as_pointer()), align=4)
                g = builder.shuffle_vector(pair, pair, ir.Constant(ir.VectorType(i32, 32), list(range(0, 64, 2))))
                r_sq = builder.shuffle_vector(pair, pair, ir.Constant(ir.VectorType(i32, 32), list(range(1, 64, 2))))
            is_l2 = context.cast(builder, l2_v, signature.args[8], types.boolean)
            mk = context.make_array(signature.args[10])(context, builder, mk_v)

            def lane_value(k, value, lane):
                a = context.make_array(signature.args[k])(context, builder, value)
                return builder.load(builder.gep(a.data, [ir.Constant(i64, lane)]))

            two = _splat(builder, ir.Constant(f32, 2.0), vf)

            def emit(l2):
                for lane in range(n_lanes):
                    x = builder.load(c_rows[lane], align=1)
                    t = builder.fadd(_splat(builder, lane_value(3, base_v, lane), vf),
                                     builder.fmul(_splat(builder, lane_value(4, step_v, lane), vf), x))
                    est = builder.fmul(g, t)
                    if l2:  # float32 throughout: est is float32 already, and 16 float32 lanes a
                        # vector instead of 8 doubles took a tenth of centred RB's batch time back
                        q_sq = _splat(builder, lane_value(6, qsq_v, lane), vf)
                        d = builder.fadd(builder.fsub(q_sq, builder.fmul(two, est)), r_sq)
                        sc = builder.fneg(d)
                    else:
                        sc = builder.fadd(_splat(builder, lane_value(5, pbias_v, lane), vf), est)
                    builder.store(sc, s_rows[lane], align=1)
                    ge = builder.fcmp_ordered(">=", sc, _splat(builder, lane_value(7, thr_v, lane), vf))
                    bits = builder.zext(builder.bitcast(ge, i32), i64)
                    builder.store(bits, builder.gep(mk.data, [ir.Constant(i64, lane)]))

            # one metric's formula behind a branch: computing both and selecting spent 32
            # float64 lanes a row on every inner-product scan
            with builder.if_else(is_l2) as (then, otherwise):
                with then:
                    emit(True)
                with otherwise:
                    emit(False)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def lanes_rows_pq(typingctx, acc, base, step, thr, scores, masks):
        """scores[i, v] = float32(base[i] + step[i] * float32(acc[i, v])) for i < n_lanes,
        `fs_scan`'s per-row formula in vector IR; masks[i] (int64) has bit v set when
        scores[i, v] >= thr[i]."""
        sig = types.void(acc, base, step, thr, scores, masks)

        def codegen(context, builder, signature, args):
            acc_v, base_v, step_v, thr_v, sc_v, mk_v = args
            f32 = ir.FloatType()
            i32 = ir.IntType(32)
            i64 = ir.IntType(64)
            vf = ir.VectorType(f32, 32)
            a_rows = _lane_rows(context, builder, signature.args[0], acc_v, ir.IntType(16), n_lanes)
            s_rows = _lane_rows(context, builder, signature.args[4], sc_v, f32, n_lanes)
            mk = context.make_array(signature.args[5])(context, builder, mk_v)

            def lane_value(k, value, lane):
                a = context.make_array(signature.args[k])(context, builder, value)
                return builder.load(builder.gep(a.data, [ir.Constant(i64, lane)]))

            for lane in range(n_lanes):
                x = builder.uitofp(builder.load(a_rows[lane], align=1), vf)
                sc = builder.fadd(_splat(builder, lane_value(1, base_v, lane), vf),
                                  builder.fmul(_splat(builder, lane_value(2, step_v, lane), vf), x))
                builder.store(sc, s_rows[lane], align=1)
                ge = builder.fcmp_ordered(">=", sc, _splat(builder, lane_value(3, thr_v, lane), vf))
                builder.store(builder.zext(builder.bitcast(ge, i32), i64), builder.gep(mk.data, [ir.Constant(i64, lane)]))
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def lanes_at_least(typingctx, acc, thr, q_first, masks):
        """masks[i] (int64) has bit v set when acc[i, v] >= thr[q_first + i] (uint16) for
        i < n_lanes: thr must reach q_first + n_lanes."""
        sig = types.void(acc, thr, q_first, masks)

        def codegen(context, builder, signature, args):
            acc_v, thr_v, first_v, mk_v = args
            i16 = ir.IntType(16)
            i64 = ir.IntType(64)
            a_rows = _lane_rows(context, builder, signature.args[0], acc_v, i16, n_lanes)
            thr_a = context.make_array(signature.args[1])(context, builder, thr_v)
            q_first = context.cast(builder, first_v, signature.args[2], types.int64)
            mk = context.make_array(signature.args[3])(context, builder, mk_v)
            v16 = ir.VectorType(i16, 32)
            for lane in range(n_lanes):
                t = builder.load(builder.gep(thr_a.data, [builder.add(q_first, ir.Constant(i64, lane))]))
                ge = builder.icmp_unsigned(">=", builder.load(a_rows[lane], align=1), _splat(builder, t, v16))
                bits = builder.zext(builder.bitcast(ge, ir.IntType(32)), i64)
                builder.store(bits, builder.gep(mk.data, [ir.Constant(i64, lane)]))
            return context.get_dummy_value()

        return sig, codegen

    return lanes_comb, lanes_rows, lanes_rows_pq, lanes_at_least


@intrinsic
def _lowest_bit(typingctx, x):
    """Index of the lowest set bit of a non-zero int64 (count trailing zeros)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]),
                                            "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])

    return sig, codegen


# Queries accumulated per pass over a code block in the multi-query scans (see
# `fs_scan_multi`).
LANES = 8
_shuffle_accumulate_lanes = _make_shuffle_accumulate_lanes(LANES)
_shuffle_accumulate_gather = _make_shuffle_accumulate_gather(LANES)
_lanes_comb, _lanes_rows, _lanes_rows_pq, _lanes_at_least = _make_lanes_postprocess(LANES)
# one query's block (`fs_scan_factors`): the same operations on one lane
_lanes_comb1, _lanes_rows1, _lanes_rows_pq1, _ = _make_lanes_postprocess(1)


@jit
def _scalar_accumulate(blocks, block_index, pair_start, pair_count, qluts, out):
    for v in range(BLOCK):
        out[v] = 0
    for j in range(pair_count):
        for v in range(BLOCK):
            c = blocks[block_index, pair_start + j, v]
            out[v] += np.uint16(qluts[2 * j, c & 15]) + np.uint16(qluts[2 * j + 1, c >> 4])


if HAS_SHUFFLE:

    @jit
    def fs_block_accumulate_range(blocks, block_index, pair_start, pair_count, qluts, out):
        """acc[v] = sum_{j < pair_count} of the two table entries of pair pair_start + j
        (tables qluts[2j], qluts[2j + 1]) for the 32 rows of one block (uint16)."""
        _shuffle_accumulate(blocks, block_index, pair_start, pair_count, qluts, out)

else:

    @jit
    def fs_block_accumulate_range(blocks, block_index, pair_start, pair_count, qluts, out):
        """acc[v] = sum_{j < pair_count} of the two table entries of pair pair_start + j
        (tables qluts[2j], qluts[2j + 1]) for the 32 rows of one block (uint16)."""
        _scalar_accumulate(blocks, block_index, pair_start, pair_count, qluts, out)


@jit
def _scalar_accumulate_lanes(blocks, block_index, pair_start, pair_count, qluts, table, q_first, out):
    n_q = qluts.shape[0]
    for lane in range(out.shape[0]):
        q = q_first + lane
        if q >= n_q:
            q = q_first
        _scalar_accumulate(blocks, block_index, pair_start, pair_count, qluts[q, table], out[lane])


if HAS_SHUFFLE:

    @jit
    def fs_block_accumulate_lanes(blocks, block_index, pair_start, pair_count, qluts, table, q_first, out):
        """out[i] = `fs_block_accumulate_range` of one block with the tables
        qluts[q_first + i, table] for i < LANES (lanes past the last query repeat query
        q_first); qluts (G, L, 2 * n_pairs, 32), out uint16 (LANES, 32)."""
        _shuffle_accumulate_lanes(blocks, block_index, pair_start, pair_count, qluts, table, q_first, out)

else:

    @jit
    def fs_block_accumulate_lanes(blocks, block_index, pair_start, pair_count, qluts, table, q_first, out):
        """out[i] = `fs_block_accumulate_range` of one block with the tables
        qluts[q_first + i, table] for i < LANES (lanes past the last query repeat query
        q_first); qluts (G, L, 2 * n_pairs, 32), out uint16 (LANES, 32)."""
        _scalar_accumulate_lanes(blocks, block_index, pair_start, pair_count, qluts, table, q_first, out)


@jit
def fs_block_accumulate_group(blocks, block_index, pair_start, pair_count, qluts, table, q_first, n_lanes, out):
    """out[i] = `fs_block_accumulate_range` of one block with the tables
    qluts[q_first + i, table], i < n_lanes <= LANES (rows past n_lanes are left unspecified).
    A pass of `fs_block_accumulate_lanes` over LANES = 8 queries costs 5.5-6.5 single-query
    passes (measured on wordnet-minilm), so groups under 3/4 full take the single path."""
    if 4 * n_lanes >= 3 * LANES:
        fs_block_accumulate_lanes(blocks, block_index, pair_start, pair_count, qluts, table, q_first, out)
    else:
        for lane in range(n_lanes):
            fs_block_accumulate_range(blocks, block_index, pair_start, pair_count, qluts[q_first + lane, table],
                                      out[lane])


@jit
def _scalar_accumulate_gather(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out):
    for lane in range(out.shape[0]):
        _scalar_accumulate(blocks, block_index, pair_start, pair_count, qluts[lane_q[lane], lane_t[lane]], out[lane])


if HAS_SHUFFLE:

    @jit
    def fs_block_accumulate_gather(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out):
        """out[i] = `fs_block_accumulate_range` of one block with the tables
        qluts[lane_q[i], lane_t[i]] for i < LANES; lane_q, lane_t contiguous int64 (LANES,),
        qluts (G, L, 2 * n_pairs, 32), out uint16 (LANES, 32)."""
        _shuffle_accumulate_gather(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out)

else:

    @jit
    def fs_block_accumulate_gather(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out):
        """out[i] = `fs_block_accumulate_range` of one block with the tables
        qluts[lane_q[i], lane_t[i]] for i < LANES; lane_q, lane_t contiguous int64 (LANES,),
        qluts (G, L, 2 * n_pairs, 32), out uint16 (LANES, 32)."""
        _scalar_accumulate_gather(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out)


@jit
def _accumulate_chunk(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, n_lanes, out):
    # as fs_block_accumulate_group: under 3/4 full, one query at a time
    if 4 * n_lanes >= 3 * LANES:
        fs_block_accumulate_gather(blocks, block_index, pair_start, pair_count, qluts, lane_q, lane_t, out)
    else:
        for lane in range(n_lanes):
            fs_block_accumulate_range(blocks, block_index, pair_start, pair_count, qluts[lane_q[lane], lane_t[lane]],
                                      out[lane])


@jit
def fs_block_accumulate(blocks, block_index, qluts, out):
    """acc[v] = sum_m qluts[m, code[v, m]] for the 32 rows of one block (uint16)."""
    _check_blocks(blocks)
    fs_block_accumulate_range(blocks, block_index, 0, blocks.shape[1], qluts, out)


def _check_block_ids(ids: np.ndarray) -> None:
    # the scans' reservoirs key ids up to topk.RES_MAX_ID (kernels/topk.py)
    if ids.size and int(ids.max()) > topk.RES_MAX_ID:
        raise ValueError(f"fast-scan layouts hold ids up to 2**31 - 1 (topk.RES_MAX_ID), found {int(ids.max())}")


def fs_layout(codes: np.ndarray, ids: np.ndarray, list_offsets: np.ndarray):
    """Blocked layout of unpacked 4-bit codes uint8 (n, M) ordered by list.

    Returns blocks uint8 (n_blocks, ceil(M/2), 32), block ids int64 (n_blocks * 32,) with
    -1 for padding rows, and block offsets int64 (nlist + 1,) of each list. Ids above
    `topk.RES_MAX_ID` raise ValueError (the scans' reservoirs cannot key them).
    """
    codes = np.asarray(codes, dtype=np.uint8)
    _check_block_ids(np.asarray(ids))
    n, m = codes.shape
    n_pairs = (m + 1) // 2
    sizes = np.diff(list_offsets)
    n_blocks_list = -(-sizes // BLOCK)
    block_offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(n_blocks_list, out=block_offsets[1:])
    total = int(block_offsets[-1])
    padded = np.zeros((total * BLOCK, 2 * n_pairs), dtype=np.uint8)
    block_ids = np.full(total * BLOCK, -1, dtype=np.int64)
    # destination row of each source row: its list's first block row + its rank in the list
    lists = np.repeat(np.arange(len(sizes)), sizes)
    dest = block_offsets[lists] * BLOCK + (np.arange(n) - np.asarray(list_offsets)[lists])
    padded[dest, :m] = codes
    block_ids[dest] = ids
    pairs = padded[:, 0::2] | (padded[:, 1::2] << 4)  # (rows, n_pairs)
    blocks = np.ascontiguousarray(pairs.reshape(total, BLOCK, n_pairs).transpose(0, 2, 1))
    return blocks, block_ids, block_offsets


@jit_batch
def _scatter_blocks(packed, n_pairs, order, ids, values, list_offsets, block_offsets, block_list, blocks, block_ids,
                    block_values):
    # block b of list l holds rows (b - block_offsets[l]) * BLOCK + lane of that list
    for b in prange(block_list.shape[0]):
        lst = block_list[b]
        first = list_offsets[lst] + (b - block_offsets[lst]) * BLOCK
        n_rows = min(BLOCK, list_offsets[lst + 1] - first)
        for lane in range(n_rows):
            row = order[first + lane]
            for j in range(n_pairs):
                blocks[b, j, lane] = packed[row, j]
            block_ids[b * BLOCK + lane] = ids[first + lane]
            for c in range(values.shape[1]):
                block_values[b * BLOCK + lane, c] = values[row, c]


def fs_layout_packed(packed: np.ndarray, n_pairs: int, order: np.ndarray, ids: np.ndarray,
                     list_offsets: np.ndarray, values: np.ndarray | None = None):
    """`fs_layout` and `fs_row_values` in one parallel pass, from codes already packed in
    pairs (byte j = sub-code 2j | sub-code 2j + 1 << 4: `pq.pq4_pack`, RB's sign bytes) and
    in input order: row ``order[i]`` is the i-th row of the list order (`ivf.ivf_layout`).

    packed uint8 (n, >= n_pairs) (only the first n_pairs columns are read) and values
    float32 (n, c) in input order, ids (n,) already in list order. Returns blocks,
    block_ids, block_offsets (as `fs_layout` of the unpacked ``packed[order]`` with `ids`)
    and block_values float32 (n_blocks * 32, c) (as `fs_row_values` of ``values[order]``;
    padding rows zero). Ids above `topk.RES_MAX_ID` raise ValueError, as in `fs_layout`.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    order = np.ascontiguousarray(order, dtype=np.int64)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    _check_block_ids(ids)
    list_offsets = np.ascontiguousarray(list_offsets, dtype=np.int64)
    if values is None:
        values = np.empty((packed.shape[0], 0), dtype=np.float32)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if packed.ndim != 2 or packed.shape[1] < n_pairs or order.shape[0] != packed.shape[0]:
        raise ValueError(f"expected packed codes (n, >= {n_pairs}) and order (n,), found {packed.shape} and "
                         f"{order.shape}")
    sizes = np.diff(list_offsets)
    n_blocks_list = -(-sizes // BLOCK)
    block_offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(n_blocks_list, out=block_offsets[1:])
    total = int(block_offsets[-1])
    block_list = np.repeat(np.arange(len(sizes), dtype=np.int64), n_blocks_list)
    blocks = np.zeros((total, n_pairs, BLOCK), dtype=np.uint8)
    block_ids = np.full(total * BLOCK, -1, dtype=np.int64)
    block_values = np.zeros((total * BLOCK, values.shape[1]), dtype=np.float32)
    _scatter_blocks(packed, n_pairs, order, ids, values, list_offsets, block_offsets, block_list, blocks, block_ids,
                    block_values)
    return blocks, block_ids, block_offsets, block_values


@jit
def _quantize_lut(luts, qmax, out, steps, biases):
    # fs_quantize_lut's numpy expression in one pass (the same float32 operations)
    nq, n_tab, m, _ = luts.shape
    mins = np.empty(m, dtype=np.float32)
    for qi in range(nq):
        for t in range(n_tab):
            fs_quantize_into(luts[qi, t], qmax, out[qi, t], mins, steps[qi], biases[qi], t)


def _row_ptr(context, builder, arr_type, arr_v, row, elem, width):
    """<width x elem>* to row `row` (int64) of a 2-D array whose rows are contiguous."""
    arr = context.make_array(arr_type)(context, builder, arr_v)
    data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
    at = builder.gep(data, [builder.mul(row, builder.extract_value(arr.strides, 0))])
    return builder.bitcast(at, ir.VectorType(elem, width).as_pointer())


def _tree(builder, x, op):
    """min ("<") or max (">") of a <16 x float> by a halving tree of compare + select
    (the same value as a scalar loop for non-NaN entries)."""
    i32 = ir.IntType(32)
    width = x.type.count
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, width), list(range(width))))
        hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, width), list(range(width, 2 * width))))
        x = builder.select(builder.fcmp_ordered(op, lo, hi), lo, hi)
    return builder.extract_element(x, ir.Constant(i32, 0))


def _butterfly(builder, rows, op):
    """The 16 minima (op "<") or maxima (">") of 16 rows of <16 x float>, as one vector whose
    lane i belongs to rows[i]: each level takes pairs of vectors, puts the lower halves of
    every lane group of both side by side and the upper halves side by side, and keeps the
    smaller (larger) of the two; rows stay in order (15 combining steps for 16 rows where a
    tree a row takes 64). Compare + select, as `_tree`."""
    i32 = ir.IntType(32)
    group = 16  # lanes per row in the vectors of this level
    while len(rows) > 1:
        half = group // 2
        lo_idx = [g + i for g in range(0, 32, group) for i in range(half)]
        hi_idx = [g + half + i for g in range(0, 32, group) for i in range(half)]
        out = []
        for x, y in zip(rows[0::2], rows[1::2]):
            lo = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 16), lo_idx))
            hi = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 16), hi_idx))
            out.append(builder.select(builder.fcmp_ordered(op, lo, hi), lo, hi))
        rows = out
        group = half
    return rows[0]


def _make_row_minmax(n_rows):
    """The first pass of `_quantize_one` over `n_rows` (1 or 16) table rows of 16 float32
    entries from row j on, in vector IR (LLVM leaves the scalar loop's min / max chains
    scalar): mins[j:j + n_rows] = the rows' minima; returns the largest float32(max - min)."""

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        vf = ir.VectorType(f32, 16)
        i64 = ir.IntType(64)
        lut_t, j_t, mins_t = signature.args
        lut_v, j_v, mins_v = args
        j0 = context.cast(builder, j_v, j_t, types.int64)
        rows = []
        for r in range(n_rows):
            j = builder.add(j0, ir.Constant(i64, r))
            rows.append(builder.load(_row_ptr(context, builder, lut_t, lut_v, j, f32, 16), align=4))
        mins = context.make_array(mins_t)(context, builder, mins_v)
        at = builder.gep(mins.data, [j0])
        if n_rows == 1:
            lo = _tree(builder, rows[0], "<")
            builder.store(lo, at)
            return builder.fsub(_tree(builder, rows[0], ">"), lo)
        lo = _butterfly(builder, rows, "<")
        builder.store(lo, builder.bitcast(at, vf.as_pointer()), align=4)
        return _tree(builder, builder.fsub(_butterfly(builder, rows, ">"), lo), ">")

    @intrinsic
    def row_minmax(typingctx, lut, j, mins):
        return types.float32(lut, j, mins), codegen
    return row_minmax


_row_minmax = _make_row_minmax(1)
_rows16_minmax = _make_row_minmax(16)


@intrinsic
def _row_quantize(typingctx, lut, j, lo, step, qmax, out):
    """The second pass of `_quantize_one` over row j in vector IR: the 16 entries
    clip(rint((lut[j] - lo) / step), 0, qmax) as uint8, stored to out[j, :16] and out[j, 16:]
    (the scalar loop's float32 operations; LLVM left that loop scalar)."""
    sig = types.void(lut, j, lo, step, qmax, out)

    def codegen(context, builder, signature, args):
        lut_v, j_v, lo_v, step_v, qmax_v, out_v = args
        f32 = ir.FloatType()
        vf = ir.VectorType(f32, 16)
        j = context.cast(builder, j_v, signature.args[1], types.int64)
        row = builder.load(_row_ptr(context, builder, signature.args[0], lut_v, j, f32, 16), align=4)
        lo = _splat(builder, context.cast(builder, lo_v, signature.args[2], types.float32), vf)
        step = _splat(builder, context.cast(builder, step_v, signature.args[3], types.float32), vf)
        qmax = _splat(builder, context.cast(builder, qmax_v, signature.args[4], types.float32), vf)
        x = builder.fdiv(builder.fsub(row, lo), step)
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf]), "llvm.rint.v16f32")
        x = builder.call(rint, [x])
        zero = cgutils.get_null_value(vf)
        x = builder.select(builder.fcmp_ordered(">", x, zero), x, zero)
        x = builder.select(builder.fcmp_ordered("<", x, qmax), x, qmax)
        v = builder.fptoui(x, ir.VectorType(ir.IntType(8), 16))
        dst = _row_ptr(context, builder, signature.args[5], out_v, j, ir.IntType(8), 32)
        pair = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), 32), list(range(16)) * 2))
        builder.store(pair, dst, align=1)
        return context.get_dummy_value()

    return sig, codegen


@jit
def _check_rows(lut, out):
    """The row intrinsics read 16 contiguous float32 a row and write 32 contiguous bytes
    (the strides of an array without rows are not checked: numpy gives them as 0)."""
    if lut.shape[1] != 16 or out.shape[1] != 32 or (lut.shape[0] > 0 and lut.strides[1] != 4) or (
            out.shape[0] > 0 and out.strides[1] != 1):
        raise ValueError("fast-scan tables must be float32 rows of 16 contiguous entries into uint8 rows of 32")
    if out.shape[0] < lut.shape[0]:
        raise ValueError("fast-scan tables: fewer output rows than table rows")


@jit
def _check_mins(mins, m):
    """The row intrinsics store 16 row minima at once and `_sum16` loads them so: the
    minima must be m contiguous float32."""
    if mins.shape[0] < m or (m > 0 and mins.strides[0] != 4):
        raise ValueError("mins must hold one contiguous float32 per table row")


@jit
def _quantize_one(lut, qmax, out, mins):
    """One float32 table (M, 16) -> out (2 * n_pairs, 32) uint8 and mins (M,); returns the
    step."""
    _check_rows(lut, out)
    m = lut.shape[0]
    _check_mins(mins, m)
    span = np.float32(0.0)
    for j in range(0, m - 15, 16):
        span = max(span, _rows16_minmax(lut, j, mins))
    for j in range(m - m % 16, m):
        span = max(span, _row_minmax(lut, j, mins))
    return _quantize_rows(lut, qmax, out, mins, span)


@jit
def _quantize_rows(lut, qmax, out, mins, span):
    """`_quantize_one`'s second pass, from the rows' minima and the largest span."""
    step = np.float32(span / np.float32(qmax)) if span > 0 else np.float32(1.0)
    for j in range(lut.shape[0]):
        _row_quantize(lut, j, mins[j], step, np.float32(qmax), out)
    return step


@jit
def fs_qmax(m):
    """The largest quantized table entry for M sub-quantizers: 2 * n_pairs of them summed
    in a uint16 lane stay below 65,536."""
    return min(255, 65535 // max(2 * ((m + 1) // 2), 1))


@jit
def fs_quantize_into(lut, qmax, out, mins, steps, biases, at):
    """`_quantize_one` of one float table (M, 16) into out, its step and its bias (the
    minima summed in float64 in sub-quantizer order) into steps[at] and biases[at]."""
    steps[at] = _quantize_one(lut, qmax, out, mins)
    biases[at] = _sum_mins(mins, lut.shape[0])


@jit
def _sum_mins(mins, m):
    """A table's bias: the minima of its m rows summed in float64, as float32: groups of 16
    by a halving tree (`_sum16`), then the rest in row order. The order is fixed by the code
    (no fast-math), so the bias is the same on every CPU; float64 holds the sum of float32
    values exactly unless their magnitudes span more than 2^29, so it rarely depends on the
    order at all. A serial sum was a quarter of a table's time (a 96-add dependency chain)."""
    total = 0.0
    for j in range(0, m - 15, 16):
        total += _sum16(mins, j)
    for j in range(m - m % 16, m):
        total += mins[j]
    return np.float32(total)


@intrinsic
def _sum16(typingctx, x, j):
    """float64 sum of x[j:j + 16] (float32, contiguous) by a halving tree of adds."""
    sig = types.float64(x, j)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        at = builder.gep(arr.data, [context.cast(builder, args[1], signature.args[1], types.int64)])
        v = builder.fpext(builder.load(builder.bitcast(at, ir.VectorType(ir.FloatType(), 16).as_pointer()), align=4),
                          ir.VectorType(ir.DoubleType(), 16))
        width = 16
        while width > 1:
            width //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width), list(range(width))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width), list(range(width, 2 * width))))
            v = builder.fadd(lo, hi)
        return builder.extract_element(v, ir.Constant(i32, 0))

    return sig, codegen


@jit
def _chunk_lanes(steps, biases, lst, ent_q, ent_p, c0, n_lanes, n_tables, lane_q, lane_t, lane_heap, lane_p,
                 lane_step, lane_bias):
    """The tables of one chunk of a list-major scan over list `lst`: its entries c0 ..
    c0 + n_lanes - 1 (ent_q / ent_p: query and probe index), idle lanes repeating the
    first. lane_heap / lane_p: each lane's query and probe; lane_q / lane_t: where its table
    is in the plan's qluts; lane_step / lane_bias: that table's step and bias."""
    for lane in range(LANES):
        e = c0 + lane if lane < n_lanes else c0
        q = ent_q[e]
        p = ent_p[e]
        lane_heap[lane] = q
        lane_p[lane] = p
        t = p if n_tables > 1 else 0
        lane_q[lane] = q
        lane_t[lane] = t
        lane_step[lane] = steps[q, t]
        lane_bias[lane] = biases[q, t]


def fs_quantize_lut(luts: np.ndarray):
    """float32 (nq, L, M, 16) -> uint8 tables (nq, L, 2 * n_pairs, 32), step a (nq, L) and
    bias (nq, L) = sum of per-sub-quantizer minima (`_sum_mins`). Per table: the step is the
    largest row span / qmax (1 for a constant table), each entry
    clip(rint((x - row minimum) / step), 0, qmax)."""
    luts = np.ascontiguousarray(luts, dtype=np.float32)
    nq, n_tab, m, _ = luts.shape
    n_pairs = (m + 1) // 2
    qmax = fs_qmax(m)
    out = np.zeros((nq, n_tab, 2 * n_pairs, 32), dtype=np.uint8)
    step = np.empty((nq, n_tab), dtype=np.float32)
    bias = np.empty((nq, n_tab), dtype=np.float32)
    _quantize_lut(luts, qmax, out, step, bias)
    return out, step, bias


@jit
def _check_terms(qluts, n_levels, steps, biases, probe_bias, blocks):
    """The lane kernels hold a query's per-probe terms as float32 (a float64 one would be
    rounded before the sum, where a scalar loop would not): any other width is refused.
    The shuffle kernels address block b's pair p at byte (b * n_pairs + p) * 32 of
    `blocks`: it must be C-contiguous (`_check_blocks`). The tables (..., 2 * pairs, 32)
    must cover the pairs of a block's level (its pairs over `n_levels`): the shuffles read
    them unchecked, and narrower tables scored rows with the bytes past their end."""
    if steps.itemsize != 4 or biases.itemsize != 4 or probe_bias.itemsize != 4:
        raise ValueError("steps, biases and probe_bias must be float32")
    _check_blocks(blocks)
    if n_levels < 1 or qluts.shape[-1] != 32 or qluts.shape[-2] < 2 * (blocks.shape[1] // n_levels):
        raise ValueError("fast-scan tables must be (..., 2 * pairs, 32), covering every pair of a block's level")


@jit
def _check_blocks(blocks):
    """`fs_layout`'s blocks (n_blocks, n_pairs, 32) uint8, C-contiguous (a strided view read
    another block's bytes on CPUs with a byte shuffle; no other layout is accepted)."""
    if blocks.ndim != 3 or blocks.shape[2] != 32 or blocks.itemsize != 1:
        raise ValueError("fast-scan blocks must be uint8 (n_blocks, n_pairs, 32)")
    # (numpy leaves the stride of an axis of length 1 free: only the others are checked)
    if blocks.shape[0] > 0 and blocks.shape[1] > 0 and (blocks.strides[2] != 1 or (
            blocks.shape[1] > 1 and blocks.strides[1] != 32) or (
            blocks.shape[0] > 1 and blocks.strides[0] != 32 * blocks.shape[1])):
        raise ValueError("fast-scan blocks must be C-contiguous (as fs_layout makes them)")


@jit
def _check_factor_terms(qluts, n_levels, steps, biases, probe_bias, probe_q_sq, row_factors, blocks):
    """`_check_terms` for the RB factor scans, whose lane intrinsics also read probe_q_sq as
    float32 and 32 rows of (g, |r|^2) as one vector (`_lanes_rows`): one a block row."""
    _check_terms(qluts, n_levels, steps, biases, probe_bias, blocks)
    _check_factor_rows(probe_q_sq, row_factors)
    if row_factors.shape[0] < blocks.shape[0] * 32:
        raise ValueError("row_factors must hold an entry for each of the blocks' rows (n_blocks * 32)")


@jit
def _check_factor_rows(probe_q_sq, row_factors):
    """`_check_factor_terms`'s checks of probe_q_sq and the rows' factors."""
    if probe_q_sq.itemsize != 4:
        raise ValueError("probe_q_sq must be float32")
    if row_factors.ndim == 1:
        if row_factors.itemsize == 4:  # |r|^2 alone, float32 (g = 1): the l2 row-term mode
            if row_factors.shape[0] > 0 and row_factors.strides[0] != 4:
                raise ValueError("a 1-D float32 row_factors (|r|^2 alone) must be contiguous (n_blocks * 32)")
        elif row_factors.itemsize != 2 or (row_factors.shape[0] > 0 and row_factors.strides[0] != 2):
            raise ValueError("a 1-D row_factors (g alone) must be contiguous float16 bits (uint16, n_blocks * 32)")
    elif row_factors.shape[0] > 0 and (row_factors.strides[0] != 8 or row_factors.strides[-1] != 4):
        raise ValueError("row_factors must be C-contiguous float32 (n_blocks * 32, 2)")


@jit
def _factor_base(bias, level_sum, pbias, row_factors):
    """A probe's (base, pbias) in a row's score pbias + g * (base + step * comb): the level
    sum of the table's bias, and the probe's bias outside the factor. With g alone (1-D
    row_factors: PQ's cosine to the reconstruction) the probe's bias goes inside, so the
    whole score is scaled: g * ((bias + pbias) + step * comb) + 0. With |r|^2 alone (1-D
    float32, g = 1) as with (g, |r|^2)."""
    if row_factors.ndim == 1 and row_factors.itemsize == 2:
        return np.float32(bias * level_sum + pbias), np.float32(0.0)
    return np.float32(bias * level_sum), np.float32(pbias)


@jit
def fs_scan(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floor):
    """One query: qluts (L, 2 * n_pairs, 32), steps/biases (L,) -> sorted top-k of the rows
    scoring >= floor (-inf: all; kernels/topk.py).

    score = probe_bias + bias + step * acc (larger is better)."""
    keys, counts, thr_s, thr_i = res_init_floors(np.full(1, floor, dtype=np.float32), k)
    _fs_scan_into(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, keys, counts, thr_s,
                  thr_i, 0, k)
    out_scores, out_ids = res_finish(keys, counts, k)
    return out_scores[0], out_ids[0]


@jit
def _fs_scan_into(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, keys, counts, thr_s,
                  thr_i, g, k):
    """`fs_scan`'s work, appending to reservoir g (kernels/topk.py; also a list-major scan's
    seed). A block's 32 scores and the rows at or above the reservoir's threshold come from
    one-lane vector IR (`_lanes_rows_pq1`, the multi-query scans' operation); only those rows
    meet the admission test. Every row is scored, so a step of either sign is exact (the block
    maximum this replaced bounded the block only for step >= 0; `fs_quantize_lut` never
    makes a negative one). Float inputs are float32, as the engine passes them."""
    _check_terms(qluts, 1, steps, biases, probe_bias, blocks)
    acc = np.empty((1, BLOCK), dtype=np.uint16)
    acc_row = acc[0]
    scores = np.empty((1, BLOCK), dtype=np.float32)
    masks = np.zeros(1, dtype=np.int64)
    lane_base = np.empty(1, dtype=np.float32)
    lane_step = np.empty(1, dtype=np.float32)
    lane_thr = np.empty(1, dtype=np.float32)
    n_tables = qluts.shape[0]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        lane_step[0] = steps[t]
        lane_base[0] = biases[t] + probe_bias[p]
        tab = qluts[t]
        for b in range(block_offsets[lst], block_offsets[lst + 1]):
            fs_block_accumulate(blocks, b, tab, acc_row)
            lane_thr[0] = thr_s[g]
            _lanes_rows_pq1(acc, lane_base, lane_step, lane_thr, scores, masks)
            m = masks[0]
            row0 = b * BLOCK
            while m != 0:
                v = _lowest_bit(m)
                m &= m - 1
                idx = block_ids[row0 + v]
                s = scores[0, v]
                if idx >= 0 and (s > thr_s[g] or (s == thr_s[g] and idx < thr_i[g])):
                    c = counts[g]
                    keys[g, c] = res_key(s, idx)
                    counts[g] = c + 1
                    if c + 1 == keys.shape[1]:
                        res_cut(keys, counts, thr_s, thr_i, g, k)


def fs_scan_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors):
    """`fs_scan` for every query: qluts (nq, L, 2 * n_pairs, 32), steps/biases (nq, L),
    floors (nq,). A lone query runs `fs_scan` itself on the calling thread (`_one_query`)."""
    if qluts.shape[0] == 1:
        return _one_query(fs_scan(qluts[0], steps[0], biases[0], blocks, block_ids, block_offsets, probes[0],
                                  probe_bias[0], k, floors[0]))
    return _fs_scan_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors)


def _one_query(found):
    """A one-query kernel's (scores (k,), ids (k,)) as a batch driver's (1, k) arrays. The
    batch drivers run a lone query through the one-query kernel instead of their prange
    loop, which opened a parallel region for one iteration: 5-15 us of a 0.25-0.3 ms single
    search (Zen 4)."""
    scores, ids = found
    return scores[None], ids[None]


@jit_batch
def _fs_scan_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors):
    nq = qluts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = fs_scan(qluts[qi], steps[qi], biases[qi], blocks, block_ids, block_offsets,
                       probes[qi], probe_bias[qi], k, floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def _acc_floor(base, step, floor):
    """The least sum a in [0, 65535] with float32(base + step * float32(a)) >= floor, the
    score formula of `fs_scan` (monotone in a when 0 < step < inf): 0 when floor is -inf or
    step is not a positive finite number (every row is then tested), 65535 when no sum
    reaches it (the rows at 65535 are then tested and fail). A row whose sum is below it
    scores below `floor`."""
    if not (step > 0 and step < np.inf) or floor == -np.inf:
        # (a floor of -inf with base -inf made t NaN, and the walk down from 65535 stopped at
        # a sum whose score overflowed to NaN: rows scoring -inf, which reach -inf, skipped)
        return np.uint16(0)
    t = (np.float64(floor) - np.float64(base)) / np.float64(step)
    if t <= 0.0:
        a = 0
    elif t < 65535.0:
        a = int(t)
    else:  # also NaN
        a = 65535
    while a > 0 and np.float32(base + step * np.float32(a - 1)) >= floor:
        a -= 1
    while a < 65535 and np.float32(base + step * np.float32(a)) < floor:
        a += 1
    return np.uint16(a)


@jit
def fs_scan_multi(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors):
    """`fs_scan` for a group of G queries that probe the same lists, one pass over the codes.

    qluts (G, L, 2 * n_pairs, 32) with 32-byte rows contiguous, steps/biases (G, L), probes
    (P,) shared by the group, probe_bias (G, P), floors (G,) -> scores float32 (G, k), ids
    int64 (G, k), row g identical to `fs_scan` of query g with floor floors[g]. Each block's
    code bytes are loaded from memory and split into nibbles once for LANES queries
    (`fs_block_accumulate_lanes`, faiss's `qbs`). Each query's threshold (its reservoir's,
    kernels/topk.py) is kept as the
    least integer sum that can reach it (`_acc_floor`, updated when it changes), so
    one integer compare of each lane's 32 sums (`_lanes_at_least`) picks the rows for
    fs_scan's admission test: a float block maximum and a test per lane cost 20% of the scan
    (measured, PQ96x4 on wordnet-minilm)."""
    _check_terms(qluts, 1, steps, biases, probe_bias, blocks)
    n_q = qluts.shape[0]
    keys, counts, thr_s, thr_i = res_init_floors(floors, k)
    acc = np.empty((LANES, BLOCK), dtype=np.uint16)
    masks = np.zeros(LANES, dtype=np.int64)
    bases = np.empty(n_q, dtype=np.float32)
    sum_floors = np.zeros(n_q + LANES, dtype=np.uint16)  # read for LANES lanes from any group start
    n_tables = qluts.shape[1]
    n_pairs = blocks.shape[1]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        for g in range(n_q):
            bases[g] = biases[g, t] + probe_bias[g, p]
            sum_floors[g] = _acc_floor(bases[g], steps[g, t], thr_s[g])
        for b in range(block_offsets[lst], block_offsets[lst + 1]):
            row0 = b * BLOCK
            for g0 in range(0, n_q, LANES):
                n_lanes = min(LANES, n_q - g0)
                fs_block_accumulate_group(blocks, b, 0, n_pairs, qluts, t, g0, n_lanes, acc)
                _lanes_at_least(acc, sum_floors, g0, masks)
                for lane in range(n_lanes):
                    m = masks[lane]
                    if m == 0:
                        continue
                    # fs_scan's admission test on the rows that can pass it, written out (a
                    # shared helper, even inlined in Numba IR, cost 12% in fs_scan: measured)
                    g = g0 + lane
                    base = bases[g]
                    step = steps[g, t]
                    while m != 0:
                        v = _lowest_bit(m)
                        m &= m - 1
                        idx = block_ids[row0 + v]
                        s = np.float32(base + step * np.float32(acc[lane, v]))
                        if idx >= 0 and (s > thr_s[g] or (s == thr_s[g] and idx < thr_i[g])):
                            c = counts[g]
                            keys[g, c] = res_key(s, idx)
                            counts[g] = c + 1
                            if c + 1 == keys.shape[1]:
                                res_cut(keys, counts, thr_s, thr_i, g, k)
                                sum_floors[g] = _acc_floor(base, step, thr_s[g])
    return res_finish(keys, counts, k)


@jit_batch
def fs_scan_multi_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, group_offsets,
                        k, floors):
    """`fs_scan_multi` over groups of queries: group i is queries
    group_offsets[i] : group_offsets[i + 1] (see `fs_query_groups`), which must all have the
    probe row probes[group_offsets[i]]. Shapes as in `fs_scan_batch`; out (nq, k), each row
    identical to `fs_scan_batch`'s."""
    nq = qluts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for gi in prange(group_offsets.shape[0] - 1):
        a = group_offsets[gi]
        e = group_offsets[gi + 1]
        if e > a:
            s, i = fs_scan_multi(qluts[a:e], steps[a:e], biases[a:e], blocks, block_ids, block_offsets, probes[a],
                                 probe_bias[a:e], k, floors[a:e])
            out_scores[a:e] = s
            out_ids[a:e] = i
    return out_scores, out_ids


def fs_query_groups(probes: np.ndarray, group: int):
    """Group queries for the multi-query drivers: queries with identical probe rows, at most
    `group` per group. probes int64 (nq, P) -> order int64 (nq,) (queries permuted so that
    groups are contiguous; the identity when every row is the same, e.g. without IVF) and
    group_offsets int64 (n_groups + 1,) into that order."""
    probes = np.asarray(probes)
    nq = probes.shape[0]
    group = max(1, int(group))
    if nq == 0 or bool((probes == probes[:1]).all()):
        order = np.arange(nq, dtype=np.int64)
        starts = np.arange(0, nq, group, dtype=np.int64)
    else:
        order = np.lexsort(probes.T[::-1]).astype(np.int64)  # rows in lexicographic order
        sp = probes[order]
        new_run = np.ones(nq, dtype=bool)
        new_run[1:] = (sp[1:] != sp[:-1]).any(axis=1)
        run_start = np.flatnonzero(new_run)
        rank = np.arange(nq) - run_start[np.cumsum(new_run) - 1]
        starts = np.flatnonzero(rank % group == 0).astype(np.int64)
    return order, np.append(starts, np.int64(nq)).astype(np.int64)


@jit
def fs_scan_factors(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets,
                    probes, probe_bias, probe_q_sq, is_l2, k, floor):
    """One query over RB codes (kernels/binary.py) through the fast scan; only rows scoring
    >= floor (-inf: all; kernels/topk.py) are kept.

    The sub-codes of a row are `n_levels` equal groups (one per sign level); level l's
    tables are level 0's times 2**-l, so only level 0's tables are quantized (qluts
    (L, 2 * pairs_per_level, 32), steps/biases (L,)) and each level is accumulated on its
    own: t = sum_l 2**-l (bias + step * acc_l). Quantizing all levels' tables together
    would spend the uint8 range on the largest level and round the small ones away.
    row_factors (n_blocks * 32, 2) holds (g, |r|^2) per block row; with est = g * t the
    score is probe_bias + est (ip) or -(probe_q_sq - 2 est + |r|^2) (l2), as in
    `vecz.kernels.binary.rb_lut_scan`.

    Every block's rows are scored and filtered against the threshold in vector code. (A
    per-block bound of the best score, from each block's range of g and |r|^2, used to skip
    blocks before that: on wordnet-minilm and -gemma it cost more than it skipped, the
    kernel took 1.16-1.41x as long with it for RB1, RB2 and PQ x4, flat and IVF, ip, l2 and
    cosine.)

    Scaled mode (PQ x4's cosine to the reconstruction, engine/quantizers.py): row_factors
    1-D uint16 (n_blocks * 32,) holds g alone as float16 bits (Numba has no float16 arrays;
    the row kernel converts 32 at once), with n_levels 1 and ip, and the score is
    g * ((probe_bias + bias) + step * acc), the whole score scaled (`_factor_base`).

    Terms mode (PQ x4 under l2 on IVF residuals, engine/quantizers.py `PQ.own_list_tables`):
    row_factors 1-D float32 (n_blocks * 32,) holds |r|^2 alone, each row's own-list term, and
    g is 1: the l2 score -(probe_q_sq - 2 (bias + step * acc) + term)."""
    keys, counts, thr_s, thr_i = res_init_floors(np.full(1, floor, dtype=np.float32), k)
    _fs_scan_factors_into(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets,
                          probes, probe_bias, probe_q_sq, is_l2, keys, counts, thr_s, thr_i, 0, k)
    out_scores, out_ids = res_finish(keys, counts, k)
    return out_scores[0], out_ids[0]


@jit
def _fs_scan_factors_into(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets,
                          probes, probe_bias, probe_q_sq, is_l2, keys, counts, thr_s, thr_i, g, k):
    """`fs_scan_factors`'s work, appending to reservoir g (kernels/topk.py; also a
    list-major scan's seed).

    A block's float work (level sums, every row's score and the rows at or above the
    threshold) runs as one-lane vector IR (`_lanes_comb1`, `_lanes_rows1`: the multi-query
    scans' operations, so all of them score a row alike);
    only the rows the mask keeps meet the admission test. Per row, the score is
    pbias + g * (base + step * comb) (ip) or -((q_sq - 2 est) + |r|^2) in float32
    (l2), comb = sum_l 2**-l float32(acc_l) in float32 (tests/test_fastscan.py's numpy
    reference)."""
    _check_factor_terms(qluts, n_levels, steps, biases, probe_bias, probe_q_sq, row_factors, blocks)
    acc = np.empty((1, BLOCK), dtype=np.uint16)
    acc_row = acc[0]
    comb = np.empty((1, BLOCK), dtype=np.float32)
    scores = np.empty((1, BLOCK), dtype=np.float32)
    masks = np.zeros(1, dtype=np.int64)
    lane_base = np.empty(1, dtype=np.float32)
    lane_step = np.empty(1, dtype=np.float32)
    lane_pbias = np.empty(1, dtype=np.float32)
    lane_q_sq = np.empty(1, dtype=np.float32)
    lane_thr = np.empty(1, dtype=np.float32)
    n_tables = qluts.shape[0]
    level_pairs = blocks.shape[1] // n_levels
    level_sum = np.float32(0.0)
    w = np.float32(1.0)
    for _ in range(n_levels):
        level_sum += w
        w *= np.float32(0.5)
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        lane_base[0], lane_pbias[0] = _factor_base(biases[t], level_sum, probe_bias[p], row_factors)
        lane_step[0] = steps[t]
        lane_q_sq[0] = probe_q_sq[p]
        tab = qluts[t]
        for b in range(block_offsets[lst], block_offsets[lst + 1]):
            w = np.float32(1.0)
            for lv in range(n_levels):
                fs_block_accumulate_range(blocks, b, lv * level_pairs, level_pairs, tab, acc_row)
                _lanes_comb1(acc, comb, w, lv == 0)
                w *= np.float32(0.5)
            lane_thr[0] = thr_s[g]
            row0 = b * BLOCK
            _lanes_rows1(comb, row_factors, row0, lane_base, lane_step, lane_pbias, lane_q_sq, lane_thr, is_l2,
                         scores, masks)
            m = masks[0]
            while m != 0:
                v = _lowest_bit(m)
                m &= m - 1
                idx = block_ids[row0 + v]
                s = scores[0, v]
                if idx >= 0 and (s > thr_s[g] or (s == thr_s[g] and idx < thr_i[g])):
                    c = counts[g]
                    keys[g, c] = res_key(s, idx)
                    counts[g] = c + 1
                    if c + 1 == keys.shape[1]:
                        res_cut(keys, counts, thr_s, thr_i, g, k)


def fs_scan_factors_batch(qluts, steps, biases, n_levels, blocks, block_ids, row_factors,
                          block_offsets, probes, probe_bias, probe_q_sq, is_l2, k, floors):
    """`fs_scan_factors` for every query (shapes as in `fs_scan_batch`, probe_q_sq (nq, P));
    a lone query on the calling thread (`_one_query`)."""
    if qluts.shape[0] == 1:
        return _one_query(fs_scan_factors(qluts[0], steps[0], biases[0], n_levels, blocks, block_ids, row_factors,
                                          block_offsets, probes[0], probe_bias[0], probe_q_sq[0], is_l2, k,
                                          floors[0]))
    return _fs_scan_factors_batch(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets,
                                  probes, probe_bias, probe_q_sq, is_l2, k, floors)


@jit_batch
def _fs_scan_factors_batch(qluts, steps, biases, n_levels, blocks, block_ids, row_factors,
                           block_offsets, probes, probe_bias, probe_q_sq, is_l2, k, floors):
    nq = qluts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = fs_scan_factors(qluts[qi], steps[qi], biases[qi], n_levels, blocks, block_ids, row_factors,
                               block_offsets, probes[qi], probe_bias[qi], probe_q_sq[qi], is_l2, k,
                               floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def fs_scan_factors_multi(qluts, steps, biases, n_levels, blocks, block_ids, row_factors,
                          block_offsets, probes, probe_bias, probe_q_sq, is_l2, k, floors):
    """`fs_scan_factors` for a group of G queries that probe the same lists (as
    `fs_scan_multi`): qluts (G, L, 2 * pairs_per_level, 32), steps/biases (G, L), probes (P,),
    probe_bias/probe_q_sq (G, P), floors (G,) -> (G, k), row g identical to `fs_scan_factors`
    of query g with floor floors[g]. The float work per block (level sums, the row filter
    against each query's threshold) runs on all LANES queries at once in vector IR."""
    _check_factor_terms(qluts, n_levels, steps, biases, probe_bias, probe_q_sq, row_factors, blocks)
    n_q = qluts.shape[0]
    keys, counts, thr_s, thr_i = res_init_floors(floors, k)
    acc = np.empty((LANES, BLOCK), dtype=np.uint16)
    comb = np.empty((LANES, BLOCK), dtype=np.float32)
    lane_thr = np.zeros(LANES, dtype=np.float32)
    scores = np.empty((LANES, BLOCK), dtype=np.float32)
    masks = np.zeros(LANES, dtype=np.int64)
    # per-query terms of the current probe, padded to whole lanes for `_lanes_rows`
    n_pad = -(-n_q // LANES) * LANES
    bases = np.zeros(n_pad, dtype=np.float32)
    lane_steps = np.zeros(n_pad, dtype=np.float32)
    lane_pbias = np.zeros(n_pad, dtype=np.float32)
    lane_q_sq = np.zeros(n_pad, dtype=np.float32)
    n_tables = qluts.shape[1]
    level_pairs = blocks.shape[1] // n_levels
    level_sum = np.float32(0.0)
    w = np.float32(1.0)
    for _ in range(n_levels):
        level_sum += w
        w *= np.float32(0.5)
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        for g in range(n_q):
            bases[g], lane_pbias[g] = _factor_base(biases[g, t], level_sum, probe_bias[g, p], row_factors)
            lane_steps[g] = steps[g, t]
            lane_q_sq[g] = probe_q_sq[g, p]
        for b in range(block_offsets[lst], block_offsets[lst + 1]):
            row0 = b * BLOCK
            for g0 in range(0, n_q, LANES):
                n_lanes = min(LANES, n_q - g0)
                w = np.float32(1.0)
                for lv in range(n_levels):
                    fs_block_accumulate_group(blocks, b, lv * level_pairs, level_pairs, qluts, t, g0, n_lanes, acc)
                    _lanes_comb(acc, comb, w, lv == 0)
                    w *= np.float32(0.5)
                for lane in range(n_lanes):
                    lane_thr[lane] = thr_s[g0 + lane]
                # every row's score and the rows at or above the threshold in vector IR
                # (as fs_scan_factors_lists), then fs_scan_factors's admission test on those
                _lanes_rows(comb, row_factors, row0, bases[g0:], lane_steps[g0:], lane_pbias[g0:], lane_q_sq[g0:],
                            lane_thr, is_l2, scores, masks)
                for lane in range(n_lanes):
                    m = masks[lane]
                    if m == 0:
                        continue
                    g = g0 + lane
                    while m != 0:
                        v = _lowest_bit(m)
                        m &= m - 1
                        idx = block_ids[row0 + v]
                        s = scores[lane, v]
                        if idx >= 0 and (s > thr_s[g] or (s == thr_s[g] and idx < thr_i[g])):
                            c = counts[g]
                            keys[g, c] = res_key(s, idx)
                            counts[g] = c + 1
                            if c + 1 == keys.shape[1]:
                                res_cut(keys, counts, thr_s, thr_i, g, k)
    return res_finish(keys, counts, k)


@jit_batch
def fs_scan_factors_multi_batch(qluts, steps, biases, n_levels, blocks, block_ids, row_factors,
                                block_offsets, probes, probe_bias, probe_q_sq, is_l2, group_offsets, k, floors):
    """`fs_scan_factors_multi` over the query groups of `fs_query_groups` (as
    `fs_scan_multi_batch`); shapes as in `fs_scan_factors_batch`."""
    nq = qluts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for gi in prange(group_offsets.shape[0] - 1):
        a = group_offsets[gi]
        e = group_offsets[gi + 1]
        if e > a:
            s, i = fs_scan_factors_multi(qluts[a:e], steps[a:e], biases[a:e], n_levels, blocks, block_ids,
                                         row_factors, block_offsets, probes[a], probe_bias[a:e],
                                         probe_q_sq[a:e], is_l2, k, floors[a:e])
            out_scores[a:e] = s
            out_ids[a:e] = i
    return out_scores, out_ids


# The list-major scans first scan each query's SEED_PROBES nearest lists on their own
# (probes are best first), then the rest list by list. Lists come in index order there, so
# a query's top k would otherwise fill with whatever its first lists hold and be replaced
# again and again. Measured with heaps, before the reservoirs: on wordnet-minilm
# IVF256,OPQ96x4 (nprobe 128, k 80) the seed cut heap pushes from 702 to 315 a query and
# the scan from 88.5 to 70.4 us a query (k 10: 59.5 to 56-60, within noise); in a prototype
# that seeded with 1, 2, 4, 8 or 16 lists, one was the fastest (74.6, 75.3, 77.3, 81.7,
# 91.2 us). A compile-time constant (Numba freezes it).
SEED_PROBES = 1


@jit
def fs_invert_probes(probes, n_lists, first):
    """probes int64 (nq, P), entries < 0 and probe indices < `first` (>= 0) ignored -> for each list
    the (query, probe index) pairs that visit it: offsets int64 (n_lists + 1,), queries
    int64 and probe indices int64 (offsets[-1],), each list's pairs in query order."""
    nq, n_probe = probes.shape
    offsets = np.zeros(n_lists + 1, dtype=np.int64)
    for q in range(nq):
        for p in range(first, n_probe):
            lst = probes[q, p]
            if lst >= 0:
                offsets[lst + 1] += 1
    for lst in range(n_lists):
        offsets[lst + 1] += offsets[lst]
    fill = offsets[:n_lists].copy()
    queries = np.empty(offsets[n_lists], dtype=np.int64)
    probe_index = np.empty(offsets[n_lists], dtype=np.int64)
    for q in range(nq):
        for p in range(first, n_probe):
            lst = probes[q, p]
            if lst >= 0:
                queries[fill[lst]] = q
                probe_index[fill[lst]] = p
                fill[lst] += 1
    return offsets, queries, probe_index


@jit
def fs_scan_lists(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors):
    """`fs_scan` for G queries with their own probes, list-major (faiss's IVF fast scan):
    each list's blocks are scanned once per chunk of up to LANES of the queries that probe
    it, each chunk's tables gathered by index (`fs_block_accumulate_gather`), and each query
    appends to its own reservoir. Shapes as in `fs_scan_batch` (qluts (G, L, 2 * n_pairs, 32),
    probes (G, P), probe_bias (G, P), floors (G,)) -> (G, k), row g identical to `fs_scan` of
    query g with floor floors[g]:
    the reservoirs admit (score, id) by a total order, so the visiting order does not matter.
    Each query's first `SEED_PROBES` probes are scanned on their own into its reservoir
    first (`_fs_scan_into`); `fs_invert_probes(probes, n_lists, SEED_PROBES)` inverts the rest."""
    return _scan_lists(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors)


@jit
def _scan_lists(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors):
    """`fs_scan_lists`'s work."""
    _check_terms(qluts, 1, steps, biases, probe_bias, blocks)
    n_q = probes.shape[0]
    keys, counts, thr_s, thr_i = res_init_floors(floors, k)
    n_lists = block_offsets.shape[0] - 1
    seed = min(SEED_PROBES, probes.shape[1])
    n_pairs = blocks.shape[1]
    for q in range(n_q):  # each query's nearest lists first (`SEED_PROBES`)
        _fs_scan_into(qluts[q], steps[q], biases[q], blocks, block_ids, block_offsets, probes[q, :seed],
                      probe_bias[q, :seed], keys, counts, thr_s, thr_i, q, k)
    list_offsets, ent_q, ent_p = fs_invert_probes(probes, n_lists, seed)
    n_tables = qluts.shape[1]
    acc = np.empty((LANES, BLOCK), dtype=np.uint16)
    lane_thr = np.zeros(LANES, dtype=np.float32)
    scores = np.empty((LANES, BLOCK), dtype=np.float32)
    masks = np.zeros(LANES, dtype=np.int64)
    lane_q = np.zeros(LANES, dtype=np.int64)
    lane_t = np.zeros(LANES, dtype=np.int64)
    lane_heap = np.zeros(LANES, dtype=np.int64)
    lane_p = np.zeros(LANES, dtype=np.int64)
    lane_bias = np.zeros(LANES, dtype=np.float32)
    lane_base = np.zeros(LANES, dtype=np.float32)
    lane_step = np.zeros(LANES, dtype=np.float32)
    for lst in range(n_lists):
        b0 = block_offsets[lst]
        b1 = block_offsets[lst + 1]
        e0 = list_offsets[lst]
        e1 = list_offsets[lst + 1]
        if b1 == b0:
            continue
        for c0 in range(e0, e1, LANES):
            n_lanes = min(LANES, e1 - c0)
            _chunk_lanes(steps, biases, lst, ent_q, ent_p, c0, n_lanes, n_tables, lane_q, lane_t, lane_heap,
                         lane_p, lane_step, lane_bias)
            for lane in range(LANES):
                lane_base[lane] = lane_bias[lane] + probe_bias[lane_heap[lane], lane_p[lane]]
            for b in range(b0, b1):
                _accumulate_chunk(blocks, b, 0, n_pairs, qluts, lane_q, lane_t, n_lanes, acc)
                for lane in range(LANES):
                    lane_thr[lane] = thr_s[lane_heap[lane]]
                # every row's score and the rows at or above the threshold, in vector IR
                # (this replaces fs_scan's block maximum test); then fs_scan's admission
                # test on those rows only
                _lanes_rows_pq(acc, lane_base, lane_step, lane_thr, scores, masks)
                row0 = b * BLOCK
                for lane in range(n_lanes):  # written out: a shared helper cost 12% (see fs_scan_multi)
                    m_bits = masks[lane]
                    if m_bits == 0:
                        continue
                    q = lane_heap[lane]
                    while m_bits != 0:
                        v = _lowest_bit(m_bits)
                        m_bits &= m_bits - 1
                        idx = block_ids[row0 + v]
                        sc = scores[lane, v]
                        if idx >= 0 and (sc > thr_s[q] or (sc == thr_s[q] and idx < thr_i[q])):
                            c = counts[q]
                            keys[q, c] = res_key(sc, idx)
                            counts[q] = c + 1
                            if c + 1 == keys.shape[1]:
                                res_cut(keys, counts, thr_s, thr_i, q, k)
    return res_finish(keys, counts, k)


def fs_scan_lists_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors,
                        n_parts):
    """`fs_scan_lists` on `n_parts` contiguous ranges of queries, one per thread
    (numba.get_num_threads(): no top k is shared between threads; `fs_scan_lists` itself is
    the serial twin). Shapes as in `fs_scan_batch`; out (nq, k), each row identical to
    `fs_scan_batch`'s."""
    return _scan_lists_parts(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors,
                             n_parts)


@jit_batch
def _scan_lists_parts(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k, floors, n_parts):
    """`_scan_lists` on `n_parts` contiguous ranges of queries, one per thread."""
    nq = probes.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    n_parts = max(1, min(n_parts, nq))
    for r in prange(n_parts):
        a = r * nq // n_parts
        e = (r + 1) * nq // n_parts
        s, i = _scan_lists(qluts[a:e], steps[a:e], biases[a:e], blocks, block_ids, block_offsets, probes[a:e],
                           probe_bias[a:e], k, floors[a:e])
        out_scores[a:e] = s
        out_ids[a:e] = i
    return out_scores, out_ids


@jit
def fs_scan_factors_lists(qluts, steps, biases, n_levels, blocks, block_ids, row_factors,
                          block_offsets, probes, probe_bias, probe_q_sq, is_l2, k, floors):
    """`fs_scan_factors` for G queries with their own probes, list-major as `fs_scan_lists`:
    shapes as in `fs_scan_factors_batch`, floors (G,) -> (G, k), row g identical to
    `fs_scan_factors` of query g with floor floors[g]."""
    return _scan_factors_lists(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets, probes,
                               probe_bias, probe_q_sq, is_l2, k, floors)


@jit
def _scan_factors_lists(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets, probes,
                        probe_bias, probe_q_sq, is_l2, k, floors):
    """`fs_scan_factors_lists`'s work."""
    _check_factor_terms(qluts, n_levels, steps, biases, probe_bias, probe_q_sq, row_factors, blocks)
    n_q = probes.shape[0]
    keys, counts, thr_s, thr_i = res_init_floors(floors, k)
    n_lists = block_offsets.shape[0] - 1
    seed = min(SEED_PROBES, probes.shape[1])
    level_pairs = blocks.shape[1] // n_levels
    for q in range(n_q):  # each query's nearest lists first (`SEED_PROBES`)
        _fs_scan_factors_into(qluts[q], steps[q], biases[q], n_levels, blocks, block_ids, row_factors,
                              block_offsets, probes[q, :seed], probe_bias[q, :seed],
                              probe_q_sq[q, :seed], is_l2, keys, counts, thr_s, thr_i, q, k)
    list_offsets, ent_q, ent_p = fs_invert_probes(probes, n_lists, seed)
    acc = np.empty((LANES, BLOCK), dtype=np.uint16)
    comb = np.empty((LANES, BLOCK), dtype=np.float32)
    lane_q = np.zeros(LANES, dtype=np.int64)
    lane_t = np.zeros(LANES, dtype=np.int64)
    lane_heap = np.zeros(LANES, dtype=np.int64)
    lane_p = np.zeros(LANES, dtype=np.int64)
    lane_bias = np.zeros(LANES, dtype=np.float32)
    lane_base = np.zeros(LANES, dtype=np.float32)
    lane_step = np.zeros(LANES, dtype=np.float32)
    lane_pbias = np.zeros(LANES, dtype=np.float32)
    lane_q_sq = np.zeros(LANES, dtype=np.float32)
    lane_thr = np.zeros(LANES, dtype=np.float32)
    scores = np.empty((LANES, BLOCK), dtype=np.float32)
    masks = np.zeros(LANES, dtype=np.int64)
    n_tables = qluts.shape[1]
    level_sum = np.float32(0.0)
    lw = np.float32(1.0)
    for _ in range(n_levels):
        level_sum += lw
        lw *= np.float32(0.5)
    for lst in range(n_lists):
        b0 = block_offsets[lst]
        b1 = block_offsets[lst + 1]
        e0 = list_offsets[lst]
        e1 = list_offsets[lst + 1]
        if b1 == b0:
            continue
        for c0 in range(e0, e1, LANES):
            n_lanes = min(LANES, e1 - c0)
            _chunk_lanes(steps, biases, lst, ent_q, ent_p, c0, n_lanes, n_tables, lane_q, lane_t, lane_heap,
                         lane_p, lane_step, lane_bias)
            for lane in range(LANES):
                lane_base[lane], lane_pbias[lane] = _factor_base(lane_bias[lane], level_sum,
                                                                 probe_bias[lane_heap[lane], lane_p[lane]],
                                                                 row_factors)
                lane_q_sq[lane] = probe_q_sq[lane_heap[lane], lane_p[lane]]
            for b in range(b0, b1):
                row0 = b * BLOCK
                lw = np.float32(1.0)
                for lv in range(n_levels):
                    _accumulate_chunk(blocks, b, lv * level_pairs, level_pairs, qluts, lane_q, lane_t, n_lanes, acc)
                    _lanes_comb(acc, comb, lw, lv == 0)
                    lw *= np.float32(0.5)
                for lane in range(LANES):
                    lane_thr[lane] = thr_s[lane_heap[lane]]
                # every row's score and the rows at or above the threshold, in vector IR;
                # then fs_scan_factors's admission test on those rows only
                _lanes_rows(comb, row_factors, row0, lane_base, lane_step, lane_pbias, lane_q_sq, lane_thr, is_l2,
                            scores, masks)
                for lane in range(n_lanes):  # written out: a shared helper cost 12% (see fs_scan_multi)
                    m_bits = masks[lane]
                    if m_bits == 0:
                        continue
                    q = lane_heap[lane]
                    while m_bits != 0:
                        v = _lowest_bit(m_bits)
                        m_bits &= m_bits - 1
                        idx = block_ids[row0 + v]
                        sc = scores[lane, v]
                        if idx >= 0 and (sc > thr_s[q] or (sc == thr_s[q] and idx < thr_i[q])):
                            c = counts[q]
                            keys[q, c] = res_key(sc, idx)
                            counts[q] = c + 1
                            if c + 1 == keys.shape[1]:
                                res_cut(keys, counts, thr_s, thr_i, q, k)
    return res_finish(keys, counts, k)


def fs_scan_factors_lists_batch(qluts, steps, biases, n_levels, blocks, block_ids, row_factors,
                                block_offsets, probes, probe_bias, probe_q_sq, is_l2, k, floors, n_parts):
    """`fs_scan_factors_lists` on one contiguous range of queries per thread (as
    `fs_scan_lists_batch`); shapes as in `fs_scan_factors_batch`."""
    return _scan_factors_lists_parts(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets,
                                     probes, probe_bias, probe_q_sq, is_l2, k, floors, n_parts)


@jit_batch
def _scan_factors_lists_parts(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets,
                              probes, probe_bias, probe_q_sq, is_l2, k, floors, n_parts):
    """`_scan_factors_lists` on `n_parts` contiguous ranges of queries, one per thread (the
    inputs checked here, outside the parallel loop)."""
    _check_factor_terms(qluts, n_levels, steps, biases, probe_bias, probe_q_sq, row_factors, blocks)
    nq = probes.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    n_parts = max(1, min(n_parts, nq))
    for r in prange(n_parts):
        a = r * nq // n_parts
        e = (r + 1) * nq // n_parts
        s, i = _scan_factors_lists(qluts[a:e], steps[a:e], biases[a:e], n_levels, blocks, block_ids, row_factors,
                                   block_offsets, probes[a:e], probe_bias[a:e], probe_q_sq[a:e], is_l2, k,
                                   floors[a:e])
        out_scores[a:e] = s
        out_ids[a:e] = i
    return out_scores, out_ids


def fs_block_bytes(blocks: np.ndarray) -> np.ndarray:
    """The code bytes of every block row: uint8 (n_blocks, n_pairs, 32) -> (n_blocks * 32,
    n_pairs), byte j of a row holding its sub-codes 2j (low nibble) and 2j + 1 (high), the
    inverse of the packing of `fs_layout` (padding rows included, in block order)."""
    n_blocks, n_pairs, _ = blocks.shape
    return np.ascontiguousarray(blocks.transpose(0, 2, 1)).reshape(n_blocks * BLOCK, n_pairs)


def fs_row_values(values: np.ndarray, block_ids_len: int, list_offsets: np.ndarray) -> np.ndarray:
    """Per-row values (n, ...) ordered by list -> the block row order of `fs_layout`
    (padding rows zero), so kernels read them beside the codes."""
    values = np.asarray(values)
    sizes = np.diff(list_offsets)
    n_blocks_list = -(-sizes // BLOCK)
    block_offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(n_blocks_list, out=block_offsets[1:])
    lists = np.repeat(np.arange(len(sizes)), sizes)
    dest = block_offsets[lists] * BLOCK + (np.arange(values.shape[0]) - np.asarray(list_offsets)[lists])
    out = np.zeros((block_ids_len,) + values.shape[1:], dtype=values.dtype)
    out[dest] = values
    return out
