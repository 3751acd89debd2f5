"""Codecs: spec strings, configs, training, encoding, decoding, and query plans.

A spec is comma-separated stages (DESIGN.md): `[MRL<d>,][IVF<n>,]QUANTIZER` where the
quantizer is one of `PQ<M>x<b>` (b = 4 or 8), `OPQ<M>x<b>` (the same after a learned
rotation of the residual), `RB<b>` (b = 1..8), `SQ8`, `SQ4`, `F16`, `Flat`.
`format_spec(parse_spec(s))` is the canonical spelling.

Pipeline of a vector x (float32, width `dim`):

1. cosine: ``x / |x|``. `MRL<d>`: keep x[:d], renormalised for cosine and ip.
2. A centre c: the IVF centroid of x's list (`IVF<n>`), or else the training mean (for
   PQ, RB and SQ; this is what makes RB's signs informative on real embeddings, whose mean
   is far from zero). Flat and F16 keep x itself.
3. The quantizer codes the residual r = x - c into `code_size` bytes.

Scores: ip and cosine are <q, c> + an estimate of <q, r>; l2 is ``|q - x|^2`` estimated from
tables built on q - c. Search returns `SearchResult(scores, ids, stats)`: scores
descending for ip/cosine, ascending squared distances for l2; empty slots hold id -1 and
the metric's worst score (-inf, or +inf for l2).

Trained state is plain float32 arrays (`state()`), rebuilt with `Codec.from_config(config,
state)`. No pickle.

Where things live: this module holds the spec grammar (`parse_spec`, `format_spec`,
`code_size`), the prefix stages `MRL` and `IVF`, and `Codec`, which runs the pipeline;
each quantizer stage carries its own training, coding, layout and scanning
(`vecz.engine.quantizers`); query plans, scan layouts and results live in
`vecz.engine.layout` (`QueryPlan`, `CodeIndex`, `SearchResult`), re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, NamedTuple

import numpy as np

from ..formats.importers import refuse_non_finite
from ..kernels import ivf, kmeans, transform
from .errors import CodecSpecError, DimensionMismatch, InvalidInput, NotTrained
from .inputs import as_ids, as_matrix
from .layout import CodeIndex, QueryPlan, ScanResult, SearchResult, SearchStats, plan_rows
from .quantizers import F16, PQ, RB, SQ, Flat, Quantizer, probe_sq_dist
from .threads import query_threads

__all__ = [
    "METRICS",
    "MAX_NORM",
    "MRL",
    "IVF",
    "PQ",
    "RB",
    "SQ",
    "F16",
    "Flat",
    "Quantizer",
    "parse_spec",
    "format_spec",
    "code_size",
    "Codec",
    "Codes",
    "CodeIndex",
    "QueryPlan",
    "ScanResult",
    "SearchResult",
    "SearchStats",
]

METRICS = ("cosine", "ip", "l2")
# Vectors and queries under ip/l2 must have norms below this: then every score, squared
# distance and RB factor stays finite in float32 (1e15 ** 2 * 4 < 3.4e38).
MAX_NORM = 1e15
CONFIG_ID = "vecz.codec"
CONFIG_VERSION = 1
# Rows are encoded in chunks of about this many bytes of float32 (`Codec._encode_prepared`).
ENCODE_CHUNK_BYTES = 64 << 20
# Training and encoding run BLAS on all threads from this many rows (the rule searches had
# until stop 48, when BLAS on one thread made IVF batches 1.1-1.4x faster). For a build it
# is near level: 60,000 minilm rows, Store.create + add, BLAS on all threads / on one:
# IVF256,PQ48x8 4.9-5.3 / 4.4 s, IVF1024,RB1 3.8-4.1 / 3.6-3.9 s, OPQ48x8 15.3-15.4 /
# 14.9-15.6 s (Zen 4, 2 threads); kept until a larger build says otherwise
ENCODE_SERIAL_BLAS_ROWS = 256
# A centred cosine plan's lambda (`Codec.scans_centred`) is the query's <x, c> / |c|^2 held to
# this range: below it, x / lambda would grow the kernels' float32 sums past their precision
# (at 0.25 a score of about 25 against the cosines' 1); above, nothing gains.
CENTRE_MIN, CENTRE_MAX = 0.25, 4.0

# --------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class MRL:
    """Matryoshka truncation to the first `dim` dimensions."""

    dim: int

    role = "mrl"

    def __str__(self) -> str:
        return f"MRL{self.dim}"


@dataclasses.dataclass(frozen=True)
class IVF:
    """Coarse k-means partition into `nlist` lists."""

    nlist: int

    role = "ivf"

    def __str__(self) -> str:
        return f"IVF{self.nlist}"


Stage = MRL | IVF | Quantizer


def _positive(text: str, stage: str, what: str) -> int:
    # ASCII digits only (the patterns): "PQ\u0663x8" is no spec, not PQ3x8
    if len(text) > 9:
        raise CodecSpecError(f"stage {stage!r}: {what} must be at most 9 digits, found {len(text)}")
    value = int(text)
    if value < 1:
        raise CodecSpecError(f"stage {stage!r}: {what} must be >= 1, found {value}")
    return value


def _parse_pq(m: re.Match, stage: str) -> PQ:
    nbits = int(m.group(3)) if len(m.group(3)) <= 9 else None
    if nbits not in (4, 8):
        raise CodecSpecError(f"stage {stage!r}: PQ bits must be 4 or 8, found {m.group(3)}")
    return PQ(_positive(m.group(2), stage, "M"), nbits, rotate=bool(m.group(1)))


def _parse_rb(m: re.Match, stage: str) -> RB:
    levels = int(m.group(1)) if len(m.group(1)) <= 9 else 0
    if not 1 <= levels <= 8:
        raise CodecSpecError(f"stage {stage!r}: RB levels must be 1..8, found {m.group(1)}")
    return RB(levels)


# One table: each stage's pattern and its parser.
_STAGES: list[tuple[re.Pattern, Callable[[re.Match, str], Stage]]] = [
    (re.compile(r"MRL([0-9]+)"), lambda m, s: MRL(_positive(m.group(1), s, "dim"))),
    (re.compile(r"IVF([0-9]+)"), lambda m, s: IVF(_positive(m.group(1), s, "nlist"))),
    (re.compile(r"(O?)PQ([0-9]+)x([0-9]+)"), _parse_pq),
    (re.compile(r"RB([0-9]+)"), _parse_rb),
    (re.compile(r"SQ([48])"), lambda m, s: SQ(int(m.group(1)))),
    (re.compile(r"F16"), lambda m, s: F16()),
    (re.compile(r"Flat"), lambda m, s: Flat()),
]


def _parse_stage(text: str) -> Stage:
    for pattern, parser in _STAGES:
        m = pattern.fullmatch(text)
        if m:
            return parser(m, text)
    raise CodecSpecError(
        f"unknown stage {text!r}: expected one of MRL<d>, IVF<n>, PQ<M>x<4|8>, OPQ<M>x<4|8>, RB<1..8>, SQ8, SQ4, "
        "F16, Flat"
    )


def parse_spec(spec: str) -> tuple[Stage, ...]:
    """Parse a spec string into stages; raises CodecSpecError naming the bad stage."""
    if not isinstance(spec, str):
        raise CodecSpecError(f"a codec spec is a string, found {type(spec).__name__}")
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise CodecSpecError(f"codec spec {spec!r}: expected comma-separated stages, found an empty stage")
    stages = tuple(_parse_stage(p) for p in parts)
    *prefix, last = stages
    if last.role != "quantizer":
        raise CodecSpecError(f"codec spec {spec!r} must end with a quantizer stage, found {str(last)!r}")
    order = {"mrl": 0, "ivf": 1}
    seen = -1
    for stage in prefix:
        rank = order.get(stage.role)
        if rank is None:
            raise CodecSpecError(f"codec spec {spec!r}: quantizer stage {str(stage)!r} must be the last stage")
        if rank <= seen:
            raise CodecSpecError(
                f"codec spec {spec!r}: stage {str(stage)!r} is repeated or out of order (expected MRL, then IVF)"
            )
        seen = rank
    return stages


def format_spec(stages: tuple[Stage, ...]) -> str:
    """Canonical spec string of parsed stages."""
    return ",".join(str(s) for s in stages)


def _split(stages: tuple[Stage, ...]) -> tuple[MRL | None, IVF | None, Quantizer]:
    mrl = next((s for s in stages if s.role == "mrl"), None)
    coarse = next((s for s in stages if s.role == "ivf"), None)
    return mrl, coarse, stages[-1]  # type: ignore[return-value]


def _check_fits(stages: tuple[Stage, ...], dim: int, spec: str) -> int:
    """Validate the spec against the input dimension; returns the coded width."""
    if dim < 1:
        raise CodecSpecError(f"dimension must be >= 1, found {dim}")
    mrl, _, quant = _split(stages)
    width = dim
    if mrl is not None:
        if mrl.dim > dim:
            raise CodecSpecError(f"stage {str(mrl)!r} keeps {mrl.dim} dims but vectors have only {dim}")
        width = mrl.dim
    quant.check_width(width, spec)
    return width


def _takes_row_norms(stages: tuple[Stage, ...], metric: str) -> bool:
    """Whether a codec of these stages under `metric` may store row norms (`PQ.row_norms`):
    PQ under ip without MRL (MRL renormalises the rows it keeps)."""
    mrl, _, quant = _split(stages)
    return metric == "ip" and mrl is None and isinstance(quant, PQ)


def _takes_spread(stages: tuple[Stage, ...], width: int) -> bool:
    """Whether a codec of these stages coding `width` dims has a PQ to spread (`PQ.spread`:
    width % M != 0)."""
    quant = stages[-1]
    return isinstance(quant, PQ) and width % quant.m != 0


def _config_bool(config: dict[str, Any], key: str) -> bool:
    """A config's boolean `key` (absent: False, written before the field existed)."""
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise CodecSpecError(f"codec config field {key!r}: expected a boolean, found {value!r:.80}")
    return value


def _config_row_norms(config: dict[str, Any]) -> bool:
    """A config's ``row_norms`` (absent: False, written before row norms existed)."""
    value = _config_bool(config, "row_norms")
    if value and not _takes_row_norms(parse_spec(config["spec"]), config["metric"]):
        raise CodecSpecError(f"codec config: row_norms true for {config['spec']!r} under {config['metric']!r}, "
                             "expected it only for PQ under 'ip' without MRL")
    return value


def _frozen(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A trained state whose arrays refuse writes (`Codec.state` hands them out; arrays
    derived from them are cached, and a caller's edit changed the codec under its caches)."""
    for arr in state.values():
        arr.setflags(write=False)
    return state


def code_size(spec: str, dim: int, metric: str = "cosine") -> int:
    """Bytes of code per vector for `spec` on `dim`-wide vectors, known before training
    (a new codec's: PQ under ip with its row norms, `Codec`'s ``row_norms``).

    Ids and IVF list numbers are not included (the store counts ids separately).
    """
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise InvalidInput(f"dim: expected an integer >= 1, found {dim!r}")
    stages = parse_spec(spec)
    width = _check_fits(stages, int(dim), spec)
    quant = stages[-1]
    if _takes_row_norms(stages, metric):
        quant = dataclasses.replace(quant, row_norms=True)
    return quant.code_size(width, metric)


# --------------------------------------------------------------------------- codes


class Codes(NamedTuple):
    """Encoded vectors: codes uint8 (n, code_size) and IVF list int64 (n,) (0 without IVF)."""

    codes: np.ndarray
    lists: np.ndarray


# --------------------------------------------------------------------------- codec


def check_norms(x: np.ndarray, metric: str, what: str) -> None:
    """Under ip and l2, refuse rows of norm `MAX_NORM` or more (their scores leave float32:
    rows of norm 4e20 scored inf and searches answered id -1); cosine normalises them."""
    if metric == "cosine" or not x.size:
        return
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    big = np.flatnonzero(norms >= MAX_NORM)
    if big.size:
        raise _row_error(f"{{where}}: expected vector norms below {MAX_NORM:.0e} ({metric} scores must stay finite "
                         f"in float32), found {norms[big[0]]:.3g} in row {{row}}", what, int(big[0]))


def _row_error(template: str, where: str, row: int) -> InvalidInput:
    """InvalidInput over row `row` of `where`'s rows, keeping `template` (with ``{where}`` and
    ``{row}``) and the row so that a caller reading a file can name the file's row instead
    (the CLI's `_file_rows`)."""
    exc = InvalidInput(template.format(where=where, row=row))
    exc.row, exc.template = row, template  # type: ignore[attr-defined]
    return exc


def _as_vectors(x: Any, dim: int, what: str, column: str | None = None, metric: str | None = None) -> np.ndarray:
    arr = as_matrix(x, dim, what, column)
    if arr.ndim == 1:
        arr = arr[None, :] if arr.size else arr.reshape(0, dim)  # [] is an empty batch
    if arr.ndim != 2:
        raise InvalidInput(f"{what} must be a 2-D array (n, {dim}), found shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise InvalidInput(f"{what} must be float16/32/64, found dtype {arr.dtype}")
    if arr.shape[1] != dim:
        raise DimensionMismatch(f"{what}: expected width {dim}, found {arr.shape[1]}")
    given = arr
    if arr.dtype.itemsize > 4:  # float64 (or longer) beyond float32's range becomes inf, reported below
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    else:  # float16 and float32 fit
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    refuse_non_finite(arr, what, given=given)
    if metric == "cosine" and given.dtype.itemsize > 4:  # under ip and l2 zeros are the nearest float32 row
        _refuse_underflow(arr, given, what)
    return arr


def _refuse_underflow(arr: np.ndarray, given: np.ndarray, what: str) -> None:
    """A wider float row that is not all zeros but whose every value is below float32's
    smallest subnormal became all zeros in `arr`: cosine called it "all zeros", though it has
    a direction. Refused, naming the row (cosine only)."""
    zero = np.flatnonzero(~arr.any(axis=1))
    if zero.size == 0:
        return
    lost = zero[given[zero].any(axis=1)]
    if lost.size:
        row = int(lost[0])
        raise _row_error(f"{{where}}: row {{row}} is not all zeros, but every value is below float32's smallest "
                         f"({float(np.finfo(np.float32).smallest_subnormal):.3g}; largest |value| "
                         f"{float(np.abs(given[row]).max()):.3g}): vecz keeps float32, so scale the vectors up",
                         what, row)


# how far R^T R v may stray from v for a unit v: a trained rotation is orthogonal to float32
# rounding (about 1e-6 at 4096 dims); a damaged one (all zeros scored every row alike) is not
ORTHOGONAL_TOL = 1e-3


def _check_orthogonal(name: str, rot: np.ndarray) -> None:
    """Refuse a square state array that is not orthogonal, probed with 8 fixed random unit
    vectors (width^2 work, not the width^3 of R^T R: a 4096-d store opens in milliseconds)."""
    probe = np.random.default_rng(0).standard_normal((rot.shape[0], 8))
    probe /= np.linalg.norm(probe, axis=0)
    r = rot.astype(np.float64)
    off = float(np.abs(r.T @ (r @ probe) - probe).max())
    if not off <= ORTHOGONAL_TOL:
        raise CodecSpecError(f"trained array {name!r}: expected an orthogonal rotation (R^T R = I, as training "
                             f"makes it), found R^T R v off v by up to {off:.3g} for unit v")


# float16's largest value and smallest normal (6.1e-05): the row norms PQ stores
# (`PQ.row_norms`) and the values an f16 dense tier keeps (`writes.check_rows`)
F16_MAX = float(np.finfo(np.float16).max)
F16_NORMAL_MIN = float(np.finfo(np.float16).tiny)
_ROW_NORM_MAX, _ROW_NORM_MIN = F16_MAX, F16_NORMAL_MIN


def _norm_bytes(x: np.ndarray) -> np.ndarray:
    """Each row's norm ``|x|`` (summed in float64) as little-endian float16 bytes, uint8 (n, 2).
    A nonzero norm outside float16's normal range raises InvalidInput: under ip a common
    scale of all rows changes no ranking, so such rows can be scaled (below 6.1e-05 a
    float16 loses precision, below 6e-08 it is 0: every such row scored 0)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if norms.size and norms.max() > _ROW_NORM_MAX:
        row = int(np.argmax(norms))
        raise InvalidInput(f"vectors: PQ under ip stores each row's norm as a float16, expected norms up to "
                           f"{_ROW_NORM_MAX:g}, found {norms[row]:.6g} in row {row} (scale all vectors down by one "
                           "factor: ip rankings do not change)")
    tiny = np.flatnonzero((norms > 0) & (norms < _ROW_NORM_MIN))
    if tiny.size:
        row = int(tiny[0])
        raise InvalidInput(f"vectors: PQ under ip stores each row's norm as a float16, expected norms of at least "
                           f"{_ROW_NORM_MIN:.3g} (or 0), found {norms[row]:.6g} in row {row} (scale all vectors up by "
                           "one factor: ip rankings do not change)")
    return np.ascontiguousarray(norms.astype("<f2")).view(np.uint8).reshape(-1, 2)


# Held-out residuals are added only when at least this share of the training rows are their
# list's centroid (few rows a list); a list of one is otherwise an outlier, whose residual to
# another centroid is large and widened SQ's per-dimension ranges for every row (one outlier
# in 5,000 rows: IVF64,SQ4 recall@10 0.762 -> 0.360).
HELD_OUT_MIN_SHARE = 0.1


def _held_out_residuals(x: np.ndarray, r: np.ndarray, lists: np.ndarray, centroids: np.ndarray,
                        metric: str) -> np.ndarray | None:
    """More training residuals for the rows that are their list's centroid (a list of one
    training row, or copies of it; `lists` are the rows' lists): their residual r = x - c
    is 0, but a row added later never is. Each also gives its residual to the nearest
    distinct centroid after its own (held out), which the quantizer trains on beside the
    zeros, so the training rows keep a code of their own. With few rows a list, PQ's books
    and SQ's ranges trained on the zeros alone (all 0 with one row a list) and coded later
    rows as little more than their centroid. None when fewer than `HELD_OUT_MIN_SHARE` of
    the rows are their centroid, or when there is no other centroid."""
    zero = np.flatnonzero(~r.any(axis=1))
    distinct = kmeans.distinct_rows(centroids)
    if zero.size < HELD_OUT_MIN_SHARE * r.shape[0] or distinct.size < 2:
        return None  # a few outliers alone in their lists: their far residuals would widen SQ's ranges
    _, top = ivf.ivf_probe(x[zero], centroids[distinct], 2, metric)
    own = np.searchsorted(distinct, lists[zero])  # a row's list is the first of equal centroids
    other = np.where(top[:, 0] == own, top[:, 1], top[:, 0])
    return x[zero] - centroids[distinct[other]]


def _encode_scope(n: int) -> query_threads:
    """The thread scope of training or encoding a chunk of `n` rows: its parallel kernels run
    inside the fork guard (engine/parallel.py), on this thread alone where the guard says
    no (a process forked while another thread used TBB), all threads otherwise; BLAS on one
    thread for 2 to ENCODE_SERIAL_BLAS_ROWS - 1 rows, on all from there (searches run BLAS
    on one thread whatever their batch: engine/threads.py)."""
    return query_threads(n, 1, serial_blas=2 <= n < ENCODE_SERIAL_BLAS_ROWS)


class Codec:
    """A codec named by a spec string, for vectors of width `dim` under `metric`.

    Parameters
    ----------
    spec : str
        Spec string, e.g. ``"PQ48x8"``, ``"IVF1024,RB2"``, ``"MRL256,F16"``.
    dim : int
        Width of the input vectors.
    metric : {"cosine", "ip", "l2"}
    seed : int
        Seed of every random choice in training (k-means, rotations). The same seed, sample,
        machine and BLAS thread count train the same codec; with another BLAS thread count
        the float32 BLAS products of a learned rotation (RB's ITQ, OPQ) round differently, so
        its rotation and codes may differ in the last bits.
    train_size : int
        Training uses at most this many rows of the sample (drawn with `seed`).
    rotation : {"itq", "random"}
        RB only: the orthogonal rotation applied before binarization. ITQ is learned on the
        training residuals and measured better on real embeddings (see README).
    row_norms : bool or None
        PQ under ip without MRL only: each code ends with the row's norm (2 bytes, float16)
        and rows score ``|x| <q, x_hat> / |x_hat|`` (`vecz.engine.quantizers.PQ`). None (the
        default) means True where it applies; False keeps the plain <q, x_hat> (codecs
        from faiss, whose codes carry no norms, and configs written before it).
    pq_spread : bool or None
        PQ on a width M does not divide only: each sub-quantizer codes ceil or floor(width /
        M) dims (`vecz.engine.quantizers.PQ`'s ``spread``). None (the default) means True
        where it applies; False pads on the right, as codecs made before it did (their
        configs lack the field), leaving sub-quantizers wholly past the last dim unused.

    Thread-safety: only `train` changes a codec (calling it again trains it anew, in place);
    between such calls `encode`, `decode`, `plan` and `CodeIndex.search` may run from
    several threads. A `Store` keeps its own copy of the codec it is given.
    """

    def __init__(
        self,
        spec: str,
        dim: int,
        metric: str = "cosine",
        *,
        seed: int = 0,
        train_size: int = 65536,
        rotation: str = "itq",
        row_norms: bool | None = None,
        pq_spread: bool | None = None,
    ) -> None:
        if metric not in METRICS:
            raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
        if rotation not in ("itq", "random"):
            raise InvalidInput(f"rotation must be 'itq' or 'random', found {rotation!r}")
        # checked here, not at training: a store created with them would fail its first add
        for name, value, low in (("seed", seed, 0), ("train_size", train_size, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise InvalidInput(f"{name}: expected an integer >= {low}, found {value!r}")
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
            raise InvalidInput(f"dim: expected an integer >= 1, found {dim!r}")
        self.stages = parse_spec(spec)
        self.spec = format_spec(self.stages)
        self.dim = int(dim)
        self.metric = metric
        self.seed = int(seed)
        self.train_size = int(train_size)
        self.rotation = rotation
        self.width = _check_fits(self.stages, self.dim, spec)
        if row_norms is not None and not isinstance(row_norms, (bool, np.bool_)):
            raise InvalidInput(f"row_norms: expected True, False or None, found {row_norms!r}")
        row_norms = None if row_norms is None else bool(row_norms)  # np.False_ is not False
        fits = _takes_row_norms(self.stages, metric)
        if row_norms and not fits:
            raise InvalidInput(f"row_norms: only PQ under metric 'ip' without MRL stores row norms, found "
                               f"{self.spec!r} under {metric!r}")
        if fits and row_norms is not False:
            self.stages = (*self.stages[:-1], dataclasses.replace(self.stages[-1], row_norms=True))
        if pq_spread is not None and not isinstance(pq_spread, (bool, np.bool_)):
            raise InvalidInput(f"pq_spread: expected True, False or None, found {pq_spread!r}")
        spreads = _takes_spread(self.stages, self.width)
        if pq_spread and not spreads:
            raise InvalidInput(f"pq_spread: only PQ on a width M does not divide spreads its padding, found "
                               f"{self.spec!r} on {self.width} dims")
        if spreads and (pq_spread is None or bool(pq_spread)):
            self.stages = (*self.stages[:-1], dataclasses.replace(self.stages[-1], spread=True))
        self.mrl, self.ivf, self.quantizer = _split(self.stages)
        self.code_size = self.quantizer.code_size(self.width, metric)
        self._state: dict[str, np.ndarray] | None = None
        # arrays a search derives from the state (`Quantizer.probe_tables`): (the state they
        # were derived from, name -> array); see `_derived_of`
        self._derived: tuple[Any, dict[str, Any]] = (None, {})

    # ---- config

    def __repr__(self) -> str:
        return (
            f"Codec({self.spec!r}, dim={self.dim}, metric={self.metric!r}, seed={self.seed}, "
            f"train_size={self.train_size}, rotation={self.rotation!r}"
            + (", row_norms=False" if not self.row_norms and _takes_row_norms(self.stages, self.metric) else "")
            + (", pq_spread=False" if not self.pq_spread and _takes_spread(self.stages, self.width) else "")
            + ")"
        )

    def to_config(self) -> dict[str, Any]:
        """JSON-only description: ``{"id": "vecz.codec", ...}``."""
        return {
            "id": CONFIG_ID,
            "version": CONFIG_VERSION,
            "spec": self.spec,
            "dim": self.dim,
            "metric": self.metric,
            "seed": self.seed,
            "train_size": self.train_size,
            "rotation": self.rotation,
            "code_size": self.code_size,
            # where it applies (`_takes_row_norms`) always written: a config without it
            # predates row norms and means False
            **({"row_norms": self.row_norms} if _takes_row_norms(self.stages, self.metric) else {}),
            # likewise: a config without it predates the spread padding and means False
            **({"pq_spread": self.pq_spread} if _takes_spread(self.stages, self.width) else {}),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], state: dict[str, np.ndarray] | None = None) -> "Codec":
        """Rebuild a codec from `to_config()` (and, if trained, its `state()` arrays)."""
        if not isinstance(config, dict) or config.get("id") != CONFIG_ID:
            raise CodecSpecError(f"expected a config with id {CONFIG_ID!r}, found {config!r:.200}")
        version = config.get("version")
        if type(version) is not int or version != CONFIG_VERSION:  # True and 1.0 are not version 1
            raise CodecSpecError(f"codec config version {config.get('version')!r} is not {CONFIG_VERSION}")
        # a config read from a store's manifest is untrusted: a missing or mistyped field is a
        # CodecSpecError, never a KeyError or the TypeError/ValueError of int(None) / int("")
        for key, kind in (("spec", str), ("dim", int), ("metric", str)):
            if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
                raise CodecSpecError(f"codec config field {key!r}: expected {kind.__name__}, "
                                     f"found {config.get(key)!r:.80}")
        if config["metric"] not in METRICS:  # (checked before row_norms, whose message blamed itself)
            raise CodecSpecError(f"codec config field 'metric': expected one of {METRICS}, found "
                                 f"{config['metric']!r:.40}")
        codec = cls(
            config["spec"],
            config["dim"],
            config["metric"],
            seed=config.get("seed", 0),
            train_size=config.get("train_size", 65536),
            rotation=config.get("rotation", "itq"),
            row_norms=_config_row_norms(config),
            pq_spread=_config_bool(config, "pq_spread"),
        )
        if "code_size" in config and (type(config["code_size"]) is not int or config["code_size"] != codec.code_size):
            raise CodecSpecError(f"config says code_size {config['code_size']!r}, spec gives {codec.code_size}")
        if state is not None:
            codec._load_state(state)
        return codec

    @classmethod
    def from_faiss(cls, index: Any) -> "Codec":
        """A trained codec that codes vectors as the trained faiss `index` does.

        Parameters
        ----------
        index : faiss.Index
            IndexFlat, IndexScalarQuantizer, IndexPQ, IndexPQFastScan or their IVF forms,
            optionally in an IndexPreTransform (L2 normalisation: cosine; first-m-dims
            LinearTransform: MRL). The mapping table is in `vecz.engine.faiss_interop`.

        Raises
        ------
        CodecSpecError
            The index has no vecz equivalent (the message says what was expected and found).
        MissingDependency
            faiss is not installed.
        """
        from .faiss_interop import codec_from_faiss  # faiss is an optional extra: imported on use

        return codec_from_faiss(index, cls)

    def to_faiss(self, *, fast_scan: bool = True) -> Any:
        """The trained, empty faiss index whose ``sa_encode`` gives this codec's codes (SQ and
        F16: but for values on rounding boundaries; see `vecz.engine.faiss_interop`).

        Parameters
        ----------
        fast_scan : bool
            PQ<M>x4 only: IndexPQFastScan / IndexIVFPQFastScan (default) or IndexPQ / IndexIVFPQ.

        Raises
        ------
        CodecSpecError
            RB (no faiss twin), or PQ whose width does not divide by M.
        NotTrained
            The codec is not trained.
        """
        from .faiss_interop import codec_to_faiss

        return codec_to_faiss(self, fast_scan=fast_scan)

    def __eq__(self, other: object) -> bool:
        """Same config and same trained state (both untrained, or equal arrays)."""
        if not isinstance(other, Codec) or self.to_config() != other.to_config():
            return False
        if self._state is None or other._state is None:
            return self._state is other._state
        return self._state.keys() == other._state.keys() and all(
            np.array_equal(v, other._state[k]) for k, v in self._state.items()
        )

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_config(), sort_keys=True))

    @property
    def is_trained(self) -> bool:
        return self._state is not None

    @property
    def nlist(self) -> int:
        return self.ivf.nlist if self.ivf is not None else 1

    @property
    def score_rule(self) -> int:
        """The rule its quantizer scores codes by under this metric (`Quantizer.score_rule`;
        3: a centred cosine scan, ``scans_centred``; 5: PQ under ip behind MRL, scored as
        under cosine, ``unit_rows``; 6: PQ x4 and (since stop 47) RB under l2 behind IVF, one
        inner-product table a query and each row's own-list term, ``_own_lists``): an error model measured under
        another one does not apply to this codec's scores."""
        if self.scans_centred:
            return 3
        if self.metric == "ip" and self.unit_rows and isinstance(self.quantizer, PQ):
            return 5
        if self._own_lists:
            return 6
        return self.quantizer.score_rule(self.metric)

    @property
    def row_norms(self) -> bool:
        """Whether each code ends with its row's norm (`PQ.row_norms`; the constructor's
        ``row_norms``)."""
        return bool(getattr(self.quantizer, "row_norms", False))

    @property
    def pq_spread(self) -> bool:
        """Whether PQ spreads its padding over the sub-quantizers (`PQ.spread`; the
        constructor's ``pq_spread``)."""
        return bool(getattr(self.quantizer, "spread", False))

    @property
    def unit_rows(self) -> bool:
        """Whether the coded rows (and queries) are unit vectors: under cosine, and under ip
        behind MRL, which renormalises what it keeps. PQ then scores the cosine to the
        reconstruction, <q, x_hat> / |x_hat| (since stop 45 under ip + MRL too: on unit
        rows <q, x_hat> alone errs by a shrink that grows with the score)."""
        return self.metric == "cosine" or (self.metric == "ip" and self.mrl is not None)

    def state(self) -> dict[str, np.ndarray]:
        """Trained arrays by name (float32, read-only: only another `train` replaces them), to
        be saved beside the config."""
        return dict(self._require())

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"centroids": (self.nlist, self.width), **self.quantizer.state_shapes(self.width)}

    def _state_shapes_at_most(self) -> dict[str, tuple[int, ...]]:
        """Every array a trained state may hold: the required and the optional ones."""
        return {**self._expected_shapes(), **self.quantizer.optional_state_shapes(self.width)}

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        required = self._expected_shapes()
        loaded = {}
        for name, shape in self._state_shapes_at_most().items():
            if name not in state:
                if name not in required:  # optional: a codec trained before it, or from faiss
                    continue
                raise CodecSpecError(f"trained state of {self.spec!r} lacks array {name!r}")
            arr = np.asarray(state[name])
            if arr.shape != shape:
                raise CodecSpecError(f"trained array {name!r}: expected shape {shape}, found {arr.shape}")
            if arr.dtype.kind not in "fiu":  # strings raised a raw ValueError; complex lost its imaginary part
                raise CodecSpecError(f"trained array {name!r}: expected real numbers, found dtype {arr.dtype}")
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused below
                loaded[name] = np.array(arr, dtype=np.float32, order="C")  # a copy: the caller's array may change
            # training never produces NaN or inf; a state read from a file that holds them
            # would make every score NaN and every search silently return nothing
            if not np.isfinite(loaded[name]).all():
                raise CodecSpecError(f"trained array {name!r}: expected finite values, found NaN or inf")
            if name in self.quantizer.NON_NEGATIVE_STATE and loaded[name].size and loaded[name].min() < 0:
                raise CodecSpecError(f"trained array {name!r}: expected values >= 0, found {loaded[name].min():g}")
            if name in self.quantizer.ORTHOGONAL_STATE:
                _check_orthogonal(name, loaded[name])
        self._state = _frozen(loaded)
        self._derived = (None, {})  # free the old state's arrays now (`_derived_of` guards races)

    def _derived_of(self, state: dict[str, np.ndarray]) -> dict[str, Any]:
        """The arrays derived from `state` (this codec's state when the caller read it):
        kept beside the state object they came from, so a search that read the state before
        a `train` or load never fills the new state's cache with the old state's arrays
        (the worst a race costs is deriving again)."""
        owner, derived = self._derived
        if owner is not state:
            derived = {}
            self._derived = (state, derived)
        return derived

    def derived_nbytes(self) -> int:
        """Bytes of the arrays searches derived from the current state (PQ's per-list l2
        terms, RB's rotated centroids)."""
        owner, derived = self._derived
        if owner is None or owner is not self._state:
            return 0
        return sum(a.nbytes for a in derived.values() if isinstance(a, np.ndarray))

    def _require(self) -> dict[str, np.ndarray]:
        if self._state is None:
            raise NotTrained(f"codec {self.spec!r} is not trained: call train(sample) first")
        return self._state

    # ---- preparation shared by training, encoding and queries

    def _prepare(self, x: Any, what: str, column: str | None = None) -> np.ndarray:
        """Rows as coded: unit-normalised for cosine, MRL-truncated (and renormalised for
        cosine/ip). A vector of norm zero has no direction: under cosine, or when MRL must
        renormalise an all-zero prefix, it is an `InvalidInput` rather than an arbitrary code."""
        return self._prepare_rows(_as_vectors(x, self.dim, what, column, self.metric), what)

    def _prepare_rows(self, arr: np.ndarray, what: str) -> np.ndarray:
        """`_prepare` of rows `_as_vectors` already checked (float32 (n, dim), C-contiguous,
        finite). Under ip and l2, norms of `MAX_NORM` or more are refused: their scores
        leave float32 (rows of norm 4e20 scored inf and searches answered id -1)."""
        check_norms(arr, self.metric, what)
        if self.metric == "cosine":
            arr, zero = transform.normalize_rows_checked(arr)
            if zero >= 0:
                raise _row_error("{where}: cosine similarity needs vectors of non-zero norm, found row {row} all zeros",
                                 what, zero)
        if self.mrl is not None:
            arr, zero = transform.mrl_truncate_checked(arr, self.mrl.dim, renorm=self.metric != "l2")
            if zero >= 0:
                raise _row_error(f"{{where}}: {self.mrl} keeps the first {self.mrl.dim} dims and renormalises them "
                                 f"for {self.metric}; expected them non-zero, found row {{row}} all zeros there",
                                 what, zero)
        return arr

    @property
    def _residual(self) -> bool:
        return self.quantizer.residual

    @property
    def scans_centred(self) -> bool:
        """Whether unit queries are scanned centred (``Quantizer.centred_cosine``: RB).

        The codes hold r = x - c of unit rows x. Scored as <x, c> + <x, r>, the estimate of
        <x, r> errs in proportion to |x| = 1; an embedding whose rows and queries lean one
        way (all cosines high, as OpenAI's ada-002) then loses most of its ranking (minilm
        with every vector pushed toward the mean to a cosine of 0.87: RB1's recall@10 at
        depth 100 fell to 0.86 from 0.99). So the scan estimates <x - lambda c, r> instead,
        whose error goes with |x - lambda c|, smallest at lambda = <x, c> / |c|^2 (held to
        CENTRE_MIN..CENTRE_MAX), and adds lambda <c, r>, exact from the stored |r|^2 since
        |x| = 1: <c, r> = (1 - |c|^2 - |r|^2) / 2. That sum is the l2 scan of the query
        x / lambda on residuals, mapped back:
        <x, y> = (lambda / 2) (-|x / lambda - y|^2) + (1 / lambda + lambda) / 2
        (``layout.centred_to_cosine``). Score rule 3 (``Codec.score_rule``).

        With IVF, c is each row's own list centroid and lambda comes from the query's first
        probed one. The l2 scan would make one table per probed list (minilm IVF256,RB1 at
        nprobe 64 ran batches at 0.6x the QPS that way); instead the layout keeps each row's
        |r|^2 + 2 g <c R, s> in place of |r|^2 (``Quantizer.own_list_terms``), so that one
        table of x / lambda a query serves every list. Symmetric scoring (``sdc=True``)
        stays uncentred, as it was (not measured centred). Under ip behind MRL the rows and
        queries are unit vectors too (``unit_rows``), and are scanned the same way.
        """
        return self.unit_rows and self.quantizer.centred_cosine and self._residual

    @property
    def _own_lists(self) -> bool:
        """Whether IVF layouts keep each row's l2 term with its own list's centroid folded in
        (`Quantizer.own_list_terms`), so that one table a query serves every probed list: the
        centred scans (`scans_centred`) and l2 on residuals where the quantizer offers it
        (`Quantizer.own_list_l2`: PQ x4 and RB)."""
        return self.ivf is not None and (self.scans_centred or (self.metric == "l2" and self.quantizer.own_list_l2))

    def _own_list_terms(self, codes: np.ndarray, order: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
        """The per-row l2 terms a layout of these codes (lists in `order` at `offsets`, as
        the layout orders them) holds for a scan with one table a query (`_own_lists`), or
        None."""
        if not self._own_lists:
            return None
        if not len(codes):  # a layout the own-list plan scans holds its (empty) terms
            return np.zeros(0, dtype=np.float32)
        state = self._require()
        return self.quantizer.own_list_terms(codes, order, offsets, state, self._derived_of(state),
                                             centred=self.scans_centred)

    def lists_probed(self, nprobe: int) -> int:
        """Lists a query probes at `nprobe`: 1 without IVF, else at most the distinct lists
        (`_distinct_lists`; at most `nlist` for a codec without its trained state)."""
        if self.ivf is None:
            return 1
        if self._state is None:
            return min(int(nprobe), self.nlist)
        distinct = self._distinct_lists(self._state)
        return min(int(nprobe), self.nlist if distinct is None else distinct.size)

    def _distinct_lists(self, state: dict[str, np.ndarray]) -> np.ndarray | None:
        """The lists whose centroid no earlier list has, int64 ascending, or None when every
        centroid is distinct; made once per state. A codec trained on fewer distinct rows
        than lists repeats them as centroids (`kmeans.kmeans_fit`); a row goes to the first
        of equal centroids (`ivf.ivf_assign`), so the copies stay empty, and probing them
        took the probes of lists holding rows (a query found 1 row of k = 10)."""
        derived = self._derived_of(state)
        if "distinct_lists" not in derived:
            first = kmeans.distinct_rows(state["centroids"])
            derived["distinct_lists"] = None if first.size == state["centroids"].shape[0] else first
        return derived["distinct_lists"]

    def _centroid_sq(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """|c|^2 of every centroid, float64 (nlist,), each row summed alone; made once per
        state."""
        derived = self._derived_of(state)
        out = derived.get("centroid_sq")
        if out is None:
            c = state["centroids"].astype(np.float64)
            out = derived["centroid_sq"] = (c * c).sum(axis=1)
        return out

    def _centres(self, x: np.ndarray, probes: np.ndarray) -> np.ndarray:
        """Each prepared query's lambda (``scans_centred``), float64 (nq,), from its first
        probed list's centroid c: <x, c> / |c|^2 within CENTRE_MIN..CENTRE_MAX (1 when c is
        0). Each row is summed alone: a query's lambda does not depend on its batch."""
        state = self._require()
        first = np.maximum(probes[:, 0], 0)
        cc = self._centroid_sq(state)[first]
        xc = (x.astype(np.float64) * state["centroids"][first]).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(cc > 0.0, xc / cc, 1.0)
        return np.clip(lam, CENTRE_MIN, CENTRE_MAX)

    @property
    def _coarse_metric(self) -> str:
        return "l2" if self.metric == "l2" else "ip"

    # ---- training

    def train(self, sample: Any) -> "Codec":
        """Train on a sample (n, dim); at most `train_size` rows are used. Returns self."""
        return self._fit(self._prepare(sample, "training sample"))

    def _fit(self, x: np.ndarray) -> "Codec":
        """`train` on rows already through `_prepare`."""
        if x.shape[0] == 0:
            raise InvalidInput("training sample: expected at least 1 row, found 0")
        with _encode_scope(x.shape[0]):
            return self._fit_rows(x)

    def _fit_rows(self, x: np.ndarray) -> "Codec":
        rng = np.random.default_rng(self.seed)
        if x.shape[0] > self.train_size:
            x = x[np.sort(rng.choice(x.shape[0], self.train_size, replace=False))]
        state: dict[str, np.ndarray] = {}
        if self.ivf is not None:
            centroids = kmeans.kmeans_fit(x, self.ivf.nlist, seed=self.seed)
        else:  # the mean of the whole sample
            mean = x.mean(axis=0, keepdims=True) if self._residual else np.zeros((1, self.width))
            centroids = mean.astype(np.float32)
        state["centroids"] = centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        rows = self.quantizer.train_rows
        if rows is not None and x.shape[0] > rows:
            # The quantizer trains on a subsample (RB's ITQ: 8,192 rows): assign and subtract
            # only those, with or without IVF (without, RB used to get the residuals of all
            # 65,536 rows, 100 MB at 384-d, and draw its 8,192 from them).
            x = x[np.sort(rng.choice(x.shape[0], rows, replace=False))]
        if not self._residual:
            r = x
        elif self.ivf is None:
            r = x - centroids
        else:  # one fresh array, not two (gathered centroids, then the difference)
            lists = ivf.ivf_assign(x, centroids, self._coarse_metric)
            r = centroids[lists]
            np.subtract(x, r, out=r)
            held_out = _held_out_residuals(x, r, lists, centroids, self._coarse_metric)
            if held_out is not None:
                r = np.concatenate([r, held_out])
        state.update(self.quantizer.train(r, rng, seed=self.seed, rotation=self.rotation))
        if self.mrl is None:  # rows have error scales (an MRL tail is not a coding error)
            state.update(self.quantizer.train_row_errors(r, state))
        self._state = _frozen(state)
        self._derived = (None, {})
        return self

    # ---- encode / decode

    def assign(self, x: Any) -> np.ndarray:
        """IVF list of each vector (zeros without IVF)."""
        return self._assign_prepared(self._prepare(x, "vectors"))

    def _assign_prepared(self, x: np.ndarray) -> np.ndarray:
        state = self._require()
        if self.ivf is None:
            return np.zeros(x.shape[0], dtype=np.int64)
        return ivf.ivf_assign(x, state["centroids"], self._coarse_metric)

    def encode(self, x: Any) -> Codes:
        """Codes uint8 (n, code_size) and lists int64 (n,)."""
        self._require()
        return self._encode_prepared(self._prepare(x, "vectors"))

    def _encode_prepared(self, x: np.ndarray) -> Codes:
        """`encode` of rows already through `_prepare`, in chunks of about
        `ENCODE_CHUNK_BYTES` of float32 rows: the residuals and rotated rows of a chunk are
        the only temporaries, so encoding a batch of 131,072 x 768 rows no longer holds three
        more copies of it (1.2 GB) at once. Every stage codes rows independently, so the
        codes do not depend on the chunking."""
        state = self._require()
        n = x.shape[0]
        step = max(1024, ENCODE_CHUNK_BYTES // max(1, 4 * x.shape[1]))
        if n <= step:
            return self._encode_chunk(x, state)
        codes = np.empty((n, self.code_size), dtype=np.uint8)
        lists = np.empty(n, dtype=np.int64)
        for a in range(0, n, step):
            part = self._encode_chunk(x[a:a + step], state)
            codes[a:a + step] = part.codes
            lists[a:a + step] = part.lists
        return Codes(codes, lists)

    def _stored_errors(self, x: np.ndarray, codes: Codes) -> np.ndarray | None:
        """Per row, |x - decode(code)| (float32 (n,)) of rows already through `_prepare`:
        the scale of a code score's error that rerank="auto" reads from the codes segment
        (its optional ``errors`` section). None when the codes tell it themselves (RB, PQ
        with `pq_cell_err`: `Quantizer.row_errors`) or under MRL (the truncated tail is not a
        coding error).
        In chunks, as `_encode_prepared` encodes, from the residuals by the quantizer
        (`Quantizer.coding_errors`)."""
        state = self._require()
        if self.mrl is not None or self.quantizer.errors_from_code(state):
            return None
        n = x.shape[0]
        out = np.empty(n, dtype=np.float32)
        step = max(1024, ENCODE_CHUNK_BYTES // max(1, 4 * x.shape[1]))
        for a in range(0, n, step):
            xa = x[a:a + step]
            r = xa - state["centroids"][codes.lists[a:a + step]] if self._residual else xa
            with _encode_scope(len(xa)):
                out[a:a + step] = self.quantizer.coding_errors(r, codes.codes[a:a + step], state, self.width)
        return out

    def _encode_chunk(self, x: np.ndarray, state: dict[str, np.ndarray]) -> Codes:
        with _encode_scope(len(x)):
            lists = self._assign_prepared(x)
            if self._residual:
                r = state["centroids"][lists]
                np.subtract(x, r, out=r)
            else:
                r = x
            codes = self.quantizer.encode(r, state)
            if self.row_norms:
                codes = np.concatenate([codes, _norm_bytes(x)], axis=1)
        return Codes(np.ascontiguousarray(codes, dtype=np.uint8).reshape(len(r), self.code_size), lists)

    def _split_rb(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RB codes -> sign bits uint8 (n, levels, nbytes) and factors float32 (n, 2)."""
        return self.quantizer.split_codes(codes, self.width)  # type: ignore[union-attr]

    def _check_codes(self, codes: Any, lists: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(codes, Codes):  # `encode`'s result as it is: index(encode(x))
            if lists is not None:
                raise InvalidInput("lists: given twice, in the Codes (from encode) and as an argument")
            codes, lists = codes
        try:
            codes = np.asarray(codes)
        except (ValueError, TypeError) as exc:  # ragged sequences
            raise DimensionMismatch(f"codes: expected uint8 (n, {self.code_size}), found {type(codes).__name__} "
                                    f"that is no array ({exc})") from None
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise DimensionMismatch(
                f"codes: expected uint8 (n, {self.code_size}), found {codes.dtype} {codes.shape}"
            )
        if lists is None:
            if self.ivf is not None:
                raise InvalidInput(f"codes of {self.spec!r} need their IVF lists")
            lists = np.zeros(codes.shape[0], dtype=np.int64)
        lists = as_ids(lists, "lists")  # integers only: floats were truncated, strings a raw ValueError
        if lists.shape != (codes.shape[0],) or (lists.size and (lists.min() < 0 or lists.max() >= self.nlist)):
            raise InvalidInput(f"lists: expected {codes.shape[0]} values in [0, {self.nlist}), found {lists.shape}")
        return np.ascontiguousarray(codes), lists

    def decode(self, codes: Any, lists: Any = None) -> np.ndarray:
        """Reconstruction float32 (n, width) in the coded space (after cosine/MRL). `codes`
        may be `encode`'s `Codes` (lists inside)."""
        state = self._require()
        codes, lists = self._check_codes(codes, lists)
        r = self.quantizer.decode(codes, state, self.width)
        r = r.reshape(codes.shape[0], self.width)
        if self._residual:
            r = r + state["centroids"][lists]
        if self.row_norms:  # scaled to the row's stored norm: <q, decode> is the code score
            r = r * self.quantizer.row_scales(codes, lists, state, self._derived_of(state))[:, None]
        return np.ascontiguousarray(r, dtype=np.float32)

    # ---- search

    def index(self, codes: Any, lists: Any = None, ids: Any = None, *, keep_rows: bool = True) -> "CodeIndex":
        """A searchable in-memory layout of codes (ids default to row numbers); `codes` may be
        `encode`'s `Codes` (lists inside): ``codec.index(codec.encode(x))``.

        ``keep_rows=False`` keeps one copy of the codes only (the scan layout): symmetric
        (``sdc=True``) RB search then needs the codes again and raises `InvalidInput`.
        The store uses it to hold codes + ids and little else in RAM."""
        codes, lists = self._check_codes(codes, lists)
        ids = np.arange(codes.shape[0], dtype=np.int64) if ids is None else as_ids(ids, "ids")
        if ids.shape != (codes.shape[0],):
            raise InvalidInput(f"ids: expected {codes.shape[0]} ids, found shape {ids.shape}")
        if ids.size and ids.min() < 0:
            raise InvalidInput(f"ids must be >= 0 (-1 marks an empty result slot), found {int(ids.min())}")
        return CodeIndex(self, codes, lists, ids, keep_rows=keep_rows)

    def search(self, queries: Any, codes: Any, lists: Any = None, k: int = 10, **kw: Any) -> SearchResult:
        """One-off search over codes; build `index()` once to search repeatedly."""
        return self.index(codes, lists).search(queries, k, **kw)

    def plan(self, queries: Any, *, nprobe: int = 1, sdc: bool = False) -> QueryPlan:
        """Everything per query that does not depend on a layout, made once for
        `CodeIndex.scan` over any number of layouts of this codec.

        Parameters
        ----------
        queries : (nq, dim) float array
            Normalised (cosine) and MRL-truncated here, as the codes were.
        nprobe : int
            Lists visited per query (IVF only; capped at nlist): the probes and their biases
            are chosen here, so every layout scans the same lists.
        sdc : bool
            RB only: symmetric scoring (the query binarized too, popcount).

        Returns
        -------
        QueryPlan
            Probes int64 (nq, P), per-probe bias float32 (nq, P) and the quantizer's tables
            (PQ/RB lookup tables in their uint8 fast-scan form, one per probe for l2 on
            residuals, except 8-bit PQ's: one a query, each probe's made in the scan from
            the codec's per-list terms the plan holds; SQ weights; binarized queries for
            sdc). They take ``plan.nbytes``:
            to bound it, plan at most `queries_per_plan` queries at a time.

        Thread policy: 2 or more queries run their BLAS products on one thread (a lone
        query's rotation and probe use no BLAS), fewer than
        ``CodeIndex.PARALLEL_MIN_QUERIES`` their Numba kernels on the calling thread; the
        caller's own settings are restored. Inside a caller's own
        ``vecz.engine.threads.query_threads`` scope, that scope's policy holds instead.
        """
        self._check_search(nprobe, sdc)
        self._require()  # an untrained codec says so before judging the queries (as `encode`)
        return self._plan_rows(_as_vectors(queries, self.dim, "queries", metric=self.metric), nprobe, sdc)

    def _plan_rows(self, x: np.ndarray, nprobe: int, sdc: bool) -> QueryPlan:
        """`plan` of queries `_as_vectors` already checked, with nprobe and sdc checked (a
        store's search checks them once, `search.check_search_args`)."""
        self._require()
        x = self._prepare_rows(np.ascontiguousarray(x, dtype=np.float32), "queries")
        with query_threads(x.shape[0], CodeIndex.PARALLEL_MIN_QUERIES):
            probes, probe_ip = self._probe(x, nprobe)
            return self._plan(x, probes, probe_ip, sdc)

    def queries_per_plan(self, nprobe: int = 1, sdc: bool = False) -> int:
        """How many queries a plan may hold with its float tables within
        ``CodeIndex.TABLE_BUDGET`` bytes (at least 1; what `CodeIndex.search` plans at a time).
        Per-probe tables (l2 on residuals) count once per probed list
        (``Quantizer.tables_per_query``: once a query for PQ and RB with their per-list
        tables, except RB's symmetric scoring)."""
        n_probe = min(int(nprobe), self.nlist) if self.ivf is not None else 1
        return plan_rows(self, max(1, n_probe), CodeIndex.TABLE_BUDGET, sdc)

    def _check_search(self, nprobe: Any, sdc: bool) -> None:
        if not isinstance(nprobe, (int, np.integer)) or isinstance(nprobe, bool) or nprobe < 1:
            raise InvalidInput(f"nprobe must be an integer >= 1, found {nprobe!r}")
        if sdc and not self.quantizer.has_sdc:
            raise InvalidInput(f"sdc=True needs an RB codec, found {self.spec!r}")

    def _probe(self, x: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Lists probed by each prepared query, int64 (nq, P) best first (zeros (nq, 1)
        without IVF), and their <q, c> float32 (nq, P) when the coarse metric is ip."""
        if self.ivf is None:
            return np.zeros((x.shape[0], 1), dtype=np.int64), None
        state = self._require()
        distinct = self._distinct_lists(state)
        if distinct is None:
            probe_sim, probes = ivf.ivf_probe(x, state["centroids"], nprobe, self._coarse_metric)
        else:
            probe_sim, probes = ivf.ivf_probe(x, state["centroids"][distinct], nprobe, self._coarse_metric)
            probes = distinct[probes]
        probe_ip = np.ascontiguousarray(probe_sim, dtype=np.float32) if self._coarse_metric == "ip" else None
        return np.ascontiguousarray(probes), probe_ip

    def _plan(self, x: np.ndarray, probes: np.ndarray, probe_ip: np.ndarray | None, sdc: bool) -> QueryPlan:
        """The plan of prepared queries x with their probes (no thread policy of its own)."""
        state = self._require()
        nq, n_probe = probes.shape
        if nq == 0:
            return QueryPlan(self, probes, np.zeros((0, n_probe), dtype=np.float32), {}, sdc=sdc)
        is_l2 = self.metric == "l2"
        centre = None
        if self.scans_centred and not sdc:  # the l2 tables of x / lambda (see `scans_centred`)
            centre = self._centres(x, probes)
            x = np.ascontiguousarray(x / centre[:, None], dtype=np.float32)
            is_l2 = True
        per_probe = is_l2 and self._residual
        if per_probe and not sdc and self._own_lists:
            # one table a query for every list (`own_list_terms`), with each probe's |x - c|^2
            if centre is not None:  # |x / lambda - c|^2 from the probe step's <x, c> (cosine probes by inner product)
                probe_sq = np.where(probes >= 0, np.einsum("ij,ij->i", x, x, dtype=np.float64)[:, None]
                                    - 2.0 * probe_ip / centre[:, None]
                                    + self._centroid_sq(state)[np.maximum(probes, 0)], 0.0)
            else:
                probe_sq = probe_sq_dist(x, state["centroids"], probes)
            made = self.quantizer.own_list_tables(x, probe_sq, state, self._derived_of(state),
                                                  centred=centre is not None)
            if made is not None:
                return QueryPlan(self, probes, made[1], made[0], centre=centre)
        if per_probe:
            made = self.quantizer.probe_tables(x, probes, state, self._derived_of(state), sdc=sdc)
            if made is not None:
                tables, bias, shared = made
                return QueryPlan(self, probes, bias, tables, sdc=sdc, shared=shared, centre=centre)
        centroids = state["centroids"]
        # per-probe tables are built from q - c, one per probed list
        tq = (x[:, None, :] - centroids[probes]).reshape(nq * n_probe, -1) if per_probe else x
        if is_l2 or not self._residual:
            bias = np.zeros((nq, n_probe), dtype=np.float32)
        elif probe_ip is not None:
            bias = probe_ip  # the probe step's <q, c>: no gather of nq x P centroids
        else:
            bias = np.einsum("qd,qpd->qp", x, centroids[probes]).astype(np.float32)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        tables, bias = self.quantizer.tables(tq, bias, state, nq=nq, per_probe=per_probe, metric=self.metric,
                                             width=self.width, sdc=sdc, derived=self._derived_of(state))
        return QueryPlan(self, probes, bias, tables, sdc=sdc, centre=centre)
