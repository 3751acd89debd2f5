"""Quantizer stages (the last stage of a spec): what each one does to residuals, and how its
codes are laid out and scanned.

A quantizer is a small frozen value, hashable, whose `str()` is its spec-string stage:
`PQ(m, nbits)` (`PQ(m, nbits, rotate=True)`: OPQ), `RB(levels)`, `SQ(nbits)`, `F16()`,
`Flat()`. `vecz.engine.codecs` parses spec strings into them and drives them; each carries
its own behaviour on plain arrays:

- sizes: ``code_size(width, metric)`` bytes per vector (known before training),
  ``check_width(width, spec)``, ``state_shapes(width)``: the trained arrays by name. The
  names are part of the on-disk format (`pq_books`, `pq_rotation`, `rb_rotation`, `sq_vmin`,
  `sq_vdiff`; the codec adds `centroids`); ``optional_state_shapes(width)``: arrays that
  training writes but a codec may lack (`pq_cell_err`: stores trained before it, codecs
  from faiss).
- ``train(residuals, rng, seed=, rotation=) -> state``, ``encode(residuals, state) -> codes``
  uint8 (n, code_size), ``decode(codes, state, width) -> residuals`` float32 (n, width).
  Residuals are r = x - c for the quantizers with ``residual = True`` (PQ, RB, SQ: c is the
  IVF centroid or the training mean), x itself for F16 and Flat.
- ``train_row_errors(residuals, state)``, ``errors_from_code(state)``, ``row_errors(codes,
  width, state)``: a row's error scale (engine/bounds.py) told by its code (RB; PQ with the
  optional `pq_cell_err`), or None: the codec then stores each row's error.
- ``build_layout(codes, order, ids, offsets, width, keep_rows, l2_terms=None)``: the scan layout of codes
  (n, code_size) in input order, laid out in IVF list order (``codes[order]``, whose ids
  are `ids` and lists start at `offsets`), as named arrays that `vecz.engine.layout.CodeIndex` holds: row codes with
  their ids (PQ x8, SQ, F16, Flat), or 4-bit fast-scan blocks with ids per block row, -1 on
  padding (PQ x4, and RB whose sign bytes are two 4-bit sub-codes each).
- ``tables(tq, bias, state, ...)``: the per-query tables of a `QueryPlan` (float lookup
  tables and their uint8 fast-scan forms, SQ weights, binarized queries), and
  ``scan(layout, plan, k, ...)``: the kernels over one layout with those tables, larger
  scores better (l2 negated; the index flips the sign back). Rows whose id is < 0 (padding,
  or marked dead) are never returned.

Kernels and their numpy references: kernels/pq.py, binary.py, scalar.py, dense.py,
fastscan.py (tests/reference/).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numba
import numpy as np

from ..kernels import binary, dense, fastscan, ivf, pq, scalar, transform
from .errors import CodecSpecError, InvalidInput
from .threads import _SerialBlas

__all__ = ["Quantizer", "PQ", "RB", "SQ", "F16", "Flat", "RB_FACTOR_BYTES"]

# Two float32 per RB vector: g = |r|^2 / <s, r> (unbiased multiplier) and |r|^2.
RB_FACTOR_BYTES = 8
# ITQ training for RB (RB.train): at most ITQ_ROWS rows; at most ITQ_ITER iterations, or
# ITQ_ITER_WIDE from ITQ_WIDE dims up, where an iteration costs tens of milliseconds (rows x
# width^2 products and a width^2 SVD).
ITQ_ROWS = 8192
# PQ keeps each cell's mean squared error (`pq_cell_err`, a row's error scale from its code)
# only when training saw at least this many rows per cell on average: measured on the rows
# the codebooks were fitted to, a cell of a few rows says ~0 (with <= 2^b rows every row is
# its own centroid), and the store then keeps each row's own error instead.
PQ_CELL_MIN_ROWS = 32
ITQ_ITER = 25
ITQ_ITER_WIDE = 10
ITQ_WIDE = 256

# PQ's per-list l2 terms (`PQ.probe_tables`: nlist x M x ksub float32) and the rotated
# centroids of OPQ and RB (nlist x width float32; the own-list terms are made from them) are
# kept up to this size each (IVF256,PQ48x8: 12.6 MB; IVF4096,PQ96x8: 403 MB is past it:
# tables per probe from q - c then)
LIST_TERMS_BUDGET = 256 << 20
# PQ's float64 tables of |c_j + book|^2 per list (`pq.pq_list_sub_norms`: the 8-bit cosine
# scan's 1 / |x_hat| in M lookups instead of a decode) are kept up to this size: every flat
# PQ (PQ96x8: 197 KB), IVF only with few lists (IVF16,PQ64x8: 2.1 MB), which decode the few
# rows a list's heap takes
SUB_NORMS_BUDGET = 4 << 20
_NO_SUB_NORMS = np.zeros((1, 0, 0), dtype=np.float64)
_NO_IDS = np.empty(0, dtype=np.int64)


def _derive(derived: dict[str, Any], name: str, nbytes: int, make: Any,
            budget: int | None = None) -> np.ndarray | None:
    """derived[name], made by make() the first time; None when it would take more than
    `budget` (`nbytes`; LIST_TERMS_BUDGET when not given)."""
    if nbytes > (LIST_TERMS_BUDGET if budget is None else budget):
        return None
    out = derived.get(name)
    if out is None:
        out = derived[name] = make()
    return out


def _centroid_mean(centroids: np.ndarray, derived: dict[str, Any], name: str) -> np.ndarray:
    """The mean of `centroids` (nlist, width), float32, kept as derived[name]: the origin of
    an own-list l2 scan's inner products (`Quantizer.own_list_terms`), summed in float64 one
    list after another."""
    out = derived.get(name)
    if out is None:
        c = centroids.astype(np.float64)
        out = derived[name] = (c.sum(axis=0) / c.shape[0]).astype(np.float32)
    return out


def _own_list_term(factors: np.ndarray, dots: np.ndarray) -> np.ndarray:
    """RB rows' l2 term about their own list, |r|^2 + 2 g <(c - m) R, s> (`RB.own_list_terms`),
    float32 (n,), from their factors (g, |r|^2) float32 (n, 2) and dots float64 (n,) (the
    second term's inner products), summed in float64."""
    f = factors.astype(np.float64)
    return (f[:, 1] + 2.0 * f[:, 0] * dots).astype(np.float32)


def probe_sq_dist(x: np.ndarray, centroids: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """|q - c|^2 of every query's probed lists, float64 (nq, P): sums in fixed lanes, the
    same on every CPU (kernels/dense.py `dense_rescore`; probes < 0 give 0)."""
    dist = np.zeros(probes.shape, dtype=np.float64)
    dense.dense_rescore_batch(np.ascontiguousarray(x, dtype=np.float32), centroids, probes, dense.RESCORE_L2, dist)
    return dist


def _rotate(x: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """x @ rotation, float32 C-contiguous. One row (a lone query) in a compiled loop
    (`transform.matmul_rows`, 8.7 us for 384 x 384 against BLAS's 7.4) instead of BLAS: a
    lone query's search holds no BLAS scope (`threads.query_threads`), and a BLAS product of
    that size would run on all of BLAS's threads and leave them spinning."""
    if x.shape[0] == 1:
        return transform.matmul_rows(x, rotation)
    return np.ascontiguousarray(x @ rotation, dtype=np.float32)


def _rotated_centroids(state: Tables, rotation: str, derived: dict[str, Any]) -> np.ndarray | None:
    """The IVF centroids times the quantizer's rotation (nlist x width float32), made once
    per codec state: a rotated residual (q - c) R is q R - c R."""
    c = state["centroids"]
    return _derive(derived, f"{rotation}_centroids", c.nbytes,
                   lambda: np.ascontiguousarray(c @ state[rotation], dtype=np.float32))

Tables = dict[str, np.ndarray]


def _no_codes(code_size: int) -> np.ndarray:
    return np.empty((0, code_size), dtype=np.uint8)


def _permuted(order: np.ndarray | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return arrays if order is None else tuple(np.ascontiguousarray(a[order]) for a in arrays)


def _unpermuted(order: np.ndarray | None, result: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if order is None:
        return result
    out_s, out_i = np.empty_like(result[0]), np.empty_like(result[1])
    out_s[order], out_i[order] = result
    return out_s, out_i


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Base of the quantizer stages: the defaults of a row-code quantizer of residuals.

    Class attributes: ``residual`` (codes x - c, else x), ``has_sdc`` (symmetric scoring
    exists), ``role`` (where the stage may stand in a spec: last), ``train_rows`` (``train``
    uses at most this many rows, drawn at random: the codec need not compute the residuals
    of more; None: all)."""

    role = "quantizer"
    residual = True
    has_sdc = False
    train_rows: ClassVar[int | None] = None
    # cosine queries scanned centred (`Codec.scans_centred`): needs |r|^2 as the row factor
    centred_cosine: ClassVar[bool] = False

    @property
    def own_list_l2(self) -> bool:
        """l2 on IVF residuals with one table a query for every probed list, each row's
        term from its own list kept in the layout (`own_list_terms`, `own_list_tables`)."""
        return False

    def check_width(self, width: int, spec: str) -> None:
        """Raise CodecSpecError when the stage cannot code `width` dims."""

    def code_size(self, width: int, metric: str) -> int:
        raise NotImplementedError

    def score_rule(self, metric: str) -> int:
        """Which rule scores this stage's codes under `metric`: raised when the scores a
        release gives the same codes change, so that an error model measured on the old
        scores (engine/bounds.py, committed by `Store.calibrate`) stops applying."""
        return 1

    def state_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        """Trained arrays (float32) by name and shape, besides the codec's `centroids`."""
        return {}

    def optional_state_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        """Trained arrays (float32) that `train` gives but a loaded state may lack."""
        return {}

    # trained arrays whose values are never negative (a loaded state is checked)
    NON_NEGATIVE_STATE: ClassVar[frozenset[str]] = frozenset()
    # trained square arrays that training makes orthogonal (a loaded state is checked)
    ORTHOGONAL_STATE: ClassVar[frozenset[str]] = frozenset()

    def train(self, residuals: np.ndarray, rng: np.random.Generator, *, seed: int, rotation: str) -> Tables:
        return {}

    def train_row_errors(self, residuals: np.ndarray, state: Tables) -> Tables:
        """The optional arrays that let `row_errors` tell a row's error scale from its code,
        trained on the residuals `train` saw with its state; the codec asks only when rows
        have error scales (not under MRL)."""
        return {}

    def encode(self, residuals: np.ndarray, state: Tables) -> np.ndarray:
        raise NotImplementedError

    def decode(self, codes: np.ndarray, state: Tables, width: int) -> np.ndarray:
        raise NotImplementedError

    def build_layout(self, codes: np.ndarray, order: np.ndarray, ids: np.ndarray, offsets: np.ndarray,
                     width: int, keep_rows: bool, l2_terms: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Scan layout of codes (n, code_size) in input order, in list order ``codes[order]``
        (lists at `offsets`, ids (n,) already in that order): arrays (and flags) by the
        `CodeIndex` attribute that holds them. `l2_terms` (float32 (n,), input order; `own_list_terms`):
        the per-row term the fast scan's l2 formula adds, in place of |r|^2."""
        return {"codes": np.ascontiguousarray(codes[order]), "ids": ids}

    def own_list_terms(self, codes: np.ndarray, order: np.ndarray, offsets: np.ndarray, state: Tables,
                       derived: dict[str, Any], *, centred: bool = False) -> np.ndarray | None:
        """For `own_list_tables`: each row's l2 term with its own list's centroid folded in,
        float32 (n,) in input order, the rows of list j being ``order[offsets[j]:offsets[j +
        1]]`` (the layout's `ivf.ivf_layout`); None: not offered. The term is taken about the
        centroids' mean m (the table spans q - m), or about 0 for a centred cosine scan
        (``centred``, `Codec.scans_centred`, whose queries x / lambda lie near their list)."""
        return None

    def own_list_tables(self, x: np.ndarray, probe_sq: np.ndarray, state: Tables, derived: dict[str, Any], *,
                        centred: bool = False) -> tuple[Tables, np.ndarray] | None:
        """l2 on residuals with one table a query for every probed list (rows laid out with
        `own_list_terms` of the same ``centred``): (tables, bias), `probe_sq` (nq, P) each
        probe's |x - c|^2. None: not offered (then `own_list_terms` offered none either)."""
        return None

    def errors_from_code(self, state: Tables) -> bool:
        """True when `row_errors` derives every row's error scale from its code with this
        trained state (nothing stored per row)."""
        return False

    def coding_errors(self, residuals: np.ndarray, codes: np.ndarray, state: Tables, width: int) -> np.ndarray:
        """|residual - decode(code)| per row, float32 (n,) (`Codec._stored_errors`); here by
        decoding, a quantizer that can do it without overrides this."""
        diff = residuals - self.decode(codes, state, width).reshape(codes.shape[0], width)
        return np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64)).astype(np.float32)

    def row_errors(self, codes: np.ndarray, width: int, state: Tables) -> np.ndarray | None:
        """Per row, the scale of its code score's error (float32 (n,)), from the codes and the
        trained state alone, or None when they do not tell (then the rows' stored errors, or
        one scale for every row; the error-bound re-rank of engine/bounds.py calibrates
        either)."""
        return None

    def table_bytes(self, width: int) -> int:
        """Float bytes of one query's table (the unit of `CodeIndex.TABLE_BUDGET`)."""
        return 4 * width

    def list_min_queries(self, index: Any, sdc: bool) -> int | None:
        """Queries from which an IVF batch scans list-major (a crossover of `index`'s class),
        or None when this stage has no multi-query (fast-scan) drivers."""
        return None

    def tables(self, tq: np.ndarray, bias: np.ndarray, state: Tables, *, nq: int, per_probe: bool, metric: str,
               width: int, sdc: bool, derived: dict[str, Any]) -> tuple[Tables, np.ndarray]:
        """Tables of a plan from the table queries `tq` (nq * L, width), L = P tables per
        query (``per_probe``: one per probed list, built from q - c) or 1; `bias` (nq, P) the
        additive per-probe term; `derived` the codec's arrays derived from `state` (made once
        per state, `_derive`). Returns (tables by name, bias, possibly with terms added)."""
        raise NotImplementedError

    def tables_per_query(self, codec: Any, n_probe: int, sdc: bool = False) -> int:
        """Float tables a plan holds per query for l2 on residuals: one per probed list."""
        return n_probe

    def probe_tables(self, x: np.ndarray, probes: np.ndarray, state: Tables, derived: dict[str, Any], *,
                     sdc: bool = False) -> tuple[Tables, np.ndarray, Tables] | None:
        """The per-probe tables of l2 on residuals (`tables` with ``per_probe``) made another
        way, from the prepared queries x (nq, width) and their probes (nq, P), with arrays
        derived once from `state` kept in `derived` (the codec's cache for that state):
        (tables, bias, shared arrays the scan needs: `QueryPlan.shared`). None: not offered,
        `tables` builds one table per (query, probe) from q - c."""
        return None

    def scan(self, layout: Any, plan: Any, k: int, *, is_l2: bool, width: int,
             groups: tuple[np.ndarray | None, np.ndarray] | None, list_major: bool,
             floors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of every plan query over one layout among the rows scoring >= floors[i]
        (float32 (nq,), -inf for all; kernels/topk.py): scores float32 (nq, k), larger better
        (l2 negated), ids int64 (nq, k), padded with -inf and -1. `groups` and `list_major`
        choose the fast-scan drivers (`CodeIndex.scan`); row-code stages ignore them."""
        raise NotImplementedError


# Bytes a PQ code under ip ends with: the row's norm as a float16 (`PQ.row_norms`).
ROW_NORM_BYTES = 2
PQ4_MAX_M = 512  # 4-bit PQ's most sub-quantizers: the fast scan sums M uint8 levels <= 65535 / M in uint16
# float16's largest finite value: a row's 1 / |x_hat| past it (|x_hat| < 1.6e-5) is clamped
_F16_MAX = 65504.0


def _scale_bits(norms: np.ndarray | None, inv: np.ndarray) -> np.ndarray:
    """Rows' scale as float16 bits (clamped to float16's range): their ``1 / |x_hat|``
    (float32), times their ``|x|`` (float16 bits) with row norms (`PQ.row_norms`)."""
    g = inv if norms is None else norms.view(np.float16).astype(np.float32) * inv
    return np.minimum(g, np.float32(_F16_MAX)).astype(np.float16).view(np.uint16)


def _scan_blocks_pq(layout: Any, plan: Any, k: int, groups: tuple | None, list_major: bool, floors: np.ndarray):
    """4-bit fast scan of PQ x4 blocks with a plan's (qluts, steps, biases). Cosine scores,
    and l2 on residuals with each row's own-list term (`PQ.own_list_tables`), go through
    `_scan_factor_blocks` instead (`PQ.scan`)."""
    t = plan.tables
    blocks = (layout.blocks, layout.block_ids, layout.block_offsets)
    qluts, steps, biases = t["qluts"], t["steps"], t["biases"]
    if groups is not None:
        order, group_offsets = groups
        ql, sp, bi, pr, pb, fl = _permuted(order, qluts, steps, biases, plan.probes, plan.bias, floors)
        return _unpermuted(order, fastscan.fs_scan_multi_batch(ql, sp, bi, *blocks, pr, pb, group_offsets, k, fl))
    if list_major:
        return fastscan.fs_scan_lists_batch(qluts, steps, biases, *blocks, plan.probes, plan.bias, k, floors,
                                            numba.get_num_threads())
    return fastscan.fs_scan_batch(qluts, steps, biases, *blocks, plan.probes, plan.bias, k, floors)


def _scan_factor_blocks(layout: Any, plan: Any, n_levels: int, row_factors: np.ndarray, q_sq: np.ndarray,
                        is_l2: bool, k: int, groups: tuple | None, list_major: bool,
                        floors: np.ndarray):
    """The fast scan of blocks whose rows carry factors (`fastscan.fs_scan_factors`), with a
    plan's (qluts, steps, biases): RB's rows (g, |r|^2), or PQ x4's 1 / |x_hat| under cosine
    (1-D float16 bits, the scaled mode). Groups of queries with the same probes take the
    multi-query kernel, IVF batches the list-major one, the rest one query at a time."""
    t = plan.tables
    qluts, steps, biases = t["qluts"], t["steps"], t["biases"]
    rows = (layout.blocks, layout.block_ids, row_factors)
    if groups is not None:
        order, group_offsets = groups
        ql, sp, bi, pr, pb, qs, fl = _permuted(order, qluts, steps, biases, plan.probes, plan.bias, q_sq, floors)
        return _unpermuted(order, fastscan.fs_scan_factors_multi_batch(
            ql, sp, bi, n_levels, *rows, layout.block_offsets, pr, pb, qs, is_l2, group_offsets, k, fl))
    if list_major:
        return fastscan.fs_scan_factors_lists_batch(qluts, steps, biases, n_levels, *rows, layout.block_offsets,
                                                    plan.probes, plan.bias, q_sq, is_l2, k,
                                                    floors, numba.get_num_threads())
    return fastscan.fs_scan_factors_batch(qluts, steps, biases, n_levels, *rows, layout.block_offsets,
                                          plan.probes, plan.bias, q_sq, is_l2, k, floors)


_SPREAD: dict[tuple[int, int], np.ndarray] = {}


def pq_spread_positions(width: int, m: int) -> np.ndarray:
    """Where each of `width` dims goes in PQ's coded width M * ceil(width / M) when the
    padding is spread (`PQ.spread`): sub-space j takes ceil(width / M) dims for j < width % M
    and floor(width / M) after, each followed by its zero pad (int64 (width,), read-only)."""
    key = (int(width), int(m))
    pos = _SPREAD.get(key)
    if pos is None:
        dsub = -(-width // m)
        base, extra = divmod(width, m)
        pos = np.concatenate([j * dsub + np.arange(base + (j < extra), dtype=np.int64) for j in range(m)])
        pos.setflags(write=False)
        _SPREAD[key] = pos
    return pos


@dataclasses.dataclass(frozen=True)
class PQ(Quantizer):
    """Product quantization: `m` sub-quantizers of `nbits` bits (8: float tables, row codes;
    4: the fast scan, codes in blocks of 32 rows). With ``rotate`` (spec ``OPQ<M>x<b>``) the
    residuals are coded after a learned orthogonal rotation (OPQ, `pq.opq_train`; state
    ``pq_rotation``, applied as r @ R row by row): codes, tables and scans are those of PQ
    in the rotated space, where inner products and distances are the same."""

    m: int
    nbits: int
    rotate: bool = False
    # Under ip, each code ends with the row's norm |x| as a little-endian float16 (2 bytes)
    # and a row scores |x| <q, x_hat> / |x_hat|, the inner product with its reconstruction
    # scaled to the row's own length (`Codec` sets it; not part of the spec string). x_hat
    # is shorter than x by its coding error, and <q, x_hat> alone carried an error that
    # grows with the score: on unit rows of wordnet-minilm, OPQ96x4 under ip needed 95.5
    # rows a query for rerank="auto" at the default confidence, against 65.5 under cosine.
    row_norms: bool = False
    # A width M does not divide is padded to M * ceil(width / M) dims. Spread (`Codec` sets it
    # for the codecs it makes; a config without it means False): each sub-space takes
    # ceil or floor(width / M) dims and its own pad (`pq_spread_positions`), so every
    # sub-quantizer codes dims. Not spread (codecs made before it): the pad is on the right,
    # and sub-quantizers wholly past the last dim code nothing (PQ124x8 on 384 dims coded
    # as PQ96x8: wordnet-minilm recall@10 0.864 against 0.904 spread, 20,000 rows). The
    # coded space is the rows (rotated by OPQ's `pq_rotation` first) spread: an isometry,
    # whose pad dims are zero in every row, query and codebook.
    spread: bool = False

    def __str__(self) -> str:
        return f"{'O' if self.rotate else ''}PQ{self.m}x{self.nbits}"

    def spreads(self, width: int) -> bool:
        """Whether rows of `width` dims are spread before coding (`spread`, width % M != 0)."""
        return self.spread and width % self.m != 0

    def _widen(self, x: np.ndarray) -> np.ndarray:
        """Rows x (n, width) in the spread coded width, float32 C-contiguous (x itself
        when not spread)."""
        width = x.shape[1]
        if not self.spreads(width):
            return x
        return pq.pq_place(x, pq_spread_positions(width, self.m), self.m)

    @property
    def pq_bytes(self) -> int:
        """Bytes of sub-codes a row (the code without its norm)."""
        return self.m if self.nbits == 8 else (self.m + 1) // 2

    def check_width(self, width: int, spec: str) -> None:
        if self.m > width:
            raise CodecSpecError(f"stage {str(self)!r}: M={self.m} sub-quantizers exceed the {width} coded dims")
        if self.nbits == 4 and self.m > PQ4_MAX_M:
            raise CodecSpecError(f"stage {str(self)!r}: 4-bit PQ supports at most {PQ4_MAX_M} sub-quantizers")

    def code_size(self, width: int, metric: str) -> int:
        return self.pq_bytes + (ROW_NORM_BYTES if self.row_norms else 0)

    def score_rule(self, metric: str) -> int:
        # 2: 4-bit codes under cosine score the cosine to the reconstruction (stop 38);
        # 4: codes with their row's norm score |x| <q, x_hat> / |x_hat| (stop 45)
        if self.row_norms:
            return 4
        return 2 if self.nbits == 4 and metric == "cosine" else 1

    def split_norms(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes (n, code_size) -> sub-codes (n, pq_bytes) (a view) and, with `row_norms`,
        each row's norm as float16 bits uint16 (n,), else None."""
        if not self.row_norms:
            return codes, None
        k = self.pq_bytes
        return codes[:, :k], np.ascontiguousarray(codes[:, k:k + ROW_NORM_BYTES]).view("<u2").reshape(-1)

    def state_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        shapes = {"pq_books": (self.m, 1 << self.nbits, pq.pq_dsub(width, self.m))}
        if self.rotate:
            shapes["pq_rotation"] = (width, width)
        return shapes

    NON_NEGATIVE_STATE: ClassVar[frozenset[str]] = frozenset({"pq_cell_err"})
    ORTHOGONAL_STATE: ClassVar[frozenset[str]] = frozenset({"pq_rotation"})

    def optional_state_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        # each cell's mean squared coding error (kernels/pq.py `pq_cell_errors`)
        return {"pq_cell_err": (self.m, 1 << self.nbits)}

    def train(self, residuals: np.ndarray, rng: np.random.Generator, *, seed: int, rotation: str) -> Tables:
        if not self.rotate:
            return {"pq_books": pq.pq_train(self._widen(residuals), self.m, self.nbits, seed=seed)}
        width = residuals.shape[1]
        rot, books = pq.opq_train(residuals, self.m, self.nbits, seed=seed, svd_scope=_SerialBlas,
                                  positions=pq_spread_positions(width, self.m) if self.spreads(width) else None)
        return {"pq_books": books, "pq_rotation": rot}

    def train_row_errors(self, residuals, state):
        # the training rows' errors per cell (`row_errors`), when there are enough rows per
        # cell and every sub-space has an error at all
        if residuals.shape[0] < PQ_CELL_MIN_ROWS << self.nbits:
            return {}
        y = np.ascontiguousarray(self._rotated(residuals, state), dtype=np.float32)
        table = pq.pq_cell_errors(y, pq.pq_encode(y, state["pq_books"]), state["pq_books"])
        return {"pq_cell_err": table} if (table.max(axis=1) > 0).all() else {}

    def _rotated(self, x: np.ndarray, state: Tables) -> np.ndarray:
        """Residuals in the coded space: x @ R with OPQ (each row's sums in one fixed order,
        so a row's code never depends on its batch), then spread (`spread`)."""
        return self._widen(transform.matmul_rows_batch(x, state["pq_rotation"]) if self.rotate else x)

    def _coded_queries(self, x: np.ndarray, state: Tables) -> np.ndarray:
        """Queries in the coded space (as `_rotated`, a lone query without BLAS: `_rotate`)."""
        return self._widen(_rotate(x, state["pq_rotation"]) if self.rotate else x)

    def encode(self, residuals: np.ndarray, state: Tables) -> np.ndarray:
        codes = pq.pq_encode(self._rotated(residuals, state), state["pq_books"])
        return codes if self.nbits == 8 else pq.pq4_pack(codes)

    def _sub_codes(self, codes: np.ndarray) -> np.ndarray:
        """One sub-code per byte, (n, M)."""
        codes = self.split_norms(codes)[0]
        return codes if self.nbits == 8 else pq.pq4_unpack(codes, self.m)

    def decode(self, codes: np.ndarray, state: Tables, width: int) -> np.ndarray:
        spread = self.spreads(width)
        out = pq.pq_decode(self._sub_codes(codes), state["pq_books"],
                           self.m * pq.pq_dsub(width, self.m) if spread else width)
        if spread:
            out = out[:, pq_spread_positions(width, self.m)]
        return np.ascontiguousarray(out @ state["pq_rotation"].T) if self.rotate else np.ascontiguousarray(out)

    def coding_errors(self, residuals, codes, state, width):
        # one fused pass (kernels/pq.py): 20x less time than decoding 117,647 x 384 rows; the
        # rotation keeps norms, so OPQ's error is measured in the rotated space
        return pq.pq_code_errors(np.ascontiguousarray(self._rotated(residuals, state), dtype=np.float32),
                                 np.ascontiguousarray(self._sub_codes(codes)), state["pq_books"])

    def errors_from_code(self, state):
        return "pq_cell_err" in state

    def row_errors(self, codes, width, state):
        # sqrt of the summed mean squared errors of the row's cells: its expected coding error
        # given the code, no bytes per row (wordnet-minilm OPQ56x8: the error-bound re-rank
        # read 29.1 rows a query for recall 0.99 with it, 28.1 with each row's own error
        # stored, 29.4 with one scale for all; IVF256,OPQ96x4 at the default confidence 94
        # rows instead of 87: docs/results/opq.md)
        # Weighting each cell's error by the query's energy in its sub-space (the variance of
        # <q, x - x_hat> if errors were isotropic in a cell: sum_j |q_j|^2 / d_j err_j) read the
        # same rows (wordnet-minilm's first 30,000 rows, OPQ56x8, 500 queries, a numpy walk): 35.3 at 0.99
        # against 35.5 rows a query, 50.3 against 50.5 at 0.999 (stop 53): a code's error is not where the
        # query's energy is
        if "pq_cell_err" not in state:
            return None
        scales = pq.pq_code_error_scales(np.ascontiguousarray(self._sub_codes(codes)), state["pq_cell_err"])
        if self.row_norms:
            # times sqrt(|x|): the cells' mean error misses how a long row's error grows
            # (minilm rows times exp(S N(0, 1)), OPQ96x4, the exact top 100 of 1,000
            # queries: the interval at 0.999 is 7% / 18% / 19% narrower at S = 0.2 / 0.5 /
            # 1.0 than with the cells' scale alone; |x|^0.25, |x|^0.75 and |x| narrower by
            # less or wider). A common factor of all rows is the model's to absorb.
            scales = scales * np.sqrt(self.split_norms(codes)[1].view(np.float16).astype(np.float32))
        return scales

    def build_layout(self, codes, order, ids, offsets, width, keep_rows, l2_terms=None):
        # with row norms the layout holds them (float16 bits) in its own row order, until
        # the first scan turns them into each row's scale (`_row_scales`)
        sub, norms = self.split_norms(codes)
        if self.nbits == 8:
            out = {"codes": np.ascontiguousarray(sub[order]), "ids": ids}
            if norms is not None:
                out["pq_row_norms"] = np.ascontiguousarray(norms[order])
            return out
        # The blocked layout replaces the row codes: one copy of the codes in RAM. Packed
        # 4-bit codes are already the fast scan's byte pairs.
        # Each block row's value (padding rows 0): its norm (row norms, ip) or its own-list
        # term (`own_list_terms`, l2); never both
        values = None
        if l2_terms is not None:
            values = np.asarray(l2_terms, dtype=np.float32)[:, None]
        elif norms is not None:
            values = norms.view(np.float16).astype(np.float32)[:, None]
        blocks, block_ids, block_offsets, block_values = fastscan.fs_layout_packed(codes, self.pq_bytes, order, ids,
                                                                                   offsets, values)
        out = {"codes": _no_codes(codes.shape[1]), "ids": ids if keep_rows else _NO_IDS,
               "blocks": blocks, "block_ids": block_ids, "block_offsets": block_offsets}
        if norms is not None:  # float16 to float32 and back: the same bits (padding rows 0)
            out["pq_row_norms"] = np.ascontiguousarray(block_values[:, 0].astype(np.float16).view(np.uint16))
        if l2_terms is not None:
            out["pq_l2_terms"] = np.ascontiguousarray(block_values[:, 0])
        return out

    def table_bytes(self, width: int) -> int:
        return 4 * self.m * (1 << self.nbits)

    def list_min_queries(self, index: Any, sdc: bool) -> int | None:
        return index.LIST_MIN_QUERIES_PQ if self.nbits == 4 else None

    def tables(self, tq, bias, state, *, nq, per_probe, metric, width, sdc, derived):
        n_tab = bias.shape[1] if per_probe else 1
        tq = self._coded_queries(tq, state)
        books = state["pq_books"]
        book_norms = (_derive(derived, "pq_book_norms", 4 * books.shape[0] * books.shape[1],
                              lambda: pq.pq_book_norms(books)) if metric == "l2" else None)
        luts = pq.pq_lut(tq, books, "l2" if metric == "l2" else "ip", self._books_t(state, derived), book_norms)
        luts = luts.reshape(nq, n_tab, self.m, 1 << self.nbits)
        if self.nbits == 8:
            return {"luts": luts}, bias
        qluts, steps, biases = fastscan.fs_quantize_lut(luts)
        return {"qluts": qluts, "steps": steps, "biases": biases}, bias

    def _books_t(self, state: Tables, derived: dict[str, Any]) -> np.ndarray | None:
        """The books as `pq.pq_lut` reads them (`pq.pq_lut_books`), made once per state (the
        size of the books; None past LIST_TERMS_BUDGET: made per call then)."""
        books = state["pq_books"]
        return _derive(derived, "pq_books_t", books.nbytes, lambda: pq.pq_lut_books(books))

    def _list_terms_bytes(self, nlist: int) -> int:
        return nlist * self.m * (1 << self.nbits) * 4

    def tables_per_query(self, codec, n_probe, sdc=False):
        # with the list terms: one table a query, each probe's made in the scan (8 bits), or
        # each row's own-list term in the layout (4 bits)
        if self.own_list_l2:
            return 1
        fits = self._list_terms_bytes(codec.nlist) <= LIST_TERMS_BUDGET
        return 1 if fits else n_probe

    def _centroids(self, state, derived):
        """The centroids in the coded space (spread, rotated with OPQ; made once per state,
        or each time past LIST_TERMS_BUDGET)."""
        c = state["centroids"]
        if self.spreads(c.shape[1]):
            def coded() -> np.ndarray:
                return np.ascontiguousarray(self._coded_queries(c, state), dtype=np.float32)

            kept = _derive(derived, "pq_coded_centroids", 4 * c.shape[0] * self.m * pq.pq_dsub(c.shape[1], self.m),
                           coded)
            return coded() if kept is None else kept
        if not self.rotate:
            return c
        rotated = _rotated_centroids(state, "pq_rotation", derived)
        if rotated is None:
            return np.ascontiguousarray(state["centroids"] @ state["pq_rotation"], dtype=np.float32)
        return rotated

    def _list_terms(self, state, derived):
        """`pq.pq_list_terms` of the coded-space centroids, made once per state (None past
        LIST_TERMS_BUDGET)."""
        return _derive(derived, "pq_list_terms", self._list_terms_bytes(state["centroids"].shape[0]),
                       lambda: pq.pq_list_terms(state["pq_books"], self._centroids(state, derived)))

    def _sub_norms(self, state, derived):
        """`pq.pq_list_sub_norms` of the coded-space centroids, made once per state; the
        decode marker (shape (1, 0, 0)) past SUB_NORMS_BUDGET."""
        books = state["pq_books"]
        nbytes = state["centroids"].shape[0] * books.shape[0] * books.shape[1] * 8
        out = _derive(derived, "pq_sub_norms", nbytes,
                      lambda: pq.pq_list_sub_norms(books, self._centroids(state, derived)), SUB_NORMS_BUDGET)
        return _NO_SUB_NORMS if out is None else out

    def probe_tables(self, x, probes, state, derived, *, sdc=False):
        # 8 bits (4 bits keep each row's own-list term instead, `own_list_tables`; without
        # it, tables from q - c per probe):
        # -|(q - c) - b|^2 = -|q - c|^2 + sum_j (2 <q_j, b_j> - terms[c, j, b_j]) (kernels/pq.py
        # `pq_list_terms`, in the rotated space with OPQ): one inner-product table a query and
        # a subtraction per probed list instead of an l2 table from q - c per probed list
        # (minilm IVF256,PQ48x8 nprobe 32: 0.1M multiply-adds and 0.4M subtractions a query
        # instead of 3.1M multiply-adds)
        if self.nbits == 4:
            return None
        books = state["pq_books"]
        centroids = state["centroids"]
        terms = self._list_terms(state, derived)
        if terms is None:
            return None
        q = self._coded_queries(x, state)
        ip = pq.pq_lut(q, books, "ip", self._books_t(state, derived))
        bias = np.ascontiguousarray(-probe_sq_dist(x, centroids, probes), dtype=np.float32)
        # the scan makes each list's table as it goes (`pq.pq_lut_scan_l2`)
        return {"ip2": np.float32(2.0) * ip}, bias, {"list_terms": terms}

    @property
    def own_list_l2(self) -> bool:
        # 4 bits: the per-(query, probe) tables the scan made and quantized took a quarter of
        # an IVF256,PQ96x4 l2 batch (minilm, nprobe 32: 0.75-0.8x of faiss's
        # IndexIVFPQFastScan); with each row's term kept (4 bytes a row in RAM) one table a
        # query serves every list, as under cosine. 8 bits: the row scan adds the list's
        # terms itself (`pq.pq_lut_scan_l2`), no bytes a row.
        return self.nbits == 4

    def _l2_origin(self, state: Tables, derived: dict[str, Any]) -> np.ndarray:
        """The mean of the centroids (coded space), made once per state (`_centroid_mean`)."""
        return _centroid_mean(self._centroids(state, derived), derived, "pq_l2_origin")

    def own_list_terms(self, codes, order, offsets, state, derived, *, centred=False):
        # -|q - c - r_hat|^2 = -(|q - c|^2 - 2 <q - m, r_hat> + (|r_hat|^2 + 2 <c - m, r_hat>))
        # for any m: the last term is the row's alone (float64 sums, stored as float32). With
        # m the centroids' mean the query's table spans <q - m, b>, about as narrow as a
        # residual's: with m = 0 its uint8 steps grow with |q|, and on clustered rows far from
        # the origin the top 10 agreed with the per-probe tables' in 70% of ids instead of 95%
        if not self.own_list_l2:
            return None
        centroids = self._centroids(state, derived) - self._l2_origin(state, derived)
        return pq.pq_own_list_terms(np.ascontiguousarray(self._sub_codes(codes)), order, offsets, state["pq_books"],
                                    np.ascontiguousarray(centroids))

    def own_list_tables(self, x, probe_sq, state, derived, *, centred=False):
        if not self.own_list_l2:
            return None
        q = self._coded_queries(x, state) - self._l2_origin(state, derived)
        qluts, steps, biases = fastscan.fs_quantize_lut(
            pq.pq_lut(q, state["pq_books"], "ip", self._books_t(state, derived))[:, None])
        bias = np.zeros(probe_sq.shape, dtype=np.float32)
        return {"qluts": qluts, "steps": steps, "biases": biases,
                "q_sq": np.ascontiguousarray(probe_sq, dtype=np.float32)}, bias

    def _row_scales(self, layout: Any) -> np.ndarray:
        """Each layout row's scale g as float16 bits, in the layout's order (blocks with 4
        bits): ``|x| / |x_hat|`` with row norms (made from the norms the layout holds, which
        it then drops), else ``1 / |x_hat|`` (4-bit codes of unit rows); made on the first
        scan, 2 bytes a row in RAM."""
        norms = getattr(layout, "pq_row_norms", None)  # read first: dropped only once the scales are set
        if getattr(layout, "pq_row_scale", None) is None:
            state = layout.state
            centroids = self._centroids(state, layout.codec._derived_of(state))
            if self.nbits == 4:
                inv = pq.pq4_block_inv_norms(layout.blocks, layout.block_ids, layout.block_offsets,
                                             state["pq_books"], centroids)
            else:
                inv = pq.pq_row_inv_norms(state["pq_books"], centroids, layout.codes, layout.offsets)
            layout.pq_row_scale = _scale_bits(norms, inv)
            layout.pq_row_norms = None
        return layout.pq_row_scale

    def row_scales(self, codes: np.ndarray, lists: np.ndarray, state: Tables, derived: dict[str, Any]) -> np.ndarray:
        """The scale ``g = |x| / |x_hat|`` a scan gives each row of `codes` (with `row_norms`;
        lists (n,) their IVF lists), float32 (n,): float16 values, as `_row_scales` makes
        them for the 8-bit scan (the 4-bit scan sums ``|x_hat|^2`` in another order, so its g
        may differ by a float16 step). `Codec.decode` scales the reconstruction by it."""
        norms = self.split_norms(codes)[1]
        nlist = state["centroids"].shape[0]
        order, offsets = ivf.ivf_layout(lists, nlist)
        inv = np.empty(codes.shape[0], dtype=np.float32)
        inv[order] = pq.pq_row_inv_norms(state["pq_books"], self._centroids(state, derived),
                                         np.ascontiguousarray(self._sub_codes(codes)[order]), offsets)
        return _scale_bits(norms, inv).view(np.float16).astype(np.float32)

    def scan(self, layout, plan, k, *, is_l2, width, groups, list_major, floors):
        cosine = layout.codec.unit_rows  # cosine, or ip behind MRL (rows renormalised)
        if self.nbits == 4 and (cosine or self.row_norms):
            # every row's whole score times its scale g (the factor scans' scaled mode): unit
            # rows by the cosine to the reconstruction (g = 1 / |x_hat|), rows with their
            # norm by |x| <q, x_hat> / |x_hat|
            no_l2 = np.zeros(plan.bias.shape, dtype=np.float32)
            return _scan_factor_blocks(layout, plan, 1, self._row_scales(layout), no_l2, False, k, groups,
                                       list_major, floors)
        if self.row_norms:
            return pq.pq_lut_scan_scaled_batch(plan.tables["luts"][:, 0], layout.codes, layout.ids,
                                               self._row_scales(layout), layout.offsets, plan.probes, plan.bias, k,
                                               floors)
        if self.nbits == 4 and "q_sq" in plan.tables:  # l2 on residuals (`own_list_tables`)
            return _scan_factor_blocks(layout, plan, 1, layout.pq_l2_terms, plan.tables["q_sq"], True, k, groups,
                                       list_major, floors)
        if self.nbits == 4:
            return _scan_blocks_pq(layout, plan, k, groups, list_major, floors)
        if "ip2" in plan.tables:  # l2 on residuals (`probe_tables`)
            return pq.pq_lut_scan_l2_batch(plan.tables["ip2"], plan.shared["list_terms"], layout.codes, layout.ids,
                                           layout.offsets, plan.probes, plan.bias, k, floors)
        luts = plan.tables["luts"]
        if cosine:
            # unit vectors: scored by the cosine to the reconstruction (kernels/pq.py)
            books = layout.state["pq_books"]
            # the reconstruction c + decode(code) R^T has the norm of c R + decode(code)
            derived = layout.codec._derived_of(layout.state)
            centroids = self._centroids(layout.state, derived)
            if getattr(layout, "pq_inv_bytes", None) is None:  # once per index (a byte a row in RAM)
                inv_bytes, layout.pq_inv_lo, layout.pq_inv_hi = pq.pq_inv_norm_bounds(
                    books, centroids, layout.codes, layout.offsets)
                layout.pq_inv_bytes = inv_bytes  # last: a scan that sees it sees the tables too
            return pq.pq_lut_scan_cosine_batch(luts[:, 0], layout.codes, layout.ids, layout.offsets, plan.probes,
                                               plan.bias, books, centroids, self._sub_norms(layout.state, derived),
                                               layout.pq_inv_bytes, layout.pq_inv_lo, layout.pq_inv_hi, k, floors)
        return pq.pq_lut_scan_batch(luts, layout.codes, layout.ids, layout.offsets, plan.probes, plan.bias, k,
                                    floors)


@dataclasses.dataclass(frozen=True)
class RB(Quantizer):
    """Recurrent binarization with `levels` sign levels (bits per dimension) of the rotated
    residual, and two float32 factors per vector (kernels/binary.py). Asymmetric scoring
    runs on the 4-bit fast scan (each byte of sign bits is two 4-bit sub-codes); symmetric
    scoring (``sdc=True``) binarizes the query too and scans row codes with popcount."""

    levels: int

    has_sdc = True
    train_rows = ITQ_ROWS
    centred_cosine = True

    def __str__(self) -> str:
        return f"RB{self.levels}"

    def code_size(self, width: int, metric: str) -> int:
        return self.levels * binary.rb_nbytes(width) + RB_FACTOR_BYTES

    def state_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"rb_rotation": (width, width)}

    ORTHOGONAL_STATE: ClassVar[frozenset[str]] = frozenset({"rb_rotation"})

    def train(self, residuals: np.ndarray, rng: np.random.Generator, *, seed: int, rotation: str) -> Tables:
        # ITQ's cost is sample x width^2 per iteration plus one width^2 SVD: at 384-d 8192 rows
        # and 10 iterations (0.8 s, 2 threads) reach recall@10 within 0.001 of 25 iterations
        # (2.3 s) on wordnet-minilm (bench/build_speed.py --sweep).
        n = residuals.shape[0]
        rows = residuals if n <= ITQ_ROWS else residuals[rng.choice(n, ITQ_ROWS, replace=False)]
        if rotation == "itq" and rows.shape[0] >= 2:
            # Its SVDs on one BLAS thread: a threaded BLAS slows a 384x384 SVD down (0.75 s
            # instead of 0.03 s on a busy 2-core box); its products keep the threads.
            return {"rb_rotation": transform.itq_rotation(
                rows, seed, n_iter=ITQ_ITER_WIDE if rows.shape[1] >= ITQ_WIDE else ITQ_ITER, svd_scope=_SerialBlas)}
        return {"rb_rotation": transform.random_rotation(residuals.shape[1], seed)}

    def encode(self, residuals: np.ndarray, state: Tables) -> np.ndarray:
        # one fixed order of sums per row (not BLAS): a row's code never depends on its batch
        rot = transform.matmul_rows_batch(residuals, state["rb_rotation"])
        bits, factors = binary.rb_encode_batch(rot, self.levels, binary._T_COARSE, binary._T_FINE_STEP)
        return np.concatenate([bits.reshape(len(residuals), bits.shape[1] * bits.shape[2]),
                               factors.astype("<f4").view(np.uint8)], axis=1)

    def split_codes(self, codes: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Codes (n, code_size) -> sign bits uint8 (n, levels, nbytes), factors float32 (n, 2)."""
        nb = binary.rb_nbytes(width)
        bits = np.ascontiguousarray(codes[:, : self.levels * nb]).reshape(-1, self.levels, nb)
        factors = np.ascontiguousarray(codes[:, self.levels * nb :]).view("<f4").astype(np.float32)
        return bits, factors.reshape(-1, 2)

    def decode(self, codes: np.ndarray, state: Tables, width: int) -> np.ndarray:
        bits, factors = self.split_codes(codes, width)
        return binary.rb_decode(bits, factors, width) @ state["rb_rotation"].T

    def build_layout(self, codes, order, ids, offsets, width, keep_rows, l2_terms=None):
        # One copy of the bits, in fast-scan blocks: a sign byte is two 4-bit sub-codes
        # (`binary.rb_nibbles`), already the fast scan's byte pair. The popcount words for
        # symmetric scoring are derived on the first sdc=True scan, from the row bits when
        # kept, else from the blocks (`scan`).
        n_bytes = self.levels * binary.rb_nbytes(width)
        factors = np.ascontiguousarray(codes[:, n_bytes : n_bytes + RB_FACTOR_BYTES]).view("<f4")
        if l2_terms is not None:  # the blocks' second factor: |r|^2 with the own list folded in
            factors = np.stack([factors[:, 0], np.asarray(l2_terms, dtype=np.float32)], axis=1)
        blocks, block_ids, block_offsets, block_factors = fastscan.fs_layout_packed(
            codes, n_bytes, order, ids, offsets, factors)
        out = {"codes": _no_codes(codes.shape[1]), "ids": ids if keep_rows else _NO_IDS, "blocks": blocks,
               "block_ids": block_ids, "block_offsets": block_offsets, "block_factors": block_factors,
               "rb_own_terms": l2_terms is not None}
        if keep_rows:
            out["bits"], out["factors"] = self.split_codes(np.ascontiguousarray(codes[order]), width)
        return out

    def errors_from_code(self, state):
        return True

    def row_errors(self, codes, width, state):
        # |r - g s|: RaBitQ's per-vector error, no extra bytes (kernels/binary.py)
        return binary.rb_error_norms(codes, self.levels, width)

    def table_bytes(self, width: int) -> int:
        return 4 * 16 * 2 * self.levels * binary.rb_nbytes(width)

    def list_min_queries(self, index: Any, sdc: bool) -> int | None:
        return None if sdc else index.LIST_MIN_QUERIES

    def tables(self, tq, bias, state, *, nq, per_probe, metric, width, sdc, derived):
        rot = _rotate(tq, state["rb_rotation"])
        return self._rotated_tables(rot, bias, nq=nq, per_probe=per_probe, sdc=sdc)

    def probe_tables(self, x, probes, state, derived, *, sdc=False):
        # Symmetric scoring encodes each probe's rotated residual (the asymmetric scan keeps
        # each row's own-list term instead, `own_list_tables`): (q - c) R = q R - c R, one
        # rotation a query and a subtraction per probe instead of a rotation per probe
        # (width^2 multiply-adds each: 4.7M a query for 384-d at nprobe 32), from the
        # centroids rotated once per state (nlist x width float32). Not for one list (no IVF).
        if not sdc or state["centroids"].shape[0] == 1:
            return None
        rotated = _rotated_centroids(state, "rb_rotation", derived)
        if rotated is None:
            return None
        nq, n_tab = probes.shape
        qr = _rotate(x, state["rb_rotation"])
        bias = np.zeros((nq, n_tab), dtype=np.float32)
        rot = (qr[:, None, :] - rotated[np.maximum(probes, 0)]).reshape(nq * n_tab, -1)  # probes < 0 are skipped
        return (*self._rotated_tables(rot, bias, nq=nq, per_probe=True, sdc=sdc), {})

    @property
    def own_list_l2(self) -> bool:
        # the term replaces |r|^2 among the row's two factors: no bytes a row (a symmetric
        # scan gets |r|^2 back once, `_sdc_factors`). minilm IVF256,RB1 l2 nprobe 32 when
        # the scan made and quantized each probe's table: 17.0k QPS against 22.1k under
        # cosine, which already scanned one table a query; 22.7k since (stop 47)
        return True

    def _l2_origin(self, state: Tables, derived: dict[str, Any], centred: bool) -> np.ndarray | None:
        """The origin m of the own-list terms in the rotated space (None: 0, a centred scan;
        also None past LIST_TERMS_BUDGET, when `own_list_terms` offers none)."""
        rotated = _rotated_centroids(state, "rb_rotation", derived)
        if centred or rotated is None:
            return None
        return _centroid_mean(rotated, derived, "rb_l2_origin")

    def _term_centroids(self, state: Tables, derived: dict[str, Any], centred: bool) -> np.ndarray | None:
        """(c - m) R of every list: what the own-list terms' second part is an inner product
        with (`own_list_terms`, `_sdc_factors`); None past LIST_TERMS_BUDGET."""
        rotated = _rotated_centroids(state, "rb_rotation", derived)
        origin = self._l2_origin(state, derived, centred)
        return rotated if origin is None else rotated - origin

    def own_list_terms(self, codes, order, offsets, state, derived, *, centred=False):
        # -|q - x|^2 ~= -(|q - c|^2 - 2 g <(q - c) R, s> + |r|^2)
        #            = -(|q - c|^2 - 2 g <(q - m) R, s> + (|r|^2 + 2 g <(c - m) R, s>)):
        # the row's own centroid c enters through its code alone, so one table of (q - m) R
        # serves every probed list (`own_list_tables`). m: the centroids' mean under l2 (as
        # PQ's, `PQ.own_list_terms`), 0 for the centred cosine scan, whose x / lambda lies
        # near its list already. float64 sums, stored as float32.
        vecs = self._term_centroids(state, derived, centred)
        if vecs is None:
            return None
        nb = self.levels * binary.rb_nbytes(vecs.shape[1])
        factors = np.ascontiguousarray(codes[:, nb : nb + RB_FACTOR_BYTES]).view("<f4")
        return _own_list_term(factors, binary.rb_sign_dots(codes, self.levels, vecs, order, offsets))

    def own_list_tables(self, x, probe_sq, state, derived, *, centred=False):
        if _rotated_centroids(state, "rb_rotation", derived) is None:  # as `own_list_terms`
            return None
        nq, n_tab = probe_sq.shape
        qr = _rotate(x, state["rb_rotation"])
        origin = self._l2_origin(state, derived, centred)
        if origin is not None:
            qr = np.ascontiguousarray(qr - origin)
        tables, bias = self._rotated_tables(qr, np.zeros((nq, n_tab), dtype=np.float32), nq=nq, per_probe=False,
                                            sdc=False)
        tables["q_sq"] = np.ascontiguousarray(probe_sq, dtype=np.float32)
        return tables, bias

    def _sdc_factors(self, layout: Any, kept: bool) -> np.ndarray:
        """The rows' (g, |r|^2) for a symmetric l2 scan: of the rows kept in list order
        (`kept`), else of the fast-scan blocks. Blocks laid out with own-list terms hold T =
        |r|^2 + 2 g <(c - m) R, s> in place of |r|^2 (`own_list_terms`); |r|^2 = T - 2 g <(c -
        m) R, s> is made from the blocks' bits on the first such scan and kept (4 bytes a row,
        as the popcount words are made then): the coded |r|^2 up to float32 rounding of T.
        The kept rows' |r|^2 goes through T and back the same way, so that a layout scores
        alike with its rows kept or not."""
        if not getattr(layout, "rb_own_terms", False):
            return layout.factors if kept else layout.block_factors
        name = "rb_sdc_row_factors" if kept else "rb_sdc_factors"
        out = getattr(layout, name, None)
        if out is None:
            state = layout.state
            derived = layout.codec._derived_of(state)
            vecs = self._term_centroids(state, derived, layout.codec.scans_centred)  # as the terms were made
            if kept:
                n, levels, nb = layout.bits.shape
                bits, factors, starts = layout.bits.reshape(n, levels * nb), layout.factors, layout.offsets
            else:
                bits, factors = fastscan.fs_block_bytes(layout.blocks), layout.block_factors
                starts = layout.block_offsets.astype(np.int64) * fastscan.BLOCK
            dots = binary.rb_sign_dots(bits, self.levels, vecs, np.arange(bits.shape[0], dtype=np.int64), starts)
            terms = _own_list_term(factors, dots) if kept else factors[:, 1]
            g = factors[:, 0]
            sq = terms.astype(np.float64) - 2.0 * g.astype(np.float64) * dots
            out = np.ascontiguousarray(np.stack([g, sq.astype(np.float32)], axis=1))
            setattr(layout, name, out)
        return out

    def tables_per_query(self, codec, n_probe, sdc=False):
        # with each row's own-list term (the rotated centroids within LIST_TERMS_BUDGET): one
        # table a query; symmetric scoring encodes every rotated residual (q - c) R, one per
        # probe
        fits = codec.nlist * codec.width * 4 <= LIST_TERMS_BUDGET
        return 1 if fits and not sdc else n_probe

    def _rotated_tables(self, rot, bias, *, nq, per_probe, sdc):
        """The tables of rotated (residual) queries rot (nq * L, width)."""
        n_tab = bias.shape[1] if per_probe else 1
        if per_probe:  # |q - c|^2 of each probe (l2 on residuals); unused otherwise
            q_sq = np.ascontiguousarray(np.einsum("ij,ij->i", rot, rot).reshape(nq, n_tab), dtype=np.float32)
        else:
            q_sq = np.zeros(bias.shape, dtype=np.float32)
        if sdc:
            bits, factors = binary.rb_encode_batch(rot, self.levels, binary._T_COARSE, binary._T_FINE_STEP)
            words = binary.rb_words(bits).reshape(nq, n_tab, self.levels, -1)
            q_scale = np.ascontiguousarray(factors[:, 0].reshape(nq, n_tab))
            return {"words": words, "q_scale": q_scale, "q_sq": q_sq}, bias
        luts = binary.rb_nibble_lut(rot, 1).reshape(nq, n_tab, -1, 16)  # level 0; level l is 2**-l x
        qluts, steps, biases = fastscan.fs_quantize_lut(luts)
        return {"qluts": qluts, "steps": steps, "biases": biases, "q_sq": q_sq}, bias

    def scan(self, layout, plan, k, *, is_l2, width, groups, list_major, floors):
        t = plan.tables
        if plan.sdc:
            if layout.bits is not None:  # the rows kept in list order
                rows = (self._sdc_factors(layout, True) if is_l2 else layout.factors, layout.ids, layout.offsets)
                if layout.words is None:
                    layout.words = binary.rb_words(layout.bits)
            else:
                # without them (a store's segments), the rows of the fast-scan blocks: a block
                # row's bytes are its sign bytes (`build_layout`); padding rows have id -1,
                # and rows marked dead share the blocks' ids, so the scan skips both
                rows = (self._sdc_factors(layout, False) if is_l2 else layout.block_factors, layout.block_ids,
                        layout.block_offsets * fastscan.BLOCK)
                if layout.words is None:
                    bits = fastscan.fs_block_bytes(layout.blocks)
                    layout.words = binary.rb_words(bits.reshape(bits.shape[0], self.levels, -1))
            return binary.rb_sdc_scan_batch(t["words"], t["q_scale"], layout.words, *rows, plan.probes, plan.bias,
                                            t["q_sq"], is_l2, width, k, floors)
        return _scan_factor_blocks(layout, plan, self.levels, layout.block_factors, t["q_sq"], is_l2, k, groups,
                                   list_major, floors)


@dataclasses.dataclass(frozen=True)
class SQ(Quantizer):
    """Per-dimension scalar quantization to `nbits` bits (8 or 4)."""

    nbits: int

    def __str__(self) -> str:
        return f"SQ{self.nbits}"

    def code_size(self, width: int, metric: str) -> int:
        return width if self.nbits == 8 else (width + 1) // 2

    def state_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"sq_vmin": (width,), "sq_vdiff": (width,)}

    def train(self, residuals: np.ndarray, rng: np.random.Generator, *, seed: int, rotation: str) -> Tables:
        vmin, vdiff = scalar.sq_train(residuals)
        return {"sq_vmin": vmin, "sq_vdiff": vdiff}

    def encode(self, residuals: np.ndarray, state: Tables) -> np.ndarray:
        return scalar.sq_encode(residuals, state["sq_vmin"], state["sq_vdiff"], self.nbits)

    def decode(self, codes: np.ndarray, state: Tables, width: int) -> np.ndarray:
        return scalar.sq_decode(codes, state["sq_vmin"], state["sq_vdiff"], self.nbits)

    def tables(self, tq, bias, state, *, nq, per_probe, metric, width, sdc, derived):
        n_tab = bias.shape[1] if per_probe else 1
        vmin, vdiff = state["sq_vmin"], state["sq_vdiff"]
        padded = width + (width % 2 if self.nbits == 4 else 0)
        w = np.zeros((nq, padded), dtype=np.float32)
        c = np.zeros((nq, n_tab, padded), dtype=np.float32)
        if metric == "l2":
            steps, cc = scalar.sq_query_terms(tq, vmin, vdiff, self.nbits, "l2")
            w[:, :width] = steps[:1]
            c[:, :, :width] = cc.reshape(nq, n_tab, -1)
        else:
            w[:, :width], const = scalar.sq_query_terms(tq, vmin, vdiff, self.nbits, "ip")
            bias = np.ascontiguousarray(bias + const[:, None], dtype=np.float32)
        return {"w": w, "c": c}, bias

    def scan(self, layout, plan, k, *, is_l2, width, groups, list_major, floors):
        t = plan.tables
        return scalar.sq_scan_batch(t["w"], t["c"], layout.codes, layout.ids, layout.offsets, plan.probes, plan.bias,
                                    self.nbits, is_l2, k, floors)


@dataclasses.dataclass(frozen=True)
class _Dense(Quantizer):
    """Uncompressed rows (F16, Flat): the vector itself, not a residual; scanned as rows of
    `row_dtype` (kernels/dense.py)."""

    residual = False
    row_dtype = "<f4"

    def encode(self, residuals: np.ndarray, state: Tables) -> np.ndarray:
        return residuals.astype(self.row_dtype).view(np.uint8)

    def decode(self, codes: np.ndarray, state: Tables, width: int) -> np.ndarray:
        return codes.view(self.row_dtype).astype(np.float32)

    def build_layout(self, codes, order, ids, offsets, width, keep_rows, l2_terms=None):
        # F16 rows go to the kernel as their uint16 bit patterns (Numba has no float16)
        view = "<u2" if self.row_dtype == "<f2" else self.row_dtype
        rows = np.ascontiguousarray(codes[order])
        return {"codes": rows.view(view).reshape(codes.shape[0], width), "ids": ids}

    def tables(self, tq, bias, state, *, nq, per_probe, metric, width, sdc, derived):
        return {"qs": np.ascontiguousarray(tq[:, None, :])}, bias

    def scan(self, layout, plan, k, *, is_l2, width, groups, list_major, floors):
        return dense.dense_scan_batch(plan.tables["qs"], layout.codes, layout.ids, layout.offsets, plan.probes,
                                      plan.bias, is_l2, k, floors)


@dataclasses.dataclass(frozen=True)
class F16(_Dense):
    """Half precision."""

    row_dtype = "<f2"

    def __str__(self) -> str:
        return "F16"

    def code_size(self, width: int, metric: str) -> int:
        return 2 * width

    def encode(self, residuals: np.ndarray, state: Tables) -> np.ndarray:
        big = np.abs(residuals) > np.finfo(np.float16).max
        if big.any():
            row = int(np.argwhere(big)[0, 0])
            raise InvalidInput(
                f"F16 codes values up to 65504 in magnitude, found {float(np.abs(residuals[row]).max()):.6g} "
                f"in row {row}"
            )
        return super().encode(residuals, state)


@dataclasses.dataclass(frozen=True)
class Flat(_Dense):
    """No compression (float32), the reference."""

    def __str__(self) -> str:
        return "Flat"

    def code_size(self, width: int, metric: str) -> int:
        return 4 * width
