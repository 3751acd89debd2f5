"""Error-bound re-ranking: read a candidate's exact vector only while it can still change
the top-k (``Store.search(..., rerank="auto")``).

The interval. A code score ``est`` of row i for query q misses the exact score by an error
whose scale is ``|q| * sigma_i``: sigma_i is the row's error scale (engine/segments.py
``_row_errors``): RB's from its code (``|r - g s|``, `vecz.kernels.binary.rb_error_norms`;
RaBitQ's per-vector bound has the same form), PQ's from its code too (the square root of its
cells' mean squared coding errors, ``pq_cell_err``), else the norm of the row's coding error
stored beside the codes (SQ, F16, Flat, PQ without the table), and 1 under MRL. The normalised error
``z = (exact - est) / (|q| * sigma_i)`` (scores larger-is-better: l2 distances negated) is
measured on the store's own data (`ErrorModel.fit`, engine/search.py `calibrate`), so one
model covers what theory leaves out: a learned (ITQ) rotation instead of a random one, the
uint8 rounding of fast-scan tables, an IVF residual, an l2 probe term. With ``confidence``
c, row i's exact score lies in ``[est + z_lo |q| sigma_i, est + z_hi |q| sigma_i]``, z_lo and
z_hi the (1 - c) and c quantiles of z: it holds for a share c of (query, row) pairs like
those it was measured on, on each side. "Like" includes the candidate's rank in its
shortlist: the better the rank, the more a row's code score tends to be too high, so the
quantiles are taken per band of ranks wherever the calibration holds enough pairs for the
confidence (``ErrorModel.rank_intervals``; at c = 0.999 two: ranks 0-61 and the deepest, which
takes the wider of its own quantiles and those of the band before it). Pooled over ranks
0-63, the lower side at c = 0.9 held for 75% of the top-10 candidates on 48-d clustered
data; per band, 89-90%.

Queries unlike the rows. Queries often stand apart from the rows they search: short
questions against documents, a query prompt against a passage prompt. On wordnet-gemma the
queries' cosine to the rows' mean direction is 0.21 on average against 0.53 for the rows
themselves (wordnet-minilm: 0.21 against 0.26), and a code's error in the score depends on
it (a cosine codec scores the normalised reconstruction, whose error couples to the part of
q along the corpus mean): calibrated with stored rows as the queries, PQ48x8's upper side
held for 82% of gemma's query pairs at a promised 99%. So the default calibration
(engine/search.py `calibrate`) uses pseudo-queries, stored rows less a random share of the
rows' mean, which span cosines u from the rows' down to below zero, and `ErrorModel.fit`
fits the error's mean and mean deviation as lines in u: the interval of a query is
``shift(u) + spread(u) * (z_lo, z_hi)`` with u its own cosine (clipped to the range
calibrated). At the same u, pseudo-queries and real queries had the same error quantiles
within 0.01 on both datasets. Not under MRL, whose error is the truncated tail's (it follows
the query's own tail, and pseudo-queries moved it the wrong way): the rows serve as they are.
Queries given to `Store.calibrate` represent themselves: no covariate there.

The walk (`bounded_rerank`; compiled: `vecz.kernels.dense.bounded_walk`). Candidates are
visited by upper bound, best first, in rounds: the first reads the k best, each later one
up to `step` more whose upper bound is still >= the current k-th exact score tau (equal
may still enter by a smaller id); a round's rows are fetched together. It stops when no
unread candidate's upper bound reaches tau: no interval left can change the top-k. A
candidate is therefore skipped only if ``upper < tau``, never when its interval overlaps
tau. (A first round of every candidate above the k-th best *lower* bound was tried: the
lower side of the interval is wide, since a shortlist favours rows whose code score is too
high, and it read nearly the whole shortlist on wordnet-minilm.)

Beyond the shortlist. The walk sees the best ``cap`` candidates by code score. A row
outside them scored at most the last one's ``est``; if that plus the largest upper offset
of any row still reaches tau, the query is counted in ``SearchStats.capped`` (its answer
may miss a row a deeper shortlist would have found).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..kernels.transform import normalize_rows
from .errors import InvalidInput

__all__ = ["ErrorModel", "query_cosines", "query_norms", "auto_cap", "parse_auto", "bounded_rerank", "check_confidence",
           "DEFAULT_CONFIDENCE", "MIN_PAIRS"]

# Per-side coverage of the default interval. 0.995 lost 0.45% of the true top-10 ids on
# wordnet-minilm RB1 and 0.75% on bench/scale.py's 10M store; 0.999 lost at most 0.09% on the
# real datasets and 0.23% at 10M, for about 25% more rows (docs/results/rerank-auto.md)
DEFAULT_CONFIDENCE = 0.999
# An ErrorModel's spread (the line of the error's deviation in a query's u, over the mean
# deviation) is at least this: a line fitted to deviations must not reach zero.
MIN_SPREAD = 0.25
# Calibration queries whose cosines to the mean span less than this give no covariate.
MIN_U_RANGE = 1e-3
# Fewer calibration pairs than this give no model: auto then reads its whole shortlist.
MIN_PAIRS = 200
# A committed model's values (z in units of a row's error scale, its lines' coefficients)
# beyond this are refused as damage (`ErrorModel.from_arrays`): measured ones are below 100.
MAX_MODEL_VALUE = 1e6
# The largest score rule a model file may name (`Codec.score_rule`; a sanity bound on a read value).
MAX_SCORE_RULE = 1000


def auto_cap(k: int) -> int:
    """Rows ``rerank="auto"`` may read per query at most, unless ``"auto:R"`` says."""
    return max(100, 10 * k)


def parse_auto(text: str, k: int) -> int:
    """The row cap of ``"auto"`` (`auto_cap`) or ``"auto:R"`` (R >= k); else `InvalidInput`."""
    head, sep, cap = text.strip().lower().partition(":")
    if head == "auto" and not sep:
        return auto_cap(k)
    if head == "auto" and cap.isascii() and cap.isdigit() and int(cap) >= k:  # ASCII: int() reads "١٠", not "²"
        return int(cap)
    raise InvalidInput(f"rerank: expected an integer >= 0, 'auto' or 'auto:R' with R >= k={k}, found {text!r}")


def check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating, np.integer)) \
            or not 0.5 <= float(confidence) <= 1.0:
        raise InvalidInput(f"confidence must be a number in [0.5, 1], found {confidence!r}")
    return float(confidence)


@dataclass(frozen=True, eq=False)
class ErrorModel:
    """Sorted normalised errors z of calibration pairs (see the module docstring), with
    each pair's rank in its query's shortlist by code score (0 = best), when known.

    With a ``direction`` (the unit mean direction of the store's rows) the error of a pair
    whose query has cosine u to it (clipped to the range calibrated, ``u_range``) is
    ``shift(u) + spread(u) * z``: ``shift`` is the least-squares line of the error's mean in
    u, ``spread`` the line of its absolute deviation from that over the mean deviation (so
    about 1), held at ``MIN_SPREAD`` or more; each holds (intercept, slope). A query's
    interval moves and widens with its u (``locations``). See "Queries unlike the rows" in
    the module docstring. Compared by identity (eq=False: its arrays have no single truth
    value)."""

    z: np.ndarray          # float64 (n,), ascending
    per_row: bool          # sigma_i per row (True) or 1 for every row
    ranks: np.ndarray | None = None  # int64 (n,), aligned with z
    direction: np.ndarray | None = None  # float64 (dim,), unit; None: no covariate
    shift: tuple = (0.0, 0.0)    # (intercept, slope) in u
    spread: tuple = (1.0, 0.0)   # (intercept, slope) in u
    u_range: tuple = (0.0, 0.0)  # (min, max) of u calibrated
    scores: int = 1  # the codec's score rule it was measured on (`Codec.score_rule`)
    # l2: the smallest query norm calibrated. A query's scale |q| is held at it or above
    # (`query_scales`): l2's origin is arbitrary, and a query nearer it than any calibrated
    # one (a zero query: scale 0, an interval of width 0) is not bounded by the model. 0: none
    q_min: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, exact: np.ndarray, est: np.ndarray, scale: np.ndarray, per_row: bool,
            ranks: np.ndarray | None = None, *, u: np.ndarray | None = None,
            direction: np.ndarray | None = None, scores: int = 1, q_min: float = 0.0) -> "ErrorModel | None":
        """From (query, row) pairs: exact and code scores (larger-is-better), their scales
        ``|q| * sigma_i`` and optionally their ranks. Pairs with scale 0 (an exact code)
        carry no information. With `u` (each pair's query cosine to ``direction``, same
        shape as exact, spanning more than ``MIN_U_RANGE``) the error's mean and absolute
        deviation are fitted as lines in u by least squares and z is the error standardised
        by them (see the class docstring). ``scores``: the codec's score rule (the model
        applies to codes scored by it only)."""
        exact, est, scale = (np.asarray(a, dtype=np.float64).ravel() for a in (exact, est, scale))
        ok = np.isfinite(exact) & np.isfinite(est) & np.isfinite(scale) & (scale > 0)
        if u is not None:
            u = np.asarray(u, dtype=np.float64).ravel()
            ok &= np.isfinite(u)
        if int(ok.sum()) < MIN_PAIRS:
            return None
        # an outlier row's pair may stand millions of its error scales off: held at the
        # model file's limit (a reader refuses beyond it; an interval that wide reads the
        # whole shortlist all the same)
        z = np.clip((exact[ok] - est[ok]) / scale[ok], -MAX_MODEL_VALUE, MAX_MODEL_VALUE)
        extra: dict = {}
        if u is not None and direction is not None and float(np.ptp(u[ok])) > MIN_U_RANGE:
            u = u[ok]
            shift = _line(u, z)
            resid = z - (shift[0] + shift[1] * u)
            deviation = np.abs(resid)
            mean_dev = float(deviation.mean())
            if mean_dev > 0.0:
                intercept, slope = _line(u, deviation)
                spread = (intercept / mean_dev, slope / mean_dev)
                extra = {"direction": np.asarray(direction, dtype=np.float64).ravel(), "shift": shift,
                         "spread": spread, "u_range": (float(u.min()), float(u.max()))}
                z = resid / _spread_at(spread, u)
        order = np.argsort(z, kind="stable")
        r = None if ranks is None else np.asarray(ranks, dtype=np.int64).ravel()[ok][order]
        return cls(z[order], per_row, r, scores=int(scores), q_min=float(q_min), **extra)

    def nbytes(self) -> int:
        """Bytes of its arrays (pairs, ranks, direction)."""
        return sum(a.nbytes for a in (self.z, self.ranks, self.direction) if a is not None)

    @property
    def pairs(self) -> int:
        return int(self.z.size)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """The model as a ``"model"`` segment's sections and metadata (`from_arrays` reads
        them back): z float64, ranks int64 and direction float64 when it has them."""
        arrays = {"z": np.ascontiguousarray(self.z, dtype=np.float64)}
        if self.ranks is not None:
            arrays["ranks"] = np.ascontiguousarray(self.ranks, dtype=np.int64)
        meta: dict = {"per_row": bool(self.per_row), "scores": int(self.scores)}
        if self.q_min > 0.0:
            meta["q_min"] = float(self.q_min)
        if self.direction is not None:
            arrays["direction"] = np.ascontiguousarray(self.direction, dtype=np.float64)
            meta.update(shift=[float(v) for v in self.shift], spread=[float(v) for v in self.spread],
                        u_range=[float(v) for v in self.u_range])
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict, dim: int) -> "ErrorModel":
        """The model `to_arrays` wrote, checked as untrusted input: `InvalidInput` saying
        what was expected and found (z finite, ascending, at least `MIN_PAIRS`; ranks of
        the same length in [0, 2**31); a unit direction of `dim` floats with finite
        (intercept, slope) lines and a u range)."""
        z = arrays.get("z")
        if not isinstance(z, np.ndarray) or z.dtype != np.float64 or z.ndim != 1 or z.size < MIN_PAIRS:
            raise InvalidInput(f"error model: expected z float64 (n >= {MIN_PAIRS},), found "
                               f"{getattr(z, 'dtype', None)} {getattr(z, 'shape', None)}")
        if not np.isfinite(z).all() or (np.diff(z) < 0).any():
            raise InvalidInput("error model: expected z finite and ascending, found otherwise")
        if max(-z[0], z[-1]) > MAX_MODEL_VALUE:
            raise InvalidInput(f"error model: expected |z| <= {MAX_MODEL_VALUE:g} (errors in units of the row's "
                               f"error scale), found {max(-z[0], z[-1]):.3g}")
        ranks = arrays.get("ranks")
        if ranks is not None and (ranks.dtype != np.int64 or ranks.shape != z.shape or
                                  (ranks.size and (ranks.min() < 0 or ranks.max() >= 1 << 31))):
            raise InvalidInput(f"error model: expected ranks int64 {z.shape} in [0, 2**31), found {ranks.dtype} "
                               f"{ranks.shape}")
        per_row = meta.get("per_row")
        if not isinstance(per_row, bool):
            raise InvalidInput(f"error model: expected per_row true or false, found {per_row!r:.40}")
        scores = meta.get("scores", 1)  # models written before the field: rule 1
        if isinstance(scores, bool) or not isinstance(scores, int) or not 1 <= scores <= MAX_SCORE_RULE:
            raise InvalidInput(f"error model: expected scores an integer in [1, {MAX_SCORE_RULE}], found "
                               f"{scores!r:.40}")
        q_min = _plain_number(meta.get("q_min", 0.0))  # models written before the field: no floor
        if q_min is None or q_min < 0.0:
            raise InvalidInput(f"error model: expected q_min a finite number >= 0, found {meta.get('q_min')!r:.40}")
        direction = arrays.get("direction")
        if direction is None:
            return cls(z, per_row, ranks, scores=scores, q_min=q_min)
        if direction.dtype != np.float64 or direction.shape != (dim,) or not np.isfinite(direction).all() \
                or abs(float(np.linalg.norm(direction)) - 1.0) > 1e-6:
            raise InvalidInput(f"error model: expected a unit direction float64 ({dim},), found {direction.dtype} "
                               f"{direction.shape}")
        lines = []
        for key in ("shift", "spread", "u_range"):
            pair = meta.get(key)
            values = [_plain_number(v) for v in pair] if isinstance(pair, list) and len(pair) == 2 else []
            if len(values) != 2 or None in values or max(abs(v) for v in values) > MAX_MODEL_VALUE:
                raise InvalidInput(f"error model: expected {key} as two numbers of at most {MAX_MODEL_VALUE:g} in "
                                   f"magnitude, found {pair!r:.80}")
            lines.append((values[0], values[1]))
        if not -1.0 - 1e-6 <= lines[2][0] <= lines[2][1] <= 1.0 + 1e-6:  # float32 cosines may pass 1 by a bit
            raise InvalidInput(f"error model: expected u_range [min, max] of cosines within [-1, 1], found {lines[2]}")
        return cls(z, per_row, ranks, direction, *lines, scores=scores, q_min=q_min)

    def query_scales(self, metric: str, x: np.ndarray) -> np.ndarray:
        """Each query's scale, float64 (nq,): `query_norms`, under l2 held at `q_min` or above."""
        qn = query_norms(metric, x)
        return np.maximum(qn, self.q_min) if metric == "l2" else qn

    def locations(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shift, spread), float64 (nq,) each, of the queries x (float (nq, dim)): the
        interval of query i is ``shift[i] + spread[i] * (z_lo, z_hi)``. Without a direction
        (0, 1) for every query."""
        nq = x.shape[0]
        if self.direction is None:
            return np.zeros(nq), np.ones(nq)
        # (np.clip's dispatch cost 3 us a lone query's search: the same bounds, two ufuncs)
        u = np.minimum(np.maximum(query_cosines(x, self.direction), self.u_range[0]), self.u_range[1])
        return self.shift[0] + self.shift[1] * u, _spread_at(self.spread, u)

    def query_intervals(self, confidence: float, n: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), float64 (nq, n) each: the normalised interval of a candidate at rank r
        < n of query x[i] (`rank_intervals` placed by the query's ``locations``)."""
        lo, hi = self.rank_intervals(confidence, n)
        shift, spread = (a[:, None] for a in self.locations(x))
        return shift + spread * lo[None, :], shift + spread * hi[None, :]

    def query_upper(self, confidence: float, n: int, x: np.ndarray) -> np.ndarray:
        """The upper ends of `query_intervals` alone (what a walk visits by), the same values."""
        hi = self.rank_intervals(confidence, n)[1]
        shift, spread = self.locations(x)
        return shift[:, None] + spread[:, None] * hi[None, :]

    def interval(self, confidence: float) -> tuple[float, float]:
        """(z_lo, z_hi): the (1 - c) and c quantiles of z over all pairs, widened to include
        0 (with a ``direction``, z is standardised: a query's interval, placed by its
        ``locations``, need not include its code score). c = 1 takes the extremes seen,
        widened by a quarter of the range (nothing measured lies outside, so the model
        cannot claim more)."""
        cached = self._cache.get(confidence)
        if cached is None:
            cached = self._cache[confidence] = _quantiles(self.z, confidence)
        return cached

    def rank_intervals(self, confidence: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(z_lo, z_hi), float64 (n,) each: the interval of a candidate at rank r < n.

        A shortlist favours rows whose code score came out too high, the more so the better
        the rank: pooled over ranks 0-63, the lower side at c = 0.9 held for only 75% of the
        top 10 candidates (RB1, 48-d clusters). So the quantiles are taken per rank band
        [0, 2), [2, 6), [6, 14), ... (``rank_bands``), a band holding at least 10 / (1 - c)
        pairs (else it joins its neighbour); ranks past the deepest measured take the last.
        Without ranks (or c = 1): the pooled ``interval`` at every rank."""
        key = (confidence, n)
        cached = self._cache.get(key)
        if cached is None:
            lo, hi = np.empty(n), np.empty(n)
            for start, stop, (b_lo, b_hi) in self.rank_bands(confidence):
                lo[start:stop], hi[start:stop] = b_lo, b_hi
            cached = self._cache[key] = (lo, hi)
        return cached

    def measured_depth(self) -> int | None:
        """How many shortlist ranks the model measured (None: pooled, no ranks); deeper ones
        take the last band's quantiles. Kept: a search asks on every call."""
        depth = self._cache.get("depth", 0)
        if depth == 0:
            depth = self._cache["depth"] = None if self.ranks is None else int(self.ranks.max()) + 1
        return depth

    def rank_bands(self, confidence: float) -> list[tuple[int, int, tuple[float, float]]]:
        """[(first rank, end rank, (z_lo, z_hi))] covering all ranks in order (the last
        band's end is 2^62). Band b holds ranks [2^(b+1) - 2, 2^(b+2) - 2): [0, 2), [2, 6),
        [6, 14), ...; consecutive bands join until they hold 10 / (1 - c) pairs. A short
        remainder (the deepest ranks) keeps its own band with the wider of its own and the
        group before it's quantiles on each side: the deeper a rank, the less a shortlist
        favours rows whose code score came out too high, so pooling the deepest ranks with
        shallower ones let their upper bound fail several times as often as promised (RB1,
        1,000 Gaussian rows of 24 dims: 0.9956 at ranks 64-99 for c = 0.999)."""
        end = 1 << 62
        if self.ranks is None or confidence >= 1.0:
            return [(0, end, self.interval(confidence))]
        need = 10.0 / (1.0 - confidence)
        band_of = np.floor(np.log2(self.ranks + 2.0)).astype(np.int64) - 1
        counts = np.bincount(band_of)
        groups: list[list[int]] = []
        first = 0
        for b in range(counts.size):
            if counts[first:b + 1].sum() >= need:
                groups.append([first, b])
                first = b + 1
        short = first < counts.size  # the deepest ranks, fewer than `need` pairs
        if short:
            groups.append([first, counts.size - 1])
        bands = [[2 ** (f + 1) - 2, 2 ** (last + 2) - 2, _quantiles(self.z[(band_of >= f) & (band_of <= last)],
                                                                      confidence)] for f, last in groups]
        if short and len(bands) > 1:
            (lo, hi), (prev_lo, prev_hi) = bands[-1][2], bands[-2][2]
            bands[-1][2] = (min(lo, prev_lo), max(hi, prev_hi))
        bands[-1][1] = end
        return [(a, b, q) for a, b, q in bands]


def _plain_number(v: object) -> float | None:
    """float(v) for a JSON number that is one (not a bool, finite, int within float range),
    else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if np.isfinite(f) else None


def _line(u: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line of y on u (u not constant)."""
    slope = float(np.mean((u - u.mean()) * (y - y.mean())) / np.var(u))
    return float(y.mean()) - slope * float(u.mean()), slope


def _spread_at(spread: tuple, u: np.ndarray) -> np.ndarray:
    """The spread line (intercept, slope) at u, at least `MIN_SPREAD` (a line fitted to
    deviations must not reach zero)."""
    return np.maximum(spread[0] + spread[1] * u, MIN_SPREAD)


def query_norms(metric: str, x: np.ndarray) -> np.ndarray:
    """Each query's |q|, float64 (nq,): the scale of its code scores' errors (1 under cosine,
    where queries are scored as unit vectors)."""
    if metric == "cosine":
        return np.ones(x.shape[0])
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


def query_cosines(x: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """float64 (nq,): the cosine of each row of x to the unit vector ``direction`` (0 for a
    zero row: `normalize_rows` leaves it zero)."""
    return normalize_rows(x).astype(np.float64) @ np.asarray(direction, dtype=np.float64)


def _quantiles(z: np.ndarray, confidence: float) -> tuple[float, float]:
    """(1 - c) and c quantiles of sorted z, widened to include 0 (c = 1: see ``interval``)."""
    if confidence >= 1.0:
        lo, hi = float(z[0]), float(z[-1])
        pad = 0.25 * (hi - lo)
        return min(lo - pad, 0.0), max(hi + pad, 0.0)
    lo = float(np.quantile(z, 1.0 - confidence))
    hi = float(np.quantile(z, confidence))
    return min(lo, 0.0), max(hi, 0.0)


def bounded_rerank(est: np.ndarray, scale: np.ndarray, valid: np.ndarray, z_hi: float | np.ndarray, k: int,
                   step: int, read: Callable[[np.ndarray], np.ndarray], *, seeds: int | None = None,
                   floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The walk of the module docstring over a shortlist, in numpy: the reference of the
    compiled walk the store runs (`vecz.kernels.dense.bounded_walk`, tests compare them).

    est, scale float (nq, C): code scores (larger-is-better) and ``|q| sigma_i``; valid bool
    (nq, C); z_hi the upper offset, one for all or float (nq, C) per candidate (the store's:
    ``ErrorModel.query_intervals``, which may be below zero). ``read(mask)`` returns the
    exact scores (larger-is-better, float64 (nq, C)) of the candidates where mask (nq, C) is
    True (others ignored). Returns exact scores with NaN where not read, the read mask, and
    tau (nq,) (-inf when fewer than k were read).

    A shard's walk of a distributed search (engine/ray.py) reads `seeds` rows first
    (default k), and then goes on with tau the larger of its own k-th exact score and
    floor[i] (float (nq,), larger-is-better, -inf: none; the k-th best exact score of every
    shard's seeds), as `vecz.kernels.dense.walk_seed` and `walk_floor` make the compiled
    walk do; tau is then that maximum.
    """
    nq, c = est.shape
    upper = np.where(valid, est + z_hi * scale, -np.inf)
    order = np.argsort(-upper, axis=1, kind="stable")
    up_sorted = np.take_along_axis(upper, order, axis=1)
    n_valid = valid.sum(axis=1)
    exact = np.full((nq, c), np.nan)
    done = np.zeros((nq, c), dtype=bool)
    tau = np.full(nq, -np.inf)
    ptr = np.zeros(nq, dtype=np.int64)
    cols = np.arange(c)[None, :]
    kk = min(k, c)
    lowest = np.full(nq, -np.inf) if floor is None else np.asarray(floor, dtype=np.float64)
    end = np.minimum(n_valid, k if seeds is None else seeds)
    first = True
    while True:
        take = (cols >= ptr[:, None]) & (cols < end[:, None])
        if take.any():
            mask = np.zeros((nq, c), dtype=bool)
            np.put_along_axis(mask, order, take, axis=1)
            got = read(mask)
            exact[mask] = got[mask]
            done |= mask
        elif not first:
            break
        first = False
        ptr = np.maximum(ptr, end)
        filled = np.where(done, exact, -np.inf)
        kth = -np.partition(-filled, kk - 1, axis=1)[:, kk - 1] if c else np.full(nq, -np.inf)
        tau = np.maximum(np.where(done.sum(axis=1) >= k, kth, -np.inf), lowest)
        # sorted by upper bound: the candidates that can still reach tau are a prefix
        reach = (up_sorted >= tau[:, None]).sum(axis=1)
        end = np.minimum(np.minimum(ptr + step, reach), n_valid)
    return exact, done, tau
