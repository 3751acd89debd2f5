"""faiss interop (engine/faiss_interop.py): `Codec.from_faiss` and `codec.to_faiss()`.

Every supported family is trained in faiss on real embeddings (the shipped MiniLM sample)
and on clustered synthetic data of odd sizes (33 dims, 1,501 rows, far from the origin), then:
- codes: ``codec.encode(x)`` equals faiss's ``index.sa_encode(x)`` bit for bit (list
  numbers split off with `split_sa_codes`); SQ and F16 where faiss rounds differently are
  checked to differ only at level boundaries / float16 ties, by one step;
- decode: ``codec.decode`` of faiss's codes equals ``index.sa_decode`` within float tolerance;
- search: a `Store` built with the codec (``dense=None``) returns faiss's ids (ties allowed);
- round trip: a vecz-trained codec's ``to_faiss()`` encodes like the codec, and
  ``Codec.from_faiss(codec.to_faiss()) == codec`` where exact (less the arrays faiss has no
  place for, PQ's `pq_cell_err`);
- typed errors for what has no equivalent, naming what was expected and found.
"""

from __future__ import annotations

import ast
import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from vecz.engine.codecs import Codec, Codes  # noqa: E402
from vecz.engine.errors import (  # noqa: E402
    CodecSpecError,
    DimensionMismatch,
    InvalidInput,
    MissingDependency,
    NotTrained,
)
from vecz.engine.faiss_interop import (  # noqa: E402
    coarse_code_size,
    codec_from_faiss,
    join_sa_codes,
    split_sa_codes,
)
from vecz.engine.store import Store  # noqa: E402
from vecz.kernels import scalar  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
L2, IP = faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    # the machine is shared; small indexes gain nothing from threads
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


class Data:
    def __init__(self, base: np.ndarray, queries: np.ndarray, n_train: int) -> None:
        self.base = np.ascontiguousarray(base, dtype=np.float32)
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.train = self.base[:n_train]
        self.dim = self.base.shape[1]


@pytest.fixture(scope="module")
def sample() -> Data:
    """The shipped sample: 5,000 x 384 MiniLM embeddings (float16 on disk), 200 queries."""
    folder = REPO / "bench" / "sample"
    if not (folder / "base.npy").exists():
        pytest.skip(f"the shipped sample is missing from {folder}")
    base = np.load(folder / "base.npy", allow_pickle=False)[:3001]
    queries = np.load(folder / "queries.npy", allow_pickle=False)[:40]
    return Data(base, queries, 2500)


@pytest.fixture(scope="module")
def clustered() -> Data:
    """1,501 x 33 float32: 24 clusters of different spreads around a far-off common mean."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((24, 33)) * 2.0
    spread = rng.uniform(0.2, 0.8, size=24)
    labels = rng.integers(0, 24, size=1541)
    x = centres[labels] + rng.standard_normal((1541, 33)) * spread[labels, None] + 3.0
    return Data(x[:1501], x[1501:], 1501)


def _factory_index(dim: int, factory: str, metric: int):
    index = faiss.index_factory(dim, factory, metric)
    part = faiss.downcast_index(index)
    if isinstance(part, faiss.IndexPreTransform):
        part = faiss.downcast_index(part.index)
    if hasattr(part, "do_polysemous_training"):
        # the factory turns it on for PQ<M>: it only permutes the codebooks and takes 25 s
        # of annealing per index here
        part.do_polysemous_training = False
    return index


def _factory(data: Data, factory: str, metric: int):
    return _factory_index(data.dim, factory, metric)


def _trained(data: Data, factory: str, metric: int):
    index = _factory(data, factory, metric)
    index.train(data.train)
    return index


def _vecz_and_faiss_codes(codec: Codec, index, x: np.ndarray):
    sa = index.sa_encode(x)
    return codec.encode(x), Codes(*split_sa_codes(codec, sa)), sa


# --------------------------------------------------------------------------- faiss -> vecz, exact families

EXACT = [
    # (data, factory string, faiss metric, vecz spec, vecz metric)
    ("sample", "PQ16", L2, "PQ16x8", "l2"),  # dsub 24: vecz assigns with BLAS
    ("sample", "PQ48", IP, "PQ48x8", "ip"),  # dsub 8: vecz's jitted loop
    ("sample", "PQ32x4", L2, "PQ32x4", "l2"),  # IndexPQ with 4-bit codes
    ("sample", "PQ32x4fs", IP, "PQ32x4", "ip"),  # IndexPQFastScan
    ("sample", "L2norm,PQ16", IP, "PQ16x8", "cosine"),
    ("sample", "IVF32,PQ16", L2, "IVF32,PQ16x8", "l2"),
    ("sample", "IVF32,PQ16", IP, "IVF32,PQ16x8", "ip"),
    ("sample", "IVF300,PQ32x4fsr", L2, "IVF300,PQ32x4", "l2"),  # 2 bytes of list number
    ("sample", "L2norm,IVF32,PQ32x4fsr", IP, "IVF32,PQ32x4", "cosine"),
    ("sample", "IVF1,PQ16", L2, "PQ16x8", "l2"),  # one list: vecz's mean-subtracting PQ
    ("sample", "Flat", L2, "Flat", "l2"),
    ("sample", "IVF32,Flat", IP, "IVF32,Flat", "ip"),
    ("sample", "SQfp16", L2, "F16", "l2"),  # float16 data: no half-way ties
    ("sample", "IVF32,SQfp16", IP, "IVF32,F16", "ip"),  # (by_residual set False below)
    ("clustered", "PQ11", L2, "PQ11x8", "l2"),  # odd M, dsub 3
    ("clustered", "PQ11x4fs", L2, "PQ11x4", "l2"),  # odd M: the last byte's high nibble is 0
    ("clustered", "IVF13,PQ3", IP, "IVF13,PQ3x8", "ip"),  # dsub 11
    ("clustered", "IVF1,PQ11x4", IP, "PQ11x4", "ip"),
    ("clustered", "IVF13,PQ11x4fsr", L2, "IVF13,PQ11x4", "l2"),
    ("clustered", "Flat", IP, "Flat", "ip"),
]


def _build(request, name: str, factory: str, metric: int):
    data = request.getfixturevalue(name)
    index = _factory(data, factory, metric)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and "SQfp16" in factory:
        ivf.by_residual = False  # vecz F16 codes the vector, not its residual
    index.train(data.train)
    return data, index


@pytest.mark.parametrize("name,factory,metric,spec,vmetric", EXACT,
                         ids=[f"{e[0]}-{e[1]}-{e[4]}" for e in EXACT])
def test_from_faiss_codes_bit_for_bit(request, name, factory, metric, spec, vmetric):
    data, index = _build(request, name, factory, metric)
    codec = Codec.from_faiss(index)
    assert (codec.spec, codec.metric, codec.dim) == (spec, vmetric, data.dim)
    mine, theirs, sa = _vecz_and_faiss_codes(codec, index, data.base)
    assert sa.shape[1] == coarse_code_size(codec.nlist) + codec.code_size
    np.testing.assert_array_equal(mine.lists, theirs.lists)
    np.testing.assert_array_equal(mine.codes, theirs.codes)
    # decode: vecz's reconstruction of faiss's codes is faiss's
    np.testing.assert_allclose(codec.decode(theirs.codes, theirs.lists), index.sa_decode(sa), rtol=1e-6, atol=1e-6)
    # and the codes go back to faiss unchanged
    np.testing.assert_array_equal(join_sa_codes(codec, *mine), sa)


def test_from_faiss_pq_state_is_faiss_codebooks(sample):
    index = _trained(sample, "PQ16", L2)
    codec = Codec.from_faiss(index)
    state = codec.state()
    np.testing.assert_array_equal(state["pq_books"].ravel(), faiss.vector_to_array(index.pq.centroids))
    # IndexPQ subtracts nothing: vecz's mean is zero
    np.testing.assert_array_equal(state["centroids"], np.zeros((1, sample.dim), np.float32))
    ivf = _trained(sample, "IVF1,PQ16", L2)
    mean_like = Codec.from_faiss(ivf).state()["centroids"]
    np.testing.assert_array_equal(mean_like, faiss.downcast_index(ivf.quantizer).reconstruct_n(0, 1))


def _mrl_index(dim: int, m: int, metric: str, inner):
    """The chain vecz's MRL stands for: [norm,] keep the first m dims[, norm]."""
    keep = faiss.LinearTransform(dim, m, False)
    faiss.copy_array_to_vector(np.eye(m, dim, dtype=np.float32).ravel(), keep.A)
    keep.is_trained = True
    keep.set_is_orthonormal()  # lets sa_decode pad the dropped dims back
    chain = ([faiss.NormalizationTransform(dim, 2.0)] if metric == "cosine" else []) + [keep] + (
        [faiss.NormalizationTransform(m, 2.0)] if metric != "l2" else [])
    index = faiss.IndexPreTransform(inner)
    for t in reversed(chain):
        index.prepend_transform(t)
    return index


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_from_faiss_mrl_chain(sample, metric):
    inner = faiss.IndexPQ(128, 16, 8, L2 if metric == "l2" else IP)
    index = _mrl_index(sample.dim, 128, metric, inner)
    index.train(sample.train)
    codec = Codec.from_faiss(index)
    assert (codec.spec, codec.metric, codec.dim, codec.width) == ("MRL128,PQ16x8", metric, sample.dim, 128)
    mine, theirs, sa = _vecz_and_faiss_codes(codec, index, sample.base)
    np.testing.assert_array_equal(mine.codes, theirs.codes)
    # faiss's reverse transform pads the dropped dims with zeros
    np.testing.assert_allclose(codec.decode(theirs.codes), index.sa_decode(sa)[:, :128], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- SQ and F16: faiss rounds differently


def _sq_levels(index) -> tuple[np.ndarray, np.ndarray, int]:
    sq = faiss.downcast_index(index).sq
    trained = faiss.vector_to_array(sq.trained).astype(np.float64)
    half = trained.size // 2
    d = index.d
    nbits = 8 if sq.qtype in (faiss.ScalarQuantizer.QT_8bit, faiss.ScalarQuantizer.QT_8bit_uniform) else 4
    return np.broadcast_to(trained[:half], (d,)), np.broadcast_to(trained[half:], (d,)), nbits


SQ_CASES = [
    # (data, factory string, faiss metric, vecz spec, uniform range)
    ("sample", "SQ8", L2, "SQ8", False),
    ("sample", "SQ8", IP, "SQ8", True),
    ("sample", "SQ4", IP, "SQ4", False),
    ("sample", "SQ4", L2, "SQ4", True),
    ("sample", "IVF32,SQ8", L2, "IVF32,SQ8", False),
    ("sample", "IVF32,SQ4", IP, "IVF32,SQ4", False),
    ("clustered", "SQ8", IP, "SQ8", False),
    ("clustered", "SQ4", L2, "SQ4", False),  # 33 dims: 17 bytes, the last high nibble 0
    ("clustered", "SQ4", IP, "SQ4", True),
    ("clustered", "IVF13,SQ8", L2, "IVF13,SQ8", False),
]


@pytest.mark.parametrize("name,factory,metric,spec,uniform", SQ_CASES,
                         ids=[f"{c[0]}-{c[1]}{'_uniform' * c[4]}-{c[2]}" for c in SQ_CASES])
def test_from_faiss_sq_codes_differ_only_at_level_boundaries(request, name, factory, metric, spec, uniform):
    """faiss codes floor(L t) and decodes mid-level; vecz rounds and decodes at the level.
    After the range shift in from_faiss, they may differ only for values within float
    rounding of a level boundary, by one level."""
    data = request.getfixturevalue(name)
    if uniform:  # one range for every dimension: vecz gets it repeated per dimension
        qt = faiss.ScalarQuantizer
        qtype = qt.QT_8bit_uniform if spec == "SQ8" else qt.QT_4bit_uniform
        index = faiss.IndexScalarQuantizer(data.dim, qtype, metric)
        index.train(data.train)
    else:
        index = _trained(data, factory, metric)
    codec = Codec.from_faiss(index)
    assert codec.spec == spec
    x = data.base
    mine, theirs, sa = _vecz_and_faiss_codes(codec, index, x)
    np.testing.assert_array_equal(mine.lists, theirs.lists)
    core = faiss.downcast_index(faiss.try_extract_index_ivf(index) or index)
    vmin, vdiff, nbits = _sq_levels(core)
    levels = (1 << nbits) - 1
    r = x - codec.state()["centroids"][mine.lists] if codec.ivf is not None else x
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(vdiff > 0, levels * (r.astype(np.float64) - vmin) / vdiff, 0.0)
    u_mine = scalar.sq_unpack(mine.codes, data.dim, nbits).astype(int)
    u_theirs = scalar.sq_unpack(theirs.codes, data.dim, nbits).astype(int)
    differ = u_mine != u_theirs
    assert differ.sum() <= 1e-4 * differ.size + 2, f"{differ.sum()} of {differ.size} levels differ"
    assert np.all(np.abs(u_mine - u_theirs)[differ] == 1)
    assert np.all(np.abs(t[differ] - np.round(t[differ])) < 1e-4), "a level differs away from a boundary"
    # the padding nibble of an odd width is zero in both
    np.testing.assert_array_equal(mine.codes[~differ.any(axis=1)], theirs.codes[~differ.any(axis=1)])
    # reconstructions agree to eps of a level (vecz's range starts (1/2 - eps) level higher)
    step = float(vdiff.max()) / levels
    np.testing.assert_allclose(codec.decode(theirs.codes, theirs.lists), index.sa_decode(sa),
                               rtol=0, atol=1e-3 * step + 1e-6)


def test_f16_differs_from_faiss_only_at_half_way_ties(clustered):
    """faiss's float16 conversion rounds half-way ties away from zero, numpy's to even."""
    index = faiss.IndexScalarQuantizer(clustered.dim, faiss.ScalarQuantizer.QT_fp16, L2)
    codec = Codec.from_faiss(index)
    assert codec.spec == "F16"
    x = clustered.base
    mine, theirs, _ = _vecz_and_faiss_codes(codec, index, x)
    a, b = mine.codes.view("<u2"), theirs.codes.view("<u2")
    differ = a != b
    lo, hi = np.minimum(a, b)[differ].view("<f2"), np.maximum(a, b)[differ].view("<f2")
    assert differ.sum() < 1e-3 * differ.size
    np.testing.assert_array_equal(  # each differing value sits exactly half-way between its two float16s
        np.abs(x[differ].astype(np.float64) - lo.astype(np.float64)),
        np.abs(hi.astype(np.float64) - x[differ].astype(np.float64)))
    # 1 + (2j + 1) / 2**11 lies half-way between the float16s 1 + j / 2**10 and 1 + (j + 1) / 2**10
    ties = np.ones((1, 33), dtype=np.float32)
    ties[0, :4] += np.float32(2.0**-11) * np.array([1, 3, 5, 7], dtype=np.float32)
    got = codec.encode(ties).codes.view("<u2")[0, :4]
    want = index.sa_encode(ties).view("<u2")[0, :4]
    one = 0x3C00  # float16 1.0
    np.testing.assert_array_equal(got - one, [0, 2, 2, 4])  # to even
    np.testing.assert_array_equal(want - one, [1, 2, 3, 4])  # away from zero


# --------------------------------------------------------------------------- search through a Store


def _assert_same_topk(mine, theirs, larger_is_better: bool, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Scores equal rank by rank; ids equal except among candidates tied within tolerance."""
    (ms, mi), (fs, fi) = mine, theirs
    np.testing.assert_allclose(ms, fs, rtol=rtol, atol=atol)
    for q in range(fi.shape[0]):
        kth = fs[q, -1]
        tol = atol + rtol * abs(kth)
        clear = fs[q] > kth + tol if larger_is_better else fs[q] < kth - tol
        assert set(fi[q][clear]) <= set(mi[q]), f"query {q}: faiss's clear top ids {fi[q][clear]} not in {mi[q]}"
        clear = ms[q] > kth + tol if larger_is_better else ms[q] < kth - tol
        assert set(mi[q][clear]) <= set(fi[q]), f"query {q}: vecz's clear top ids {mi[q][clear]} not in {fi[q]}"


# SQ's tolerance is one level of one dimension: the odd value on a level boundary that
# codes one level apart (see the SQ test above) moves a score by |q_d| step or 2 |q_d - x_d| step.
SEARCH = [
    ("sample", "PQ16", L2, 1, 1e-5),
    ("sample", "L2norm,PQ16", IP, 1, 1e-5),
    ("sample", "IVF32,PQ16", IP, 8, 1e-5),
    ("sample", "IVF32,PQ16", L2, 8, 1e-5),
    ("sample", "SQ8", IP, 1, 1e-3),
    ("sample", "IVF32,SQ8", L2, 8, 1e-3),
    ("sample", "IVF32,Flat", IP, 4, 1e-5),
    ("sample", "SQfp16", L2, 1, 1e-5),
    ("clustered", "PQ11", IP, 1, 1e-5),
    ("clustered", "IVF13,PQ3", L2, 5, 1e-5),
]


@pytest.mark.parametrize("name,factory,metric,nprobe,atol", SEARCH, ids=[f"{s[0]}-{s[1]}-{s[2]}" for s in SEARCH])
def test_store_search_matches_faiss(request, tmp_path, name, factory, metric, nprobe, atol):
    data = request.getfixturevalue(name)
    index = _trained(data, factory, metric)
    codec = Codec.from_faiss(index)
    ids = np.arange(data.base.shape[0], dtype=np.int64)
    with Store.create(tmp_path / "s", codec=codec, dense=None) as store:
        store.add(data.base, ids)
        mine = store.search(data.queries, 10, nprobe=nprobe, rerank=0)
    index.add(data.base)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
    theirs = index.search(data.queries, 10)
    if codec.metric == "cosine" and factory.endswith("PQ16"):
        # vecz scores unit vectors' 8-bit PQ codes by the cosine to the reconstruction
        # (kernels/pq.py), faiss by the dot product: rank faiss's own reconstructions so
        inner = faiss.downcast_index(faiss.downcast_index(index).index)
        recon = inner.reconstruct_n(0, inner.ntotal).astype(np.float64)
        qn = data.queries / np.linalg.norm(data.queries, axis=1, keepdims=True)
        full = (qn @ recon.T) / np.linalg.norm(recon, axis=1)
        top = np.argsort(-full, axis=1, kind="stable")[:, :10]
        theirs = (np.take_along_axis(full, top, axis=1), top)
        assert (theirs[1] != index.search(data.queries, 10)[1]).any()  # the two rankings differ here
    _assert_same_topk(mine, theirs, larger_is_better=metric == IP, atol=atol)


@pytest.mark.parametrize("factory,metric,nprobe", [("PQ48x4fs", L2, 1), ("PQ48x4", IP, 1), ("IVF32,PQ48x4fsr", IP, 8)])
def test_store_search_4bit_close_to_faiss(sample, tmp_path, factory, metric, nprobe):
    """vecz scans 4-bit codes with quantised lookup tables (as faiss's fast-scan indexes do,
    each library its own way; faiss's IndexPQ sums float tables), so scores are close, not
    equal: measured overlap@10 0.995-0.998, score differences < 0.3% of the largest score."""
    index = _trained(sample, factory, metric)
    codec = Codec.from_faiss(index)
    with Store.create(tmp_path / "s", codec=codec, dense=None) as store:
        store.add(sample.base, np.arange(sample.base.shape[0]))
        ms, mi = store.search(sample.queries, 10, nprobe=nprobe, rerank=0)
    index.add(sample.base)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
    fs, fi = index.search(sample.queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mi, fi)])
    assert overlap >= 0.95, overlap
    np.testing.assert_allclose(ms, fs, rtol=0, atol=0.01 * np.abs(fs).max())


# --------------------------------------------------------------------------- vecz -> faiss


ROUND_TRIP = [
    # (vecz spec, metric, fast_scan, faiss class expected)
    ("PQ16x8", "l2", True, "IndexIVFPQ"),  # the training mean: an IVF with one list
    ("PQ32x4", "ip", True, "IndexIVFPQFastScan"),
    ("PQ32x4", "l2", False, "IndexIVFPQ"),
    ("IVF16,PQ16x8", "cosine", True, "IndexPreTransform"),
    ("IVF16,PQ32x4", "l2", True, "IndexIVFPQFastScan"),
    ("IVF16,PQ32x4", "ip", False, "IndexIVFPQ"),
    ("MRL128,PQ16x8", "cosine", True, "IndexPreTransform"),
    ("MRL96,IVF8,PQ12x4", "ip", True, "IndexPreTransform"),
    ("MRL64,PQ8x8", "l2", True, "IndexPreTransform"),
    ("Flat", "ip", True, "IndexFlat"),
    ("IVF8,Flat", "l2", True, "IndexIVFFlat"),
    ("MRL64,Flat", "l2", True, "IndexPreTransform"),
    ("F16", "l2", True, "IndexScalarQuantizer"),
    ("IVF8,F16", "ip", True, "IndexIVFScalarQuantizer"),
]


@pytest.fixture(scope="module")
def vecz_codecs(sample):
    cache: dict = {}

    def get(spec: str, metric: str) -> Codec:
        if (spec, metric) not in cache:
            # faiss's twin codes no row norms (PQ under ip: test_to_faiss_refuses_row_norms)
            cache[spec, metric] = Codec(spec, sample.dim, metric, row_norms=False).train(sample.train)
        return cache[spec, metric]

    return get


def _as_faiss_holds_it(codec: Codec) -> Codec:
    """The codec without vecz's optional trained arrays (PQ's `pq_cell_err`, each cell's mean
    squared coding error): faiss has no place for them, a codec from faiss lacks them."""
    optional = codec.quantizer.optional_state_shapes(codec.width)
    return Codec.from_config(codec.to_config(), {k: v for k, v in codec.state().items() if k not in optional})


@pytest.mark.parametrize("spec,metric,fast_scan,kind", ROUND_TRIP,
                         ids=[f"{r[0]}-{r[1]}-fs{int(r[2])}" for r in ROUND_TRIP])
def test_to_faiss_codes_bit_for_bit_and_back(sample, vecz_codecs, spec, metric, fast_scan, kind):
    codec = vecz_codecs(spec, metric)
    index = codec.to_faiss(fast_scan=fast_scan)
    gc.collect()  # the parts of the index (coarse quantizer, transforms) stay alive with it
    assert type(faiss.downcast_index(index)).__name__ == kind
    assert index.is_trained and index.ntotal == 0 and index.d == sample.dim
    x = sample.base
    sa = index.sa_encode(x)
    np.testing.assert_array_equal(sa, join_sa_codes(codec, *codec.encode(x)))
    back = Codec.from_faiss(index)
    assert back == _as_faiss_holds_it(codec)
    rec = index.sa_decode(sa)[:, : codec.width]
    np.testing.assert_allclose(codec.decode(*split_sa_codes(codec, sa)), rec, rtol=1e-6, atol=1e-6)


def test_to_faiss_refuses_row_norms(sample):
    codec = Codec("PQ32x4", sample.dim, "ip").train(sample.train[:2000])
    assert codec.row_norms and codec.code_size == 16 + 2
    with pytest.raises(CodecSpecError, match="row_norms=False"):
        codec.to_faiss()


def test_to_faiss_flat_cosine_differs_in_the_last_bit_only(sample, vecz_codecs):
    """Cosine Flat codes are the normalised floats: vecz normalises with a float64 norm,
    faiss with a float32 one."""
    codec = vecz_codecs("Flat", "cosine")
    index = codec.to_faiss()
    a = codec.encode(sample.base).codes.view("<f4")
    b = index.sa_encode(sample.base).view("<f4")
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=0)
    assert Codec.from_faiss(index) == codec


@pytest.mark.parametrize("spec,metric", [("SQ8", "l2"), ("SQ4", "ip"), ("IVF8,SQ8", "cosine"), ("MRL96,SQ4", "l2")])
def test_to_faiss_sq_close_and_back(sample, vecz_codecs, spec, metric):
    codec = vecz_codecs(spec, metric)
    index = codec.to_faiss()
    x = sample.base
    sa = index.sa_encode(x)
    mine = codec.encode(x)
    theirs = Codes(*split_sa_codes(codec, sa))
    np.testing.assert_array_equal(mine.lists, theirs.lists)
    nbits = codec.quantizer.nbits
    u_mine = scalar.sq_unpack(mine.codes, codec.width, nbits).astype(int)
    u_theirs = scalar.sq_unpack(theirs.codes, codec.width, nbits).astype(int)
    differ = u_mine != u_theirs
    assert differ.sum() <= 5e-4 * differ.size, f"{differ.sum()} of {differ.size} levels differ"
    assert np.all(np.abs(u_mine - u_theirs)[differ] == 1)
    # only values on vecz's rounding boundaries, half-way between levels
    st = codec.state()
    r = codec._prepare(x, "x") - st["centroids"][mine.lists]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (r.astype(np.float64) - st["sq_vmin"]) * ((1 << nbits) - 1) / st["sq_vdiff"]
    assert np.all(np.abs(t[differ] - np.floor(t[differ]) - 0.5) < 1e-4), "a level differs away from a boundary"
    # the same reconstruction for the same code
    np.testing.assert_allclose(codec.decode(theirs.codes, theirs.lists), index.sa_decode(sa)[:, : codec.width],
                               rtol=1e-6, atol=1e-6)
    back = Codec.from_faiss(index)
    assert back.spec == codec.spec and back.metric == codec.metric
    for name, arr in codec.state().items():
        np.testing.assert_allclose(back.state()[name], arr, rtol=1e-5,
                                   atol=1e-4 * float(codec.state()["sq_vdiff"].max()))
    again = back.encode(x).codes
    assert (again != mine.codes).mean() < 1e-3


def test_to_faiss_search_matches_the_codec(sample, vecz_codecs):
    codec = vecz_codecs("IVF16,PQ16x8", "cosine")
    index = codec.to_faiss()
    index.add(sample.base)
    faiss.extract_index_ivf(index).nprobe = 4
    # vecz scores unit vectors' 8-bit PQ codes by the cosine to the reconstruction, faiss by
    # the dot product: take every row of faiss's probed lists with its dot score, divide by
    # the norm of faiss's own reconstruction, and rank
    n = sample.base.shape[0]
    dots, rows = index.search(sample.queries, n)
    recon = index.sa_decode(index.sa_encode(sample.base)).astype(np.float64)
    norms = np.linalg.norm(recon, axis=1)
    cos = np.where(rows >= 0, dots / norms[np.maximum(rows, 0)], -np.inf)
    top = np.argsort(-cos, axis=1, kind="stable")[:, :10]
    theirs = (np.take_along_axis(cos, top, axis=1), np.take_along_axis(rows, top, axis=1))
    assert (theirs[1] != index.search(sample.queries, 10)[1]).any()  # the two rankings differ here
    codes = codec.encode(sample.base)
    mine = codec.search(sample.queries, codes.codes, codes.lists, k=10, nprobe=4)
    _assert_same_topk(mine, theirs, larger_is_better=True)


def test_ivf1_comes_back_without_the_stage(sample):
    codec = Codec("IVF1,PQ16x8", sample.dim, "l2", train_size=1000).train(sample.train)
    back = Codec.from_faiss(codec.to_faiss())
    assert back.spec == "PQ16x8"
    np.testing.assert_array_equal(back.encode(sample.base).codes, codec.encode(sample.base).codes)


# --------------------------------------------------------------------------- refusals


def _message_says_expected_and_found(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "expected" in text and "found" in text, text
    return text


@pytest.mark.parametrize("bad", ["no", "false", None, 0.0, 1])
def test_to_faiss_refuses_a_fast_scan_that_is_not_a_bool(sample, bad):
    # "no" chose the fast scan by its truthiness, None the plain index
    codec = Codec("PQ8x4", sample.dim, "l2", train_size=500).train(sample.train[:500])
    with pytest.raises(InvalidInput, match=r"fast_scan: expected True or False, found"):
        codec.to_faiss(fast_scan=bad)


def test_to_faiss_refuses_rb(sample):
    codec = Codec("RB1", sample.dim, "cosine", train_size=500).train(sample.train[:500])
    with pytest.raises(CodecSpecError) as exc:
        codec.to_faiss()
    text = str(exc.value)
    assert "RB" in text and "RaBitQ" in text and "expected" in text


def test_to_faiss_refuses_pq_width_not_divisible(clustered):
    codec = Codec("PQ4x8", clustered.dim, "l2").train(clustered.train)  # 33 dims, M = 4
    with pytest.raises(CodecSpecError) as exc:
        codec.to_faiss()
    text = _message_says_expected_and_found(exc)
    assert "33 % 4 = 1" in text


def test_to_faiss_needs_training(sample):
    with pytest.raises(NotTrained):
        Codec("PQ16x8", sample.dim, "l2").to_faiss()


def _ivf_pq_no_residual(d):
    return _factory_index(d, "IVF8,PQ8x4fs", L2)  # the factory's fast-scan IVF codes x, not x - c


def _ivf_fp16_residual(d):
    return faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(d), d, 8, faiss.ScalarQuantizer.QT_fp16, L2, True)


def _ivf_hnsw_coarse(d):
    return _factory_index(d, "IVF8_HNSW8,PQ8", L2)


def _ivf_coarse_metric(d):
    return faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, 8, 8, 8, IP)


def _norm_l2(d):
    return _factory_index(d, "L2norm,PQ8", L2)


def _pca(d):
    return _factory_index(d, "PCA16,PQ8", L2)


REFUSED = [
    ("IndexHNSWFlat", lambda d: faiss.IndexHNSWFlat(d, 8), "found IndexHNSWFlat"),
    ("IndexLSH", lambda d: faiss.IndexLSH(d, 64), "found IndexLSH"),
    ("IndexIVFPQR", lambda d: _factory_index(d, "IVF8,PQ8+8", L2), "found IndexIVFPQR"),
    ("PQ 6 bits", lambda d: faiss.IndexPQ(d, 8, 6), "expected nbits 4 or 8"),
    ("METRIC_L1", lambda d: faiss.IndexFlat(d, faiss.METRIC_L1), "found METRIC_L1"),
    ("SQ6", lambda d: faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_6bit), "found QT_6bit"),
    ("IVF PQ without residual", _ivf_pq_no_residual, "expected by_residual=True, found by_residual=False"),
    ("IVF fp16 on residuals", _ivf_fp16_residual, "expected by_residual=False, found by_residual=True"),
    ("IVF with an HNSW coarse quantizer", _ivf_hnsw_coarse, "(exact list assignment), found IndexHNSWFlat"),
    ("IVF coarse metric differs", _ivf_coarse_metric, "metric (ip), found l2"),
    ("L2norm with METRIC_L2", _norm_l2, "expected an index with METRIC_INNER_PRODUCT inside, found METRIC_L2"),
    ("PCA pre-transform", _pca, "found [PCAMatrix]"),
]
if hasattr(faiss, "IndexRaBitQ"):
    REFUSED.append(("IndexRaBitQ", lambda d: faiss.IndexRaBitQ(d, L2), "found IndexRaBitQ (RaBitQ codes differ"))


@pytest.mark.parametrize("make,needle", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_from_faiss_refuses_with_expected_and_found(clustered, make, needle):
    d = 32
    index = make(d)
    if not index.is_trained:
        index.train(np.ascontiguousarray(clustered.train[:, :d]))
    with pytest.raises(CodecSpecError) as exc:
        Codec.from_faiss(index)
    assert needle in _message_says_expected_and_found(exc)


def test_from_faiss_untrained_and_not_an_index():
    with pytest.raises(NotTrained, match="expected a trained index"):
        Codec.from_faiss(faiss.IndexPQ(32, 8, 8))
    with pytest.raises(InvalidInput, match="expected a faiss.Index, found str"):
        Codec.from_faiss("PQ8x8")


def test_from_faiss_unwraps_idmap(clustered):
    inner = faiss.IndexPQ(clustered.dim, 11, 8)
    index = faiss.IndexIDMap(inner)
    index.train(clustered.train)
    codec = Codec.from_faiss(index)
    np.testing.assert_array_equal(codec.encode(clustered.base).codes, inner.sa_encode(clustered.base))


# --------------------------------------------------------------------------- list numbers, dependency


def test_split_and_join_sa_codes(sample):
    assert [coarse_code_size(n) for n in (1, 2, 256, 257, 65536, 65537)] == [0, 1, 1, 2, 2, 3]
    index = _trained(sample, "IVF300,PQ8", L2)
    codec = Codec.from_faiss(index)
    sa = index.sa_encode(sample.base[:50])
    codes, lists = split_sa_codes(codec, sa)
    assert lists.max() > 255  # the second byte is used
    np.testing.assert_array_equal(join_sa_codes(codec, codes, lists), sa)
    with pytest.raises(DimensionMismatch, match=r"expected uint8 \(n, 10\).*found uint8 \(50, 8\)"):
        split_sa_codes(codec, sa[:, 2:])
    bad = sa.copy()
    bad[0, :2] = 255  # list 65535 of 300
    with pytest.raises(InvalidInput, match="expected list numbers below 300, found 65535"):
        split_sa_codes(codec, bad)
    with pytest.raises(InvalidInput, match=r"lists: expected 50 values in \[0, 300\)"):
        join_sa_codes(codec, codes, lists + 300)
    with pytest.raises(DimensionMismatch, match=r"expected uint8 \(n, 8\), found uint8 \(50, 7\)"):
        join_sa_codes(codec, codes[:, 1:], lists)


def test_missing_faiss_is_a_typed_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(MissingDependency, match="pip install"):
        Codec.from_faiss(object())
    with pytest.raises(MissingDependency):
        codec_from_faiss(object(), Codec)


def test_codecs_module_does_not_import_faiss():
    """codecs.py reaches faiss only through faiss_interop, imported inside the two methods."""
    tree = ast.parse((REPO / "engine" / "codecs.py").read_text())
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not {m for m in top if "faiss" in m}, top
    code = ("import sys, vecz; from vecz.engine.codecs import Codec; "
            "assert 'faiss' not in sys.modules and 'vecz.engine.faiss_interop' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# --------------------------------------------------------------------------- OPQ


def _share_equal_rows(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.all(a == b, axis=1).mean())


@pytest.mark.parametrize("spec,metric", [("OPQ16x8", "cosine"), ("OPQ16x8", "l2"), ("IVF16,OPQ32x4", "ip"),
                                         ("IVF16,OPQ16x8", "l2")])
def test_to_faiss_opq_codes_and_back(sample, vecz_codecs, spec, metric):
    """An OPQ codec becomes a LinearTransform (A = R^T) in front of faiss's PQ index, whose
    centroids are c R: the same lists and codes but for float rounding (x R - c R against
    vecz's (x - c) R); back in vecz the rotation and codebooks are the same bits, the
    centroids within rounding (c R R^T)."""
    codec = vecz_codecs(spec, metric)
    index = codec.to_faiss()
    gc.collect()
    x = sample.base
    codes, lists = split_sa_codes(codec, index.sa_encode(x))
    ours = codec.encode(x)
    assert _share_equal_rows(codes, ours.codes) >= 0.999 and (lists == ours.lists).mean() >= 0.999
    back = Codec.from_faiss(index)
    assert back.spec == codec.spec and back.metric == codec.metric
    for name in ("pq_rotation", "pq_books"):
        np.testing.assert_array_equal(back.state()[name], codec.state()[name])
    np.testing.assert_allclose(back.state()["centroids"], codec.state()["centroids"], atol=1e-5)
    assert _share_equal_rows(back.encode(x).codes, ours.codes) >= 0.999


@pytest.mark.parametrize("metric,inner,spec", [(L2, lambda d: faiss.IndexPQ(d, 16, 8, L2), "OPQ16x8"),
                                               (IP, lambda d: faiss.IndexPQFastScan(d, 32, 4, IP), "OPQ32x4"),
                                               (L2, lambda d: faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, 8, 16, 8),
                                                "IVF8,OPQ16x8")])
def test_from_faiss_opq_matrix(sample, metric, inner, spec):
    """A faiss-trained OPQMatrix in front of a PQ index comes in as OPQ: R = A^T, and the
    coarse centroids rotated back (c = c' R^T)."""
    d = sample.dim
    opq = faiss.OPQMatrix(d, 32 if spec.startswith("OPQ32") else 16)
    opq.niter = 4  # a few iterations: the test is about the mapping, not faiss's training
    core = inner(d)
    index = faiss.IndexPreTransform(opq, core)
    index.train(sample.train)
    codec = Codec.from_faiss(index)
    assert codec.spec == spec
    codes, lists = split_sa_codes(codec, index.sa_encode(sample.base))
    ours = codec.encode(sample.base)
    assert _share_equal_rows(codes, ours.codes) >= 0.999 and (lists == ours.lists).mean() >= 0.999


def test_from_faiss_refuses_a_rotation_in_front_of_sq(sample):
    d = sample.dim
    opq = faiss.OPQMatrix(d, 16)
    opq.niter = 2
    index = faiss.IndexPreTransform(opq, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit))
    index.train(sample.train)
    with pytest.raises(CodecSpecError, match=r"found \[OPQMatrix\]"):
        Codec.from_faiss(index)


@pytest.mark.parametrize("spec", ["MRL32,PQ4x8", "MRL32,OPQ4x8", "MRL16,PQ4x8"])
def test_mrl_keeping_every_dim_round_trips(spec):
    """MRL<dim> keeps every dim: its faiss keep-transform is an identity, which was read back
    as an OPQ rotation (MRL32,PQ4x8 came back OPQ4x8)."""
    x = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    codec = Codec(spec, 32, "l2").train(x)
    back = Codec.from_faiss(codec.to_faiss())
    assert back.spec == codec.spec
    np.testing.assert_array_equal(back.encode(x).codes, codec.encode(x).codes)


def test_join_sa_codes_refuses_list_numbers_that_are_not_integers():
    """Float list numbers were truncated (0.9, 1.5, 2.99 -> 0, 1, 2) and strings raised a raw
    ValueError."""
    x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    codec = Codec("IVF4,PQ4x8", 16, "l2").train(x)
    codes = codec.encode(x[:3])
    np.testing.assert_array_equal(join_sa_codes(codec, codes.codes, codes.lists.astype(np.uint8))[:, 0], codes.lists)
    for bad in (np.array([0.9, 1.5, 2.99]), np.array(["a", "b", "c"]), np.array([0, 1, 4], np.uint64)):
        with pytest.raises(InvalidInput, match="lists: expected integer list numbers in"):
            join_sa_codes(codec, codes.codes, bad)
