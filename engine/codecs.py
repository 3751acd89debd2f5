"""Codecs: spec strings, configs, training, encoding, decoding and search over codes.

A spec is comma-separated stages (DESIGN.md): `[MRL<d>,][IVF<n>,]QUANTIZER` where the
quantizer is one of `PQ<M>x<b>` (b = 4 or 8), `RB<b>` (b = 1..8), `SQ8`, `SQ4`, `F16`,
`Flat`. `format_spec(parse_spec(s))` is the canonical spelling.

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
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from typing import Any, Callable, NamedTuple

import numba
import numpy as np

from ..kernels import binary, dense, fastscan, ivf, kmeans, pq, scalar, transform

from .errors import CodecSpecError, DimensionMismatch, InvalidInput, NotTrained
from .inputs import as_matrix

__all__ = [
    "METRICS",
    "MRL",
    "IVF",
    "PQ",
    "RB",
    "SQ",
    "F16",
    "Flat",
    "parse_spec",
    "format_spec",
    "code_size",
    "Codec",
    "Codes",
    "CodeIndex",
    "SearchResult",
    "SearchStats",
]

METRICS = ("cosine", "ip", "l2")
CONFIG_ID = "vecz.codec"
CONFIG_VERSION = 1


# --------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class MRL:
    """Matryoshka truncation to the first `dim` dimensions."""

    dim: int

    def __str__(self) -> str:
        return f"MRL{self.dim}"


@dataclasses.dataclass(frozen=True)
class IVF:
    """Coarse k-means partition into `nlist` lists."""

    nlist: int

    def __str__(self) -> str:
        return f"IVF{self.nlist}"


@dataclasses.dataclass(frozen=True)
class PQ:
    """Product quantization: `m` sub-quantizers of `nbits` bits."""

    m: int
    nbits: int

    def __str__(self) -> str:
        return f"PQ{self.m}x{self.nbits}"

    def code_size(self, dim: int, metric: str) -> int:
        return self.m if self.nbits == 8 else (self.m + 1) // 2


@dataclasses.dataclass(frozen=True)
class RB:
    """Recurrent binarization with `levels` sign levels (bits per dimension)."""

    levels: int

    def __str__(self) -> str:
        return f"RB{self.levels}"

    def code_size(self, dim: int, metric: str) -> int:
        return self.levels * binary.rb_nbytes(dim) + RB_FACTOR_BYTES


@dataclasses.dataclass(frozen=True)
class SQ:
    """Per-dimension scalar quantization to `nbits` bits (8 or 4)."""

    nbits: int

    def __str__(self) -> str:
        return f"SQ{self.nbits}"

    def code_size(self, dim: int, metric: str) -> int:
        return dim if self.nbits == 8 else (dim + 1) // 2


@dataclasses.dataclass(frozen=True)
class F16:
    """Half precision."""

    def __str__(self) -> str:
        return "F16"

    def code_size(self, dim: int, metric: str) -> int:
        return 2 * dim


@dataclasses.dataclass(frozen=True)
class Flat:
    """No compression (float32), the reference."""

    def __str__(self) -> str:
        return "Flat"

    def code_size(self, dim: int, metric: str) -> int:
        return 4 * dim


# Two float32 per RB vector: g = |r|^2 / <s, r> (unbiased multiplier) and |r|^2.
RB_FACTOR_BYTES = 8

Quantizer = PQ | RB | SQ | F16 | Flat
Stage = MRL | IVF | Quantizer


def _positive(text: str, stage: str, what: str) -> int:
    value = int(text)
    if value < 1:
        raise CodecSpecError(f"stage {stage!r}: {what} must be >= 1, found {value}")
    return value


def _parse_pq(m: re.Match, stage: str) -> PQ:
    nbits = int(m.group(2))
    if nbits not in (4, 8):
        raise CodecSpecError(f"stage {stage!r}: PQ bits must be 4 or 8, found {nbits}")
    return PQ(_positive(m.group(1), stage, "M"), nbits)


def _parse_rb(m: re.Match, stage: str) -> RB:
    levels = int(m.group(1))
    if not 1 <= levels <= 8:
        raise CodecSpecError(f"stage {stage!r}: RB levels must be 1..8, found {levels}")
    return RB(levels)


# One table: each stage's pattern and its parser.
_STAGES: list[tuple[re.Pattern, Callable[[re.Match, str], Stage]]] = [
    (re.compile(r"MRL(\d{1,9})"), lambda m, s: MRL(_positive(m.group(1), s, "dim"))),
    (re.compile(r"IVF(\d{1,9})"), lambda m, s: IVF(_positive(m.group(1), s, "nlist"))),
    (re.compile(r"PQ(\d{1,9})x(\d{1,9})"), _parse_pq),
    (re.compile(r"RB(\d{1,9})"), _parse_rb),
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
        f"unknown stage {text!r}: expected one of MRL<d>, IVF<n>, PQ<M>x<4|8>, RB<1..8>, SQ8, SQ4, F16, Flat"
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
    if not isinstance(last, (PQ, RB, SQ, F16, Flat)):
        raise CodecSpecError(f"codec spec {spec!r} must end with a quantizer stage, found {str(last)!r}")
    order = {MRL: 0, IVF: 1}
    seen = -1
    for stage in prefix:
        rank = order.get(type(stage))
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
    mrl = next((s for s in stages if isinstance(s, MRL)), None)
    coarse = next((s for s in stages if isinstance(s, IVF)), None)
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
    if isinstance(quant, PQ) and quant.m > width:
        raise CodecSpecError(f"stage {str(quant)!r}: M={quant.m} sub-quantizers exceed the {width} coded dims")
    if isinstance(quant, PQ) and quant.nbits == 4 and quant.m > 512:
        raise CodecSpecError(f"stage {str(quant)!r}: 4-bit PQ supports at most 512 sub-quantizers")
    return width


def code_size(spec: str, dim: int, metric: str = "cosine") -> int:
    """Bytes of code per vector for `spec` on `dim`-wide vectors, known before training.

    Ids and IVF list numbers are not included (the store counts ids separately).
    """
    stages = parse_spec(spec)
    width = _check_fits(stages, dim, spec)
    return stages[-1].code_size(width, metric)


# --------------------------------------------------------------------------- results


class _SerialBlas:
    """Run a few queries' BLAS products (rotations, IVF probes, tables) on one thread, and
    give the caller back exactly the BLAS thread counts it had.

    On 2 cores, OpenBLAS's worker threads and Numba's OpenMP workers each spin for a while
    after their work; a parallel region that needs the core a spinning thread holds waits
    for a scheduler tick. A search of 8-64 queries then took 16 ms instead of 0.6-2 ms
    (wordnet-gemma, IVF256,RB1). Small products gain nothing from threads, so searches of
    fewer than `SERIAL_BLAS_QUERIES` queries run BLAS on one thread.

    BLAS thread counts are process-wide, so the scope is counted: the first search to enter
    saves the counts it finds (whatever the caller set, e.g. inside its own
    ``threadpool_limits(1)``), the last one to leave restores them; searches running
    concurrently from several Python threads therefore cannot leave the count at one.
    While a small search runs, BLAS calls made by other threads of the process also run on
    one thread.
    """

    _libs: list | None = None
    _lock = threading.Lock()
    _depth = 0
    _saved: list[int] = []

    @classmethod
    def _controllers(cls) -> list:
        if cls._libs is None:
            from threadpoolctl import ThreadpoolController

            cls._libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        return cls._libs

    def __enter__(self) -> None:
        cls = type(self)
        with cls._lock:
            if cls._depth == 0:
                libs = cls._controllers()
                cls._saved = [lib.num_threads for lib in libs]
                for lib, n in zip(libs, cls._saved):
                    if n != 1:
                        lib.set_num_threads(1)
            cls._depth += 1

    def __exit__(self, *exc: Any) -> None:
        cls = type(self)
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0:
                for lib, n in zip(cls._controllers(), cls._saved):
                    if n != 1:
                        lib.set_num_threads(n)


SERIAL_BLAS_QUERIES = 256


class SearchStats(NamedTuple):
    """What a search did: codes scored, IVF lists probed, and (store searches with
    ``rerank``) rows and bytes read from the disk tier to re-score the shortlist."""

    candidates: int
    lists_probed: int
    rows_read: int = 0
    bytes_read: int = 0


class SearchResult(tuple):
    """`scores, ids = result` like faiss's D, I (a 2-tuple); `result.stats` tells what the
    search did. scores float32 (nq, k), ids int64 (nq, k)."""

    stats: SearchStats

    def __new__(cls, scores: np.ndarray, ids: np.ndarray, stats: SearchStats = SearchStats(0, 0)):
        obj = super().__new__(cls, (scores, ids))
        obj.stats = stats
        return obj

    @property
    def scores(self) -> np.ndarray:
        return self[0]

    @property
    def ids(self) -> np.ndarray:
        return self[1]

    def __repr__(self) -> str:
        return f"SearchResult(scores={self[0]!r}, ids={self[1]!r}, stats={self.stats!r})"


class Codes(NamedTuple):
    """Encoded vectors: codes uint8 (n, code_size) and IVF list int64 (n,) (0 without IVF)."""

    codes: np.ndarray
    lists: np.ndarray


# --------------------------------------------------------------------------- codec


def _as_vectors(x: Any, dim: int, what: str, column: str | None = None) -> np.ndarray:
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
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        row, col = (int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        value = given[row, col]
        beyond = " (beyond float32's range)" if np.isfinite(value) else ""
        raise InvalidInput(f"{what}: expected finite values, found {value}{beyond} in row {row}, column {col}")
    return arr


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
        Seed of every random choice in training (k-means, rotations).
    train_size : int
        Training uses at most this many rows of the sample (drawn with `seed`).
    rotation : {"itq", "random"}
        RB only: the orthogonal rotation applied before binarization. ITQ is learned on the
        training residuals and measured better on real embeddings (see README).

    Thread-safety: a trained codec is immutable; `encode`, `decode` and `CodeIndex.search`
    may run from several threads.
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
    ) -> None:
        if metric not in METRICS:
            raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
        if rotation not in ("itq", "random"):
            raise InvalidInput(f"rotation must be 'itq' or 'random', found {rotation!r}")
        # checked here, not at training: a store created with them would fail its first add
        for name, value, low in (("seed", seed, 0), ("train_size", train_size, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise InvalidInput(f"{name}: expected an integer >= {low}, found {value!r}")
        self.stages = parse_spec(spec)
        self.spec = format_spec(self.stages)
        self.dim = int(dim)
        self.metric = metric
        self.seed = int(seed)
        self.train_size = int(train_size)
        self.rotation = rotation
        self.width = _check_fits(self.stages, self.dim, spec)
        self.mrl, self.ivf, self.quantizer = _split(self.stages)
        self.code_size = self.quantizer.code_size(self.width, metric)
        self._state: dict[str, np.ndarray] | None = None

    # ---- config

    def __repr__(self) -> str:
        return (
            f"Codec({self.spec!r}, dim={self.dim}, metric={self.metric!r}, seed={self.seed}, "
            f"train_size={self.train_size}, rotation={self.rotation!r})"
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
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], state: dict[str, np.ndarray] | None = None) -> "Codec":
        """Rebuild a codec from `to_config()` (and, if trained, its `state()` arrays)."""
        if not isinstance(config, dict) or config.get("id") != CONFIG_ID:
            raise CodecSpecError(f"expected a config with id {CONFIG_ID!r}, found {config!r:.200}")
        if config.get("version") != CONFIG_VERSION:
            raise CodecSpecError(f"codec config version {config.get('version')!r} is not {CONFIG_VERSION}")
        # a config read from a store's manifest is untrusted: a missing or mistyped field is a
        # CodecSpecError, never a KeyError or the TypeError/ValueError of int(None) / int("")
        for key, kind in (("spec", str), ("dim", int), ("metric", str)):
            if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
                raise CodecSpecError(f"codec config field {key!r}: expected {kind.__name__}, "
                                     f"found {config.get(key)!r:.80}")
        codec = cls(
            config["spec"],
            config["dim"],
            config["metric"],
            seed=config.get("seed", 0),
            train_size=config.get("train_size", 65536),
            rotation=config.get("rotation", "itq"),
        )
        if "code_size" in config and config["code_size"] != codec.code_size:
            raise CodecSpecError(f"config says code_size {config['code_size']}, spec gives {codec.code_size}")
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

    def state(self) -> dict[str, np.ndarray]:
        """Trained arrays by name (float32), to be saved beside the config."""
        return dict(self._require())

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        w = self.width
        shapes: dict[str, tuple[int, ...]] = {"centroids": (self.nlist, w)}
        q = self.quantizer
        if isinstance(q, PQ):
            shapes["pq_books"] = (q.m, 1 << q.nbits, pq.pq_dsub(w, q.m))
        elif isinstance(q, RB):
            shapes["rb_rotation"] = (w, w)
        elif isinstance(q, SQ):
            shapes["sq_vmin"] = (w,)
            shapes["sq_vdiff"] = (w,)
        return shapes

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        expected = self._expected_shapes()
        loaded = {}
        for name, shape in expected.items():
            if name not in state:
                raise CodecSpecError(f"trained state of {self.spec!r} lacks array {name!r}")
            arr = np.asarray(state[name])
            if arr.shape != shape:
                raise CodecSpecError(f"trained array {name!r}: expected shape {shape}, found {arr.shape}")
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused below
                loaded[name] = np.ascontiguousarray(arr, dtype=np.float32)
            # training never produces NaN or inf; a state read from a file that holds them
            # would make every score NaN and every search silently return nothing
            if not np.isfinite(loaded[name]).all():
                raise CodecSpecError(f"trained array {name!r}: expected finite values, found NaN or inf")
        self._state = loaded

    def _require(self) -> dict[str, np.ndarray]:
        if self._state is None:
            raise NotTrained(f"codec {self.spec!r} is not trained: call train(sample) first")
        return self._state

    # ---- preparation shared by training, encoding and queries

    def _prepare(self, x: Any, what: str, column: str | None = None) -> np.ndarray:
        """Rows as coded: unit-normalised for cosine, MRL-truncated (and renormalised for
        cosine/ip). A vector of norm zero has no direction: under cosine, or when MRL must
        renormalise an all-zero prefix, it is an `InvalidInput` rather than an arbitrary code."""
        arr = _as_vectors(x, self.dim, what, column)
        if self.metric == "cosine":
            arr, zero = transform.normalize_rows_checked(arr)
            if zero >= 0:
                raise InvalidInput(f"{what}: cosine similarity needs vectors of non-zero norm, found row {zero} "
                                   f"all zeros")
        if self.mrl is not None:
            arr, zero = transform.mrl_truncate_checked(arr, self.mrl.dim, renorm=self.metric != "l2")
            if zero >= 0:
                raise InvalidInput(f"{what}: {self.mrl} keeps the first {self.mrl.dim} dims and renormalises them "
                                   f"for {self.metric}; expected them non-zero, found row {zero} all zeros there")
        return arr

    @property
    def _residual(self) -> bool:
        return not isinstance(self.quantizer, (F16, Flat))

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
        rng = np.random.default_rng(self.seed)
        if x.shape[0] > self.train_size:
            x = x[np.sort(rng.choice(x.shape[0], self.train_size, replace=False))]
        state: dict[str, np.ndarray] = {}
        if self.ivf is not None:
            centroids = kmeans.kmeans_fit(x, self.ivf.nlist, seed=self.seed)
            lists = ivf.ivf_assign(x, centroids, self._coarse_metric)
        else:
            mean = x.mean(axis=0, keepdims=True) if self._residual else np.zeros((1, self.width))
            centroids = mean.astype(np.float32)
            lists = np.zeros(x.shape[0], dtype=np.int64)
        state["centroids"] = np.ascontiguousarray(centroids, dtype=np.float32)
        r = x - centroids[lists] if self._residual else x
        q = self.quantizer
        if isinstance(q, PQ):
            state["pq_books"] = pq.pq_train(r, q.m, q.nbits, seed=self.seed)
        elif isinstance(q, RB):
            # ITQ's cost is sample x width^2 per iteration: 8192 rows and 25 iterations keep
            # 768-d training near a few seconds while the rotation still converges.
            rows = r if r.shape[0] <= 8192 else r[rng.choice(r.shape[0], 8192, replace=False)]
            if self.rotation == "itq" and rows.shape[0] >= 2:
                # One BLAS thread: ITQ is a chain of small products and SVDs that a threaded
                # BLAS slows down (0.75 s instead of 0.03 s per 384x384 SVD on a busy 2-core box).
                with _SerialBlas():
                    state["rb_rotation"] = transform.itq_rotation(rows, self.seed, n_iter=25)
            else:
                state["rb_rotation"] = transform.random_rotation(self.width, self.seed)
        elif isinstance(q, SQ):
            state["sq_vmin"], state["sq_vdiff"] = scalar.sq_train(r)
        self._state = state
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
        """`encode` of rows already through `_prepare`."""
        state = self._require()
        lists = self._assign_prepared(x)
        r = x - state["centroids"][lists] if self._residual else x
        q = self.quantizer
        if isinstance(q, PQ):
            codes = pq.pq_encode(r, state["pq_books"])
            if q.nbits == 4:
                codes = pq.pq4_pack(codes)
        elif isinstance(q, RB):
            rot = np.ascontiguousarray(r @ state["rb_rotation"], dtype=np.float32)
            bits, factors = binary.rb_encode_batch(rot, q.levels, binary._T_COARSE, binary._T_FINE_STEP)
            codes = np.concatenate([bits.reshape(len(r), -1), factors.astype("<f4").view(np.uint8)], axis=1)
        elif isinstance(q, SQ):
            codes = scalar.sq_encode(r, state["sq_vmin"], state["sq_vdiff"], q.nbits)
        elif isinstance(q, F16):
            big = np.abs(r) > np.finfo(np.float16).max
            if big.any():
                row = int(np.argwhere(big)[0, 0])
                raise InvalidInput(
                    f"F16 codes values up to 65504 in magnitude, found {float(np.abs(r[row]).max()):.6g} in row {row}"
                )
            codes = r.astype("<f2").view(np.uint8)
        else:
            codes = r.astype("<f4").view(np.uint8)
        return Codes(np.ascontiguousarray(codes, dtype=np.uint8).reshape(len(r), self.code_size), lists)

    def _split_rb(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nb = binary.rb_nbytes(self.width)
        levels = self.quantizer.levels  # type: ignore[union-attr]
        bits = np.ascontiguousarray(codes[:, : levels * nb]).reshape(-1, levels, nb)
        factors = np.ascontiguousarray(codes[:, levels * nb :]).view("<f4").astype(np.float32)
        return bits, factors.reshape(-1, 2)

    def _check_codes(self, codes: Any, lists: Any) -> tuple[np.ndarray, np.ndarray]:
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise DimensionMismatch(
                f"codes: expected uint8 (n, {self.code_size}), found {codes.dtype} {codes.shape}"
            )
        if lists is None:
            if self.ivf is not None:
                raise InvalidInput(f"codes of {self.spec!r} need their IVF lists")
            lists = np.zeros(codes.shape[0], dtype=np.int64)
        lists = np.asarray(lists, dtype=np.int64)
        if lists.shape != (codes.shape[0],) or (lists.size and (lists.min() < 0 or lists.max() >= self.nlist)):
            raise InvalidInput(f"lists: expected {codes.shape[0]} values in [0, {self.nlist}), found {lists.shape}")
        return np.ascontiguousarray(codes), lists

    def decode(self, codes: Any, lists: Any = None) -> np.ndarray:
        """Reconstruction float32 (n, width) in the coded space (after cosine/MRL)."""
        state = self._require()
        codes, lists = self._check_codes(codes, lists)
        q = self.quantizer
        if isinstance(q, PQ):
            sub = codes if q.nbits == 8 else pq.pq4_unpack(codes, q.m)
            r = pq.pq_decode(sub, state["pq_books"], self.width)
        elif isinstance(q, RB):
            bits, factors = self._split_rb(codes)
            r = binary.rb_decode(bits, factors, self.width) @ state["rb_rotation"].T
        elif isinstance(q, SQ):
            r = scalar.sq_decode(codes, state["sq_vmin"], state["sq_vdiff"], q.nbits)
        elif isinstance(q, F16):
            r = codes.view("<f2").astype(np.float32)
        else:
            r = codes.view("<f4").astype(np.float32)
        r = r.reshape(codes.shape[0], self.width)
        if self._residual:
            r = r + state["centroids"][lists]
        return np.ascontiguousarray(r, dtype=np.float32)

    # ---- search

    def index(self, codes: Any, lists: Any = None, ids: Any = None, *, keep_rows: bool = True) -> "CodeIndex":
        """A searchable in-memory layout of codes (ids default to row numbers).

        ``keep_rows=False`` keeps one copy of the codes only (the scan layout): symmetric
        (``sdc=True``) RB search then needs the codes again and raises `InvalidInput`.
        The store uses it to hold codes + ids and little else in RAM."""
        codes, lists = self._check_codes(codes, lists)
        if ids is None:
            ids = np.arange(codes.shape[0], dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (codes.shape[0],):
            raise InvalidInput(f"ids: expected {codes.shape[0]} ids, found shape {ids.shape}")
        if ids.size and ids.min() < 0:
            raise InvalidInput(f"ids must be >= 0 (-1 marks an empty result slot), found {int(ids.min())}")
        return CodeIndex(self, codes, lists, ids, keep_rows=keep_rows)

    def search(self, queries: Any, codes: Any, lists: Any = None, k: int = 10, **kw: Any) -> SearchResult:
        """One-off search over codes; build `index()` once to search repeatedly."""
        return self.index(codes, lists).search(queries, k, **kw)


class CodeIndex:
    """Codes laid out for scanning: ordered by IVF list, each list contiguous.

    Built by `Codec.index`. `search` returns `SearchResult(scores, ids, stats)`.
    """

    # Per-probe tables (l2 on residuals) are built for a chunk of queries at a time so
    # that they stay within this many bytes.
    TABLE_BUDGET = 64 << 20
    # Fewer queries than this run on the calling thread only (see `search`).
    PARALLEL_MIN_QUERIES = 8
    # 4-bit fast scan: queries that probe the same lists (all of them without IVF) are
    # scanned together, each code block accumulated for a group of queries while it is in
    # L1 (fastscan's *_multi drivers), and IVF batches list-major (below). False scans one
    # query at a time (the same results; tests compare the two).
    _MULTI_QUERY = True
    _no_bounds = np.empty((0, 3), dtype=np.float32)
    # IVF (queries probe different lists): from this many queries in a batch, 4-bit fast
    # scans run list-major (fastscan's *_lists drivers: each list scanned once for up to
    # LANES of the queries probing it); below, one query at a time. Needs _MULTI_QUERY.
    # Crossovers measured single-threaded on wordnet-minilm (IVF256/1024, nprobe 32-128):
    # RB gains from 8-16 queries (its rows are also filtered in vector code), PQ x4 only
    # from a few hundred and at k = 10 more than at k = 50 (1.15-1.28x vs 0.96-1.06x at 1000).
    LIST_MIN_QUERIES = 16
    LIST_MIN_QUERIES_PQ = 256

    def __init__(self, codec: Codec, codes: np.ndarray, lists: np.ndarray, ids: np.ndarray,
                 *, keep_rows: bool = True) -> None:
        self.codec = codec
        self.state = codec._require()
        order, self.offsets = ivf.ivf_layout(lists, codec.nlist)
        self.n = codes.shape[0]
        self.ids = np.ascontiguousarray(ids[order])
        codes = np.ascontiguousarray(codes[order])
        q = codec.quantizer
        self.codes = codes
        self.words: np.ndarray | None = None
        self._bits: np.ndarray | None = None
        self.factors: np.ndarray | None = None
        if isinstance(q, RB):
            self._n_levels, self._n_bytes = q.levels, binary.rb_nbytes(codec.width)
        if isinstance(q, PQ) and q.nbits == 4:
            # The blocked layout replaces the row codes: one copy of the codes in RAM.
            self.blocks, self.block_ids, self.block_offsets = fastscan.fs_layout(
                pq.pq4_unpack(codes, q.m), self.ids, self.offsets
            )
            self.codes = np.empty((0, codes.shape[1]), dtype=np.uint8)
        elif isinstance(q, RB):
            # Asymmetric scoring runs on the 4-bit fast scan: each byte of sign bits is two
            # 4-bit sub-codes, laid out in blocks (one copy of the bits). The popcount words
            # for symmetric scoring are derived on the first sdc=True search, from the row
            # codes when they are kept.
            bits, factors = codec._split_rb(codes)
            self.blocks, self.block_ids, self.block_offsets = fastscan.fs_layout(
                binary.rb_nibbles(bits), self.ids, self.offsets
            )
            self.block_factors = fastscan.fs_row_values(factors, self.block_ids.shape[0], self.offsets)
            # (max g, min g, min |r|^2) of each block, 12 bytes per 32 rows: the scan skips a
            # block whose best possible score cannot enter the top-k
            self.block_bounds = fastscan.fs_block_bounds(self.block_factors, self.block_ids)
            if keep_rows:
                self.factors, self._bits = factors, bits
            self.codes = np.empty((0, codes.shape[1]), dtype=np.uint8)
        if not keep_rows and self.codes.shape[0] == 0:
            # the blocked layouts carry their own ids (block_ids)
            self.ids = np.empty(0, dtype=np.int64)
        elif isinstance(q, F16):
            self.codes = np.ascontiguousarray(codes.view("<u2").reshape(self.n, codec.width))
        elif isinstance(q, Flat):
            self.codes = np.ascontiguousarray(codes.view("<f4").reshape(self.n, codec.width))

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this index holds (codes, ids, layouts; not the codec state)."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def search(self, queries: Any, k: int = 10, *, nprobe: int = 1, sdc: bool = False) -> SearchResult:
        """Top-k over the codes.

        Parameters
        ----------
        queries : (nq, dim) float array
        k : int
            Results per query; slots beyond the candidates hold id -1.
        nprobe : int
            Lists visited per query (IVF only; capped at nlist).
        sdc : bool
            RB only: symmetric scoring (the query binarized too, popcount), else asymmetric.
        """
        codec = self.codec
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInput(f"k must be an integer >= 1, found {k!r}")
        if not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
            raise InvalidInput(f"nprobe must be an integer >= 1, found {nprobe!r}")
        if sdc and not isinstance(codec.quantizer, RB):
            raise InvalidInput(f"sdc=True needs an RB codec, found {codec.spec!r}")
        x = codec._prepare(queries, "queries")
        if x.shape[0] < SERIAL_BLAS_QUERIES:
            with _SerialBlas():
                return self._search(x, k, nprobe, sdc)
        return self._search(x, k, nprobe, sdc)

    def _search(self, x: np.ndarray, k: int, nprobe: int, sdc: bool) -> SearchResult:
        codec = self.codec
        nq = x.shape[0]
        centroids = self.state["centroids"]
        probe_ip = None
        if codec.ivf is not None:
            probe_sim, probes = ivf.ivf_probe(x, centroids, nprobe, codec._coarse_metric)
            if codec._coarse_metric == "ip":
                probe_ip = np.ascontiguousarray(probe_sim, dtype=np.float32)  # <q, c> per probe
        else:
            probes = np.zeros((nq, 1), dtype=np.int64)
        probes = np.ascontiguousarray(probes)
        sizes = np.diff(self.offsets)
        candidates = int(sizes[probes].sum()) if nq else 0
        stats = SearchStats(candidates, int(probes.size))
        if nq == 0:
            empty = np.empty((0, k))
            return SearchResult(empty.astype(np.float32), empty.astype(np.int64), stats)
        per_probe = codec.metric == "l2" and codec._residual
        n_tables = probes.shape[1] if per_probe else 1
        chunk = max(1, min(nq, self.TABLE_BUDGET // max(1, self._table_bytes() * n_tables)))
        out_s = np.empty((nq, k), dtype=np.float32)
        out_i = np.empty((nq, k), dtype=np.int64)
        threads = numba.get_num_threads()
        if nq < self.PARALLEL_MIN_QUERIES:
            # The batch drivers parallelise over queries: for a handful of queries, waking
            # the pool costs more than it saves (p99 4-8 ms instead of 0.15 ms per query on
            # a busy 2-core machine). set_num_threads is thread-local, so this is safe.
            numba.set_num_threads(1)
        try:
            for start in range(0, nq, chunk):
                sl = slice(start, start + chunk)
                s, i = self._scan(x[sl], probes[sl], per_probe, k, sdc,
                                  None if probe_ip is None else probe_ip[sl])
                out_s[sl] = s
                out_i[sl] = i
        finally:
            numba.set_num_threads(threads)
        if codec.metric == "l2":
            out_s = -out_s  # kernels return negated distances; -(-inf) = +inf pads l2
        return SearchResult(out_s, out_i, stats)

    def _table_bytes(self) -> int:
        q = self.codec.quantizer
        if isinstance(q, PQ):
            return 4 * q.m * (1 << q.nbits)
        if isinstance(q, RB):
            return 4 * 16 * 2 * self._n_levels * self._n_bytes
        return 4 * self.codec.width

    def _scan(self, x: np.ndarray, probes: np.ndarray, per_probe: bool, k: int, sdc: bool,
              probe_ip: np.ndarray | None = None):
        codec = self.codec
        st = self.state
        q = codec.quantizer
        nq, n_probe = probes.shape
        centroids = st["centroids"]
        is_l2 = codec.metric == "l2"
        if per_probe:
            # one table per probed list, built from q - c
            tq = (x[:, None, :] - centroids[probes]).reshape(nq * n_probe, -1)
            n_tab = n_probe
        else:
            tq = x
            n_tab = 1
        if is_l2 or not codec._residual:
            bias = np.zeros((nq, n_probe), dtype=np.float32)
        elif probe_ip is not None:
            bias = probe_ip  # the probe step's <q, c>: no gather of nq x P centroids
        else:
            bias = np.einsum("qd,qpd->qp", x, centroids[probes]).astype(np.float32)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        lut_metric = "l2" if is_l2 else "ip"

        def query_groups():
            # (order, group_offsets) for the multi-query drivers: queries with the same probe
            # rows, at most LANES per group; order None when no permutation is needed (no
            # IVF). None when groups would average under two queries (IVF with few shared
            # probe rows): then one query at a time, which is a little faster for singletons.
            if not self._MULTI_QUERY or nq < 2 or (codec.ivf is not None and list_major):
                return None  # (list-major already shares each list's blocks among its queries)
            order, group_offsets = fastscan.fs_query_groups(probes, fastscan.LANES)
            if 2 * (group_offsets.shape[0] - 1) > nq:
                return None
            return (None if np.array_equal(order, np.arange(nq)) else order), group_offsets

        # IVF batches whose probe rows differ: list-major (query_groups() is None then)
        list_min = self.LIST_MIN_QUERIES_PQ if isinstance(q, PQ) else self.LIST_MIN_QUERIES
        list_major = self._MULTI_QUERY and codec.ivf is not None and nq >= list_min

        def permuted(order, *arrays):
            return arrays if order is None else tuple(np.ascontiguousarray(a[order]) for a in arrays)

        def unpermuted(order, result):
            if order is None:
                return result
            out_s, out_i = np.empty_like(result[0]), np.empty_like(result[1])
            out_s[order], out_i[order] = result
            return out_s, out_i

        if isinstance(q, PQ):
            luts = pq.pq_lut(tq, st["pq_books"], lut_metric).reshape(nq, n_tab, q.m, 1 << q.nbits)
            if q.nbits == 8:
                return pq.pq_lut_scan_batch(luts, self.codes, self.ids, self.offsets, probes, bias, k)
            qluts, steps, biases = fastscan.fs_quantize_lut(luts)
            groups = query_groups()
            if groups is not None:
                order, group_offsets = groups
                ql, sp, bi, pr, pb = permuted(order, qluts, steps, biases, probes, bias)
                return unpermuted(order, fastscan.fs_scan_multi_batch(
                    ql, sp, bi, self.blocks, self.block_ids, self.block_offsets, pr, pb, group_offsets, k))
            if list_major:
                return fastscan.fs_scan_lists_batch(qluts, steps, biases, self.blocks, self.block_ids,
                                                    self.block_offsets, probes, bias, k, numba.get_num_threads())
            return fastscan.fs_scan_batch(qluts, steps, biases, self.blocks, self.block_ids,
                                          self.block_offsets, probes, bias, k)
        if isinstance(q, RB):
            rot = np.ascontiguousarray(tq @ st["rb_rotation"], dtype=np.float32)
            q_sq = np.einsum("ij,ij->i", rot, rot).reshape(nq, n_tab).astype(np.float32)
            if per_probe:
                q_sq_p = np.ascontiguousarray(q_sq)
            else:
                q_sq_p = np.zeros((nq, n_probe), dtype=np.float32)
            if sdc:
                if self.words is None:
                    if self._bits is None:
                        raise InvalidInput("sdc=True needs the row codes, which this index "
                                           "(built with keep_rows=False) does not keep")
                    self.words = binary.rb_words(self._bits)
                bits, factors = binary.rb_encode_batch(rot, q.levels, binary._T_COARSE, binary._T_FINE_STEP)
                words = binary.rb_words(bits).reshape(nq, n_tab, q.levels, -1)
                q_scale = np.ascontiguousarray(factors[:, 0].reshape(nq, n_tab))
                return binary.rb_sdc_scan_batch(words, q_scale, self.words, self.factors, self.ids, self.offsets,
                                                probes, bias, q_sq_p, is_l2, codec.width, k)
            luts = binary.rb_nibble_lut(rot, 1).reshape(nq, n_tab, -1, 16)  # level 0; level l is 2**-l x
            qluts, steps, biases = fastscan.fs_quantize_lut(luts)
            groups = query_groups()
            if groups is not None:
                order, group_offsets = groups
                ql, sp, bi, pr, pb, qs = permuted(order, qluts, steps, biases, probes, bias, q_sq_p)
                return unpermuted(order, fastscan.fs_scan_factors_multi_batch(
                    ql, sp, bi, q.levels, self.blocks, self.block_ids, self.block_factors, self.block_bounds,
                    self.block_offsets, pr, pb, qs, is_l2, group_offsets, k))
            if list_major:
                # no block bounds: the list-major kernel filters every block's rows against
                # the heap minima in vector code anyway, and the bounds cost 3-7% more than
                # they skip there (measured on wordnet-minilm, IVF256/1024,RB1)
                return fastscan.fs_scan_factors_lists_batch(qluts, steps, biases, q.levels, self.blocks,
                                                            self.block_ids, self.block_factors, self._no_bounds,
                                                            self.block_offsets, probes, bias, q_sq_p, is_l2, k,
                                                            numba.get_num_threads())
            return fastscan.fs_scan_factors_batch(qluts, steps, biases, q.levels, self.blocks, self.block_ids,
                                                  self.block_factors, self.block_bounds, self.block_offsets,
                                                  probes, bias, q_sq_p, is_l2, k)
        if isinstance(q, SQ):
            vmin, vdiff = st["sq_vmin"], st["sq_vdiff"]
            width = codec.width + (codec.width % 2 if q.nbits == 4 else 0)
            w = np.zeros((nq, width), dtype=np.float32)
            c = np.zeros((nq, n_tab, width), dtype=np.float32)
            if is_l2:
                steps, cc = scalar.sq_query_terms(tq, vmin, vdiff, q.nbits, "l2")
                w[:, : codec.width] = steps[:1]
                c[:, :, : codec.width] = cc.reshape(nq, n_tab, -1)
            else:
                w[:, : codec.width], const = scalar.sq_query_terms(tq, vmin, vdiff, q.nbits, "ip")
                bias = np.ascontiguousarray(bias + const[:, None], dtype=np.float32)
            return scalar.sq_scan_batch(w, c, self.codes, self.ids, self.offsets, probes, bias, q.nbits, is_l2, k)
        qs = np.ascontiguousarray(x[:, None, :])
        return dense.dense_scan_batch(qs, self.codes, self.ids, self.offsets, probes, bias, is_l2, k)
