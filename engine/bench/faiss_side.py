"""The benchmark's faiss baselines: for each vecz spec, the closest faiss index, built on the
same rows, trained on the same sample, searched with the same metric, k and thread count.

Role and contract. `faiss_factory` maps a spec to an `index_factory` string (table below);
`FaissSide` builds that index and measures it (`measure`: recall@1/10/100, batch QPS,
p50/p99 latency, and IndexRefineFlat over it for a re-ranking depth R > 0), returning the
``faiss_*`` fields of a result row (`FAISS_KEYS`). faiss is never imported here: it comes
from `vecz.engine.faiss_interop.import_faiss()` (the one module of vecz that imports it),
only when a baseline is asked for, and raises `MissingDependency` when faiss-cpu is absent.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence

import numpy as np

from ..codecs import parse_spec
from ..errors import MissingDependency
from ..faiss_interop import coarse_code_size, import_faiss
from .exact import prepare
from .metrics import ID_BYTES, recall_at, time_batch, time_single

__all__ = ["FAISS_RABITQ_QB", "FAISS_KEYS", "faiss_factory", "faiss_version", "set_faiss_threads",
           "set_faiss_nprobe", "faiss_code_size", "refine_k_factor", "FaissSide"]

# faiss RaBitQ (and its fast scan) quantizes the query to `qb` bits for its extra bits; 8 is
# the closest it gets to vecz's float-query tables at speed (qb = 0, float queries, takes a
# much slower path).
FAISS_RABITQ_QB = 8

FAISS_KEYS = ("faiss_index", "faiss_bytes_per_vector", "faiss_ram_bytes_per_vector", "faiss_recall@1",
              "faiss_recall@10", "faiss_recall@100", "faiss_qps", "faiss_p50_ms", "faiss_p99_ms", "faiss_build_s",
              "speed_vs_faiss", "faiss_note")

# vecz quantizer stage (canonical text) -> faiss index_factory body. "np" on PQ x8: no
# polysemous training, which index_factory otherwise adds to PQ and IVFPQ (it reorders codes
# for Hamming filtering that the search here never uses, and costs ~20x the training time).
_QUANTIZERS = (
    (r"O?PQ(\d+)x8", r"PQ\1np"),  # IndexPQ (OPQ: with an OPQMatrix in front, below)
    (r"O?PQ(\d+)x4", r"PQ\1x4fs"),  # IndexPQFastScan
    (r"SQ(\d+)", r"SQ\1"),  # IndexScalarQuantizer
    (r"F16", "SQfp16"),
    (r"Flat", "Flat"),  # IndexFlat
    # IndexRaBitQFastScan, b bits: faiss's 4-bit fast scan of the sign bits, as vecz's RB
    # scans them; its IndexRaBitQ scores the same codes at half its speed or less (minilm,
    # one thread: RB1 1,026-1,174 QPS against 524-690; docs/results/scans.md, stop 47)
    (r"RB(\d+)", r"RaBitQfs\1"),
)


def faiss_factory(spec: str, dim: int) -> str | None:
    """The faiss `index_factory` string closest to a vecz spec, or None when there is none.

    | vecz | faiss |
    | --- | --- |
    | `PQ<M>x8` | `PQ<M>np` (IndexPQ, no polysemous training) |
    | `PQ<M>x4` | `PQ<M>x4fs` (IndexPQFastScan) |
    | `OPQ<M>x<b>` | `OPQ<M>,...` in front of the PQ (and IVF) body above (OPQMatrix) |
    | `SQ8`, `SQ4`, `F16` | `SQ8`, `SQ4`, `SQfp16` (IndexScalarQuantizer) |
    | `Flat` | `Flat` (IndexFlat) |
    | `RB<b>` | `RR<dim>,RaBitQfs<b>` (random rotation + IndexRaBitQFastScan, b bits) |
    | `IVF<n>,...` | `IVF<n>,...` (IndexIVFPQ, IndexIVFPQFastScan, IndexIVFScalarQuantizer, IndexIVFFlat, IndexIVFRaBitQFastScan) |
    | `IVF<n>,PQ<M>x4` | `IVF<n>,PQ<M>x4fsr` (IndexIVFPQFastScan coding residuals, by_residual=True, as vecz) |
    | `MRL<d>,...` | `MRL<d>,...`: the rest on the first d dims (IndexPreTransform with a LinearTransform that keeps them, then L2 normalisation for cosine/ip) |
    """
    stages = [str(s) for s in parse_spec(spec)]
    mrl = next((int(s[3:]) for s in stages if s.startswith("MRL")), None)
    coarse = next((s for s in stages if s.startswith("IVF")), None)
    body = next((re.sub(pattern, faiss, stages[-1]) for pattern, faiss in _QUANTIZERS
                 if re.fullmatch(pattern, stages[-1])), None)
    if body is None:  # pragma: no cover - parse_spec admits no other quantizer
        return None
    if coarse is not None:
        if body.endswith("x4fs"):
            # vecz's IVF codes the residual to the list centroid (DESIGN.md); index_factory's
            # "IVF..,PQ<M>x4fs" codes the whole vector (by_residual=False), "...fsr" the
            # residual, as faiss_interop's twin of the same spec
            body += "r"
        body = f"{coarse},{body}"
    if stages[-1].startswith("OPQ"):
        # faiss's OPQMatrix rotates x before IVF; vecz rotates the residual after it: the
        # same family (x R - c R = (x - c) R), each side training its own rotation
        body = f"OPQ{stages[-1][3:].split('x')[0]},{body}"
    if stages[-1].startswith("RB"):
        # RaBitQ's estimator assumes randomly rotated data; faiss leaves the rotation to a
        # pre-transform (as bench/harness.py does), timed at search like vecz's rotation.
        body = f"RR{dim if mrl is None else min(dim, mrl)},{body}"
    if mrl is not None:
        # faiss has no truncation stage: `FaissSide` puts a LinearTransform keeping the
        # first d coordinates (and L2 normalisation for cosine/ip) in front of `body`.
        body = f"MRL{mrl},{body}"
    return body


def faiss_version() -> str | None:
    """The installed faiss's version, None when faiss is not installed."""
    try:
        return import_faiss().__version__
    except MissingDependency:
        return None


def set_faiss_threads(n: int) -> int:
    """Set faiss's OpenMP threads; returns the count read back."""
    faiss = import_faiss()
    faiss.omp_set_num_threads(n)
    return int(faiss.omp_get_max_threads())


@contextlib.contextmanager
def _captured_stderr_fd() -> Iterator[list[str]]:
    """Capture what C++ code writes to file descriptor 2 (faiss's clustering warnings)."""
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real descriptor 2 (embedded interpreters): capture nothing
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _inner_indexes(index: Any) -> Iterator[Any]:
    """`index` and the indexes its IndexPreTransform layers wrap, outermost first."""
    faiss = import_faiss()
    index = faiss.downcast_index(index)
    while True:
        yield index
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return


def set_faiss_nprobe(index: Any, nprobe: int) -> None:
    """Set nprobe on every IVF layer of `index`."""
    for inner in _inner_indexes(index):
        if hasattr(inner, "nprobe"):
            inner.nprobe = nprobe


def faiss_code_size(index: Any) -> int:
    """Code bytes faiss holds per vector: ``sa_code_size()``, less the list number it puts in
    front of an IVF index's standalone codes (`coarse_code_size`), which its inverted lists do
    not store per vector (and which vecz's `code_size` leaves out too)."""
    faiss = import_faiss()
    size = int(index.sa_code_size())
    for inner in _inner_indexes(index):
        if isinstance(inner, faiss.IndexIVF):
            size -= coarse_code_size(inner.nlist)
    return size


def refine_k_factor(r: int, k: int) -> float:
    """IndexRefineFlat's k_factor that re-scores exactly `r` rows for `k` results.

    faiss keeps k_factor as a float32 and re-scores ``int(k * k_factor)`` rows, computed in
    float32: ``r / k`` can land just below r (k = 7, r = 31: 30.999998, one row short); half
    a row more truncates to r for any depth a benchmark asks for.
    """
    return (r + 0.5) / k


def _mrl_pretransform(index: Any, dim: int, d: int, renorm: bool) -> tuple[Any, tuple]:
    """Wrap a faiss index built on `d` dims so it takes `dim`-wide vectors: a LinearTransform
    that keeps the first d coordinates (the MRL stage), then L2 normalisation for cosine/ip."""
    faiss = import_faiss()
    keep = faiss.LinearTransform(dim, d, False)
    a = np.zeros((d, dim), dtype=np.float32)
    a[np.arange(d), np.arange(d)] = 1.0
    faiss.copy_array_to_vector(a.ravel(), keep.A)
    keep.is_trained = True
    chain = [keep] + ([faiss.NormalizationTransform(d, 2.0)] if renorm else [])
    wrapped = faiss.IndexPreTransform(chain[-1], index)
    for t in chain[-2::-1]:
        wrapped.prepend_transform(t)
    return wrapped, (keep, chain, index)  # the caller keeps the parts alive as long as the wrapper


class FaissSide:
    """The closest faiss index of one spec, trained on the same rows, searched the same way.

    Parameters
    ----------
    spec, dim, metric, k :
        As the vecz store measured beside it.
    xb_p : float32 (n, dim)
        The base, `prepare`d for the metric (faiss holds these rows; IndexRefineFlat reads them).
    train_raw : (ntrain, dim)
        The rows the vecz codec trained on.
    nprobe : int or None
        Lists visited by IVF indexes.

    A factory faiss refuses (e.g. PQ with dims not divisible by M) leaves `index` None and
    says why in `note`; `measure` then returns only the index name and the note.
    """

    def __init__(self, spec: str, dim: int, metric: str, xb_p: np.ndarray, train_raw: np.ndarray, k: int,
                 nprobe: int | None) -> None:
        faiss = import_faiss()
        self.k = k
        self.metric = metric
        self.dim = dim
        self.factory = faiss_factory(spec, dim)
        self.note: str | None = None
        self.index: Any = None
        self.refine: Any = None
        if self.factory is None:
            self.note = f"no faiss counterpart for {spec!r}"
            return
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        mrl = next((int(s[3:]) for s in map(str, parse_spec(spec)) if s.startswith("MRL")), None)
        train = prepare(train_raw, metric)
        t0 = time.perf_counter()
        try:
            with _captured_stderr_fd() as warnings:
                body = self.factory.split(",", 1)[1] if mrl is not None else self.factory
                if mrl is not None and mrl < dim:
                    inner = faiss.index_factory(mrl, body, fmetric)
                    index, self._parts = _mrl_pretransform(inner, dim, mrl, renorm=metric != "l2")
                else:
                    index = faiss.index_factory(dim, body, fmetric)
                index.train(train)
                index.add(xb_p)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.note = f"faiss refused {self.factory!r}: {first[:160]}"
            return
        self.build_s = time.perf_counter() - t0
        if warnings:
            self.note = f"faiss: {warnings[0].strip()[:160]}"
        for inner in _inner_indexes(index):
            if hasattr(inner, "qb"):
                inner.qb = FAISS_RABITQ_QB
        if nprobe is not None:
            set_faiss_nprobe(index, nprobe)
        self.index = index
        self.xb_p = xb_p
        self.code_size = faiss_code_size(index)
        # RAM measured as vecz's is: what the index holds (codes, ids where it keeps them,
        # trained arrays), here its serialized size, over the rows
        self.ram_per_vector = faiss.serialize_index(index).nbytes / max(1, index.ntotal)

    def measure(self, r: int, xq: np.ndarray, gt: np.ndarray, ats: Sequence[int], vecz_qps: float) -> dict[str, Any]:
        """The ``faiss_*`` fields of the row measured at re-ranking depth `r` (`FAISS_KEYS`)."""
        out: dict[str, Any] = dict.fromkeys(FAISS_KEYS)
        out["faiss_index"] = self.factory
        out["faiss_note"] = self.note
        if self.index is None:
            return out
        faiss = import_faiss()
        if r == 0:
            index = self.index
        else:
            if self.refine is None:
                # IndexRefineFlat over the built index: the float32 rows (held in RAM, unlike
                # vecz's dense file) re-score the shortlist of R rows (`refine_k_factor`)
                self.refine = faiss.IndexRefineFlat(self.index, faiss.swig_ptr(self.xb_p))
            self.refine.k_factor = refine_k_factor(r, self.k)
            index = self.refine
        metric, k = self.metric, self.k

        def search(q: np.ndarray) -> np.ndarray:
            return index.search(prepare(q, metric), k)[1]

        ids, qps = time_batch(search, xq)
        p50, p99 = time_single(search, xq)
        out["faiss_index"] = self.factory + (f",RFlat(k_factor={r / k:g})" if r else "")
        out["faiss_bytes_per_vector"] = self.code_size + ID_BYTES
        out["faiss_ram_bytes_per_vector"] = round(self.ram_per_vector + (4 * self.dim if r else 0), 1)
        for a in sorted({1, 10, 100, *ats}):
            out[f"faiss_recall@{a}"] = recall_at(ids, gt, a) if a in ats else None  # as vecz's: unrounded
        out["faiss_qps"] = round(qps, 1)
        out["faiss_p50_ms"], out["faiss_p99_ms"] = round(p50, 4), round(p99, 4)
        out["faiss_build_s"] = round(self.build_s, 3)
        out["speed_vs_faiss"] = round(vecz_qps / qps, 3)
        return out
