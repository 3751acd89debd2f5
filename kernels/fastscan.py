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
host has AVX2 (checked once at import) and otherwise runs a scalar loop with identical
integer results. Reference: tests/reference/pq.py (`fastscan_accumulate_ref`).
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._jit import jit, jit_batch
from .topk import topk_init, topk_push, topk_sort

__all__ = [
    "BLOCK",
    "HAS_SHUFFLE",
    "fs_layout",
    "fs_quantize_lut",
    "fs_block_accumulate",
    "fs_block_accumulate_range",
    "fs_scan",
    "fs_scan_batch",
    "fs_scan_factors",
    "fs_scan_factors_batch",
    "fs_row_values",
]

BLOCK = 32
HAS_SHUFFLE = bool(llvm_binding.get_host_cpu_features().get("avx2", False))


@intrinsic
def _shuffle_accumulate(typingctx, blocks, block_index, pair_start, pair_count, qluts, out):
    """acc (32 x uint16) over pairs [pair_start, pair_start + pair_count) of one block, with
    tables qluts[0 : 2 * pair_count], by AVX2 byte shuffles; written to `out`."""
    sig = types.void(blocks, block_index, pair_start, pair_count, qluts, out)

    def codegen(context, builder, signature, args):
        blocks_v, index_v, start_v, count_v, qlut_v, out_v = args
        blocks_a = context.make_array(signature.args[0])(context, builder, blocks_v)
        qlut_a = context.make_array(signature.args[4])(context, builder, qlut_v)
        out_a = context.make_array(signature.args[5])(context, builder, out_v)
        i8 = ir.IntType(8)
        i64 = ir.IntType(64)
        v8 = ir.VectorType(i8, 32)
        v16 = ir.VectorType(ir.IntType(16), 32)
        row_pairs = builder.extract_value(blocks_a.shape, 1)
        index = context.cast(builder, index_v, signature.args[1], types.int64)
        first = context.cast(builder, start_v, signature.args[2], types.int64)
        n_pairs = context.cast(builder, count_v, signature.args[3], types.int64)
        start = builder.mul(builder.add(builder.mul(index, row_pairs), first), ir.Constant(i64, 32))
        base = builder.gep(blocks_a.data, [start])
        lut_base = qlut_a.data
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8, v8]), "llvm.x86.avx2.pshuf.b")
        low = ir.Constant(v8, [15] * 32)
        four = ir.Constant(v8, [4] * 32)
        w16 = ir.VectorType(ir.IntType(16), 16)
        eight = ir.Constant(w16, [8] * 16)
        # No widening (faiss's trick): a shuffle result read as 16 uint16 words adds
        # row 2i + 256 * row 2i+1 into `all`, and its high bytes alone into `odd`; at the end
        # even rows = all - 256 * odd (mod 2**16, the same wrap-around as a uint16 sum).
        all_ptr = cgutils.alloca_once_value(builder, ir.Constant(w16, [0] * 16))
        odd_ptr = cgutils.alloca_once_value(builder, ir.Constant(w16, [0] * 16))
        with cgutils.for_range(builder, n_pairs) as loop:
            j = loop.index
            codes_ptr = builder.bitcast(builder.gep(base, [builder.mul(j, ir.Constant(i64, 32))]), v8.as_pointer())
            codes = builder.load(codes_ptr, align=1)
            lo = builder.and_(codes, low)
            hi = builder.and_(builder.lshr(codes, four), low)
            t_off = builder.mul(j, ir.Constant(i64, 64))
            t0 = builder.load(builder.bitcast(builder.gep(lut_base, [t_off]), v8.as_pointer()), align=1)
            t1 = builder.load(builder.bitcast(builder.gep(lut_base, [builder.add(t_off, ir.Constant(i64, 32))]),
                                              v8.as_pointer()), align=1)
            r0 = builder.bitcast(builder.call(fn, [t0, lo]), w16)
            r1 = builder.bitcast(builder.call(fn, [t1, hi]), w16)
            builder.store(builder.add(builder.load(all_ptr), builder.add(r0, r1)), all_ptr)
            odd = builder.add(builder.lshr(r0, eight), builder.lshr(r1, eight))
            builder.store(builder.add(builder.load(odd_ptr), odd), odd_ptr)
        odd_sum = builder.load(odd_ptr)
        even_sum = builder.sub(builder.load(all_ptr), builder.shl(odd_sum, eight))
        mask = [i // 2 + (16 if i % 2 else 0) for i in range(32)]  # interleave even, odd rows
        acc = builder.shuffle_vector(even_sum, odd_sum, ir.Constant(ir.VectorType(ir.IntType(32), 32), mask))
        builder.store(acc, builder.bitcast(out_a.data, v16.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


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
def fs_block_accumulate(blocks, block_index, qluts, out):
    """acc[v] = sum_m qluts[m, code[v, m]] for the 32 rows of one block (uint16)."""
    fs_block_accumulate_range(blocks, block_index, 0, blocks.shape[1], qluts, out)


def fs_layout(codes: np.ndarray, ids: np.ndarray, list_offsets: np.ndarray):
    """Blocked layout of unpacked 4-bit codes uint8 (n, M) ordered by list.

    Returns blocks uint8 (n_blocks, ceil(M/2), 32), block ids int64 (n_blocks * 32,) with
    -1 for padding rows, and block offsets int64 (nlist + 1,) of each list.
    """
    codes = np.asarray(codes, dtype=np.uint8)
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


def fs_quantize_lut(luts: np.ndarray):
    """float32 (nq, L, M, 16) -> uint8 tables (nq, L, 2 * n_pairs, 32), step a (nq, L) and
    bias (nq, L) = sum of per-sub-quantizer minima."""
    luts = np.asarray(luts, dtype=np.float32)
    nq, n_tab, m, ksub = luts.shape
    n_pairs = (m + 1) // 2
    qmax = min(255, 65535 // max(2 * n_pairs, 1))
    mins = luts.min(axis=3)
    span = (luts.max(axis=3) - mins).max(axis=2)
    step = np.where(span > 0, span / qmax, 1.0).astype(np.float32)
    q = np.rint((luts - mins[..., None]) / step[..., None, None])
    q = np.clip(q, 0, qmax).astype(np.uint8)
    out = np.zeros((nq, n_tab, 2 * n_pairs, 32), dtype=np.uint8)
    out[:, :, :m, :16] = q
    out[:, :, :m, 16:] = q
    bias = mins.sum(axis=2, dtype=np.float64).astype(np.float32)
    return out, step, bias


@jit
def fs_scan(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k):
    """One query: qluts (L, 2 * n_pairs, 32), steps/biases (L,) -> sorted top-k.

    score = probe_bias + bias + step * acc (larger is better)."""
    heap_scores, heap_ids = topk_init(k)
    acc = np.empty(BLOCK, dtype=np.uint16)
    n_tables = qluts.shape[0]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        step = steps[t]
        base = biases[t] + probe_bias[p]
        tab = qluts[t]
        for b in range(block_offsets[lst], block_offsets[lst + 1]):
            fs_block_accumulate(blocks, b, tab, acc)
            # Once the heap is full most blocks hold nothing better: one vectorised max over
            # the 32 sums rules the block out before any per-row float work.
            top = acc[0]
            for v in range(1, BLOCK):
                top = max(top, acc[v])
            if np.float32(base + step * np.float32(top)) < heap_scores[0]:
                continue
            row0 = b * BLOCK
            for v in range(BLOCK):
                idx = block_ids[row0 + v]
                s = np.float32(base + step * np.float32(acc[v]))
                if idx >= 0 and (s > heap_scores[0] or (s == heap_scores[0] and idx < heap_ids[0])):
                    topk_push(heap_scores, heap_ids, s, idx)
    topk_sort(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def fs_scan_batch(qluts, steps, biases, blocks, block_ids, block_offsets, probes, probe_bias, k):
    """`fs_scan` for every query: qluts (nq, L, 2 * n_pairs, 32), steps/biases (nq, L)."""
    nq = qluts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = fs_scan(qluts[qi], steps[qi], biases[qi], blocks, block_ids, block_offsets,
                       probes[qi], probe_bias[qi], k)
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def fs_scan_factors(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets, probes,
                    probe_bias, probe_q_sq, is_l2, k):
    """One query over RB codes (kernels/binary.py) through the fast scan.

    The sub-codes of a row are `n_levels` equal groups (one per sign level); level l's
    tables are level 0's times 2**-l, so only level 0's tables are quantized (qluts
    (L, 2 * pairs_per_level, 32), steps/biases (L,)) and each level is accumulated on its
    own: t = sum_l 2**-l (bias + step * acc_l). Quantizing all levels' tables together
    would spend the uint8 range on the largest level and round the small ones away.
    row_factors (n_blocks * 32, 2) holds (g, |r|^2) per block row; with est = g * t the
    score is probe_bias + est (ip) or -(probe_q_sq - 2 est + |r|^2) (l2), as in
    `kernels.binary.rb_lut_scan`."""
    heap_scores, heap_ids = topk_init(k)
    acc = np.empty(BLOCK, dtype=np.uint16)
    comb = np.empty(BLOCK, dtype=np.float32)
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
        step = steps[t]
        base = biases[t] * level_sum
        tab = qluts[t]
        for b in range(block_offsets[lst], block_offsets[lst + 1]):
            comb[:] = 0.0
            w = np.float32(1.0)
            for lv in range(n_levels):
                fs_block_accumulate_range(blocks, b, lv * level_pairs, level_pairs, tab, acc)
                for v in range(BLOCK):
                    comb[v] += w * np.float32(acc[v])
                w *= np.float32(0.5)
            row0 = b * BLOCK
            for v in range(BLOCK):
                idx = block_ids[row0 + v]
                est = row_factors[row0 + v, 0] * (base + step * comb[v])
                if is_l2:
                    s = np.float32(-(probe_q_sq[p] - 2.0 * est + row_factors[row0 + v, 1]))
                else:
                    s = np.float32(probe_bias[p] + est)
                if idx >= 0 and (s > heap_scores[0] or (s == heap_scores[0] and idx < heap_ids[0])):
                    topk_push(heap_scores, heap_ids, s, idx)
    topk_sort(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def fs_scan_factors_batch(qluts, steps, biases, n_levels, blocks, block_ids, row_factors, block_offsets, probes,
                          probe_bias, probe_q_sq, is_l2, k):
    """`fs_scan_factors` for every query (shapes as in `fs_scan_batch`, probe_q_sq (nq, P))."""
    nq = qluts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = fs_scan_factors(qluts[qi], steps[qi], biases[qi], n_levels, blocks, block_ids, row_factors,
                               block_offsets, probes[qi], probe_bias[qi], probe_q_sq[qi], is_l2, k)
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


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
