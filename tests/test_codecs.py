"""Tests of engine/codecs.py: spec grammar, configs, round trips, search semantics, recall
of every quantizer, typed errors and degenerate training data.

Everything runs on small synthetic data (a few hundred to two thousand vectors of width
8..65); the references are plain numpy written here, in float64.
"""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vecz.engine import errors
from vecz.engine.bench.metrics import recall_at
from vecz.engine.codecs import Codec, Codes, SearchResult, code_size, format_spec, parse_spec
from vecz.engine.errors import CodecSpecError, DimensionMismatch, InvalidInput, NotTrained, VeczError
from vecz.engine.quantizers import pq_spread_positions
from vecz.kernels import pq

METRICS = ("cosine", "ip", "l2")
QUANTIZERS = ("PQ8x8", "PQ16x4", "RB1", "RB2", "RB4", "SQ8", "SQ4", "F16")

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- numpy references


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def coded_space(x, metric: str, mrl: int | None = None) -> np.ndarray:
    """What the codec compares, in float64: cosine normalises, MRL truncates (+ renorm)."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x = _normalize(x)
    if mrl:
        x = x[:, :mrl]
        if metric != "l2":
            x = _normalize(x)
    return x


def exact_scores(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) float64: inner products, or squared L2 distances for l2."""
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return q @ x.T


def exact_topk(full: np.ndarray, metric: str, k: int, ids: np.ndarray | None = None):
    """Top-k of a full score matrix, ties by smaller id, padded like faiss."""
    nq, n = full.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    key = full if metric == "l2" else -full
    worst = np.inf if metric == "l2" else -np.inf
    out_s = np.full((nq, k), worst)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    m = min(k, n)
    for r in range(nq):
        order = np.lexsort((ids, key[r]))[:m]
        out_s[r, :m] = full[r, order]
        out_i[r, :m] = ids[order]
    return out_s, out_i


def worst_score(metric: str) -> float:
    return np.inf if metric == "l2" else -np.inf


def assert_result_shape(res, nq: int, k: int) -> None:
    assert isinstance(res, SearchResult)
    scores, ids = res
    assert scores.shape == (nq, k) and ids.shape == (nq, k)
    assert scores.dtype == np.float32
    assert ids.dtype == np.int64


def assert_ordered(res, metric: str) -> None:
    """Scores sorted best first (ties: smaller id first), empty slots last."""
    scores, ids = res
    s = scores.astype(np.float64)
    if metric == "l2":
        s = -s
    for row_s, row_i in zip(s, ids):
        real = row_i >= 0
        n_real = int(real.sum())
        assert real[:n_real].all(), f"empty slots must come last: {row_i}"
        assert (row_s[n_real:] == -np.inf).all()
        assert np.all(np.diff(row_s[:n_real]) <= 0), f"scores not sorted: {row_s}"
        tied = np.diff(row_s[:n_real]) == 0
        assert np.all(np.diff(row_i[:n_real])[tied] > 0), f"ties not broken by smaller id: {row_i}"
        assert len(set(row_i[:n_real].tolist())) == n_real, f"duplicate ids: {row_i}"


def assert_matches_exact(res, x: np.ndarray, q: np.ndarray, metric: str, k: int, ids=None) -> None:
    """`res` equals exact search of q over x (both already in coded space, float64)."""
    n = x.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    assert_result_shape(res, q.shape[0], k)
    assert_ordered(res, metric)
    scores, got = res
    full = exact_scores(x, q, metric)
    ref_s, ref_i = exact_topk(full, metric, k, ids)
    m = min(k, n)
    assert (got[:, m:] == -1).all()
    assert (scores[:, m:] == worst_score(metric)).all()
    tol = 1e-4 * (1.0 + np.abs(full).max())
    np.testing.assert_allclose(scores[:, :m], ref_s[:, :m], rtol=1e-4, atol=tol)
    pos = {int(i): j for j, i in enumerate(ids)}
    for r in range(q.shape[0]):
        for j in range(m):
            assert int(got[r, j]) in pos, f"unknown id {got[r, j]}"
            # the returned id really has the returned score (so a mismatch with the
            # reference ids can only be a near-tie)
            assert abs(full[r, pos[int(got[r, j])]] - scores[r, j]) <= tol
            if got[r, j] != ref_i[r, j]:
                assert abs(ref_s[r, j] - full[r, pos[int(got[r, j])]]) <= tol


# --------------------------------------------------------------------------- data


def gaussian_clusters(n: int, dim: int, *, nq: int = 0, n_clusters: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 3.0
    x = centres[rng.integers(0, n_clusters, n)] + rng.normal(size=(n, dim))
    q = centres[rng.integers(0, n_clusters, nq)] + rng.normal(size=(nq, dim))
    return x.astype(np.float32), q.astype(np.float32)


def trained(spec: str, dim: int, metric: str, x: np.ndarray, **kw) -> Codec:
    return Codec(spec, dim, metric, **kw).train(x)


def nonzero_rows(x: np.ndarray, metric: str) -> np.ndarray:
    """Cosine refuses all-zero rows (no direction): give generated ones a direction."""
    if metric == "cosine":
        x = x.copy()
        x[~x.any(axis=1), 0] = 1
    return x


# --------------------------------------------------------------------------- spec grammar


quantizer_specs = st.one_of(
    st.builds(lambda o, m, b: f"{o}PQ{m}x{b}", st.sampled_from(["", "O"]), st.integers(1, 256),
              st.sampled_from([4, 8])),
    st.integers(1, 8).map("RB{}".format),
    st.sampled_from(["SQ8", "SQ4", "F16", "Flat"]),
)
valid_specs = st.builds(
    lambda mrl, coarse, quant: ",".join(s for s in (mrl, coarse, quant) if s),
    st.none() | st.integers(1, 4096).map("MRL{}".format),
    st.none() | st.integers(1, 1 << 16).map("IVF{}".format),
    quantizer_specs,
)


@FAST
@given(valid_specs)
def test_spec_round_trips_canonically(spec):
    stages = parse_spec(spec)
    assert format_spec(stages) == spec
    assert parse_spec(format_spec(stages)) == stages
    assert len(stages) == spec.count(",") + 1
    # stages are frozen values: hashable and equal when parsed twice
    assert hash(stages) == hash(parse_spec(spec))


@FAST
@given(st.text(alphabet="MRLIVFOPQxSB0123456789,Flat6 ", max_size=24))
def test_parse_spec_fuzz_raises_spec_error_or_is_idempotent(text):
    try:
        stages = parse_spec(text)
    except CodecSpecError:
        return
    canonical = format_spec(stages)
    assert parse_spec(canonical) == stages
    assert format_spec(parse_spec(canonical)) == canonical


@pytest.mark.parametrize(
    "spec, bad",
    [
        ("XYZ", "XYZ"),
        ("PQ8x8,Foo", "Foo"),
        ("pq8x8", "pq8x8"),
        ("PQ8", "PQ8"),
        ("PQ8x8x8", "PQ8x8x8"),
        ("OPQ8", "OPQ8"),
        ("OOPQ8x8", "OOPQ8x8"),
        ("opq8x8", "opq8x8"),
        ("OPQ8x5", "OPQ8x5"),
        ("OPQ0x4", "OPQ0x4"),
        ("OPQ8,PQ8x8", "OPQ8"),  # faiss's spelling of a separate stage
        ("SQ6", "SQ6"),
        ("SQ16", "SQ16"),
        ("F32", "F32"),
        ("IVF", "IVF"),
        ("MRL-4,Flat", "MRL-4"),
        # quantizer not last / no quantizer
        ("PQ8x8,RB2", "PQ8x8"),
        ("Flat,IVF8", "IVF8"),
        ("IVF8", "IVF8"),
        ("MRL8,IVF8", "IVF8"),
        # order and repetition
        ("IVF8,MRL16,Flat", "MRL16"),
        ("IVF8,IVF8,Flat", "IVF8"),
        ("MRL8,MRL8,PQ4x8", "MRL8"),
        ("Flat,Flat", "Flat"),
        # out-of-range parameters
        ("PQ8x5", "PQ8x5"),
        ("PQ8x16", "PQ8x16"),
        ("PQ0x8", "PQ0x8"),
        ("RB0", "RB0"),
        ("RB9", "RB9"),
        ("RB10", "RB10"),
        ("IVF0,Flat", "IVF0"),
        ("MRL0,Flat", "MRL0"),
    ],
)
def test_invalid_spec_names_the_bad_stage(spec, bad):
    with pytest.raises(CodecSpecError) as info:
        parse_spec(spec)
    assert isinstance(info.value, ValueError) and isinstance(info.value, VeczError)
    assert f"'{bad}'" in str(info.value), str(info.value)
    # the same error from every entry point
    with pytest.raises(CodecSpecError):
        code_size(spec, 32)
    with pytest.raises(CodecSpecError):
        Codec(spec, 32)


@pytest.mark.parametrize("spec", ["", "   ", ",", "PQ8x8,", ",PQ8x8", "IVF8,,PQ8x8", "MRL8, ,Flat"])
def test_empty_stage_is_a_spec_error(spec):
    with pytest.raises(CodecSpecError, match="empty"):
        parse_spec(spec)


@pytest.mark.parametrize("spec", [None, 8, b"PQ8x8", ["PQ8x8"]])
def test_non_string_spec_is_a_spec_error(spec):
    with pytest.raises(CodecSpecError):
        parse_spec(spec)


def test_spec_with_huge_number_is_a_spec_error():
    # Python refuses int() of > 4300 digits with a bare ValueError; a spec must still fail
    # with CodecSpecError naming the stage.
    stage = "PQ" + "1" * 5000 + "x8"
    with pytest.raises(CodecSpecError):
        parse_spec(stage)


@pytest.mark.parametrize(
    "spec, dim, bad",
    [
        ("PQ64x8", 32, "PQ64x8"),
        ("PQ33x4", 32, "PQ33x4"),
        ("IVF8,PQ17x8", 16, "PQ17x8"),
        ("MRL16,PQ32x8", 32, "PQ32x8"),
        ("MRL64,Flat", 32, "MRL64"),
        ("MRL33,IVF4,RB2", 32, "MRL33"),
    ],
)
def test_spec_that_does_not_fit_the_dimension(spec, dim, bad):
    parse_spec(spec)  # the grammar is fine, the dimension is not
    with pytest.raises(CodecSpecError) as info:
        code_size(spec, dim)
    assert f"'{bad}'" in str(info.value), str(info.value)
    with pytest.raises(CodecSpecError):
        Codec(spec, dim, "l2")


# --------------------------------------------------------------------------- code size


@FAST
@given(valid_specs, st.integers(1, 300), st.sampled_from(METRICS))
def test_code_size_formula(spec, dim, metric):
    stages = parse_spec(spec)
    mrl = next((s.dim for s in stages if type(s).__name__ == "MRL"), None)
    width = dim if mrl is None else mrl
    quant = spec.split(",")[-1]
    m = re.fullmatch(r"O?PQ(\d+)x(\d+)", quant)
    if (mrl is not None and mrl > dim) or (m and int(m.group(1)) > width):
        with pytest.raises(CodecSpecError):
            code_size(spec, dim, metric)
        return
    size = code_size(spec, dim, metric)
    assert size == Codec(spec, dim, metric).code_size
    # IVF adds no bytes to the code (the list is stored apart)
    assert size == code_size(",".join(s for s in spec.split(",") if not s.startswith("IVF")), dim, metric)
    if m:
        M, b = int(m.group(1)), int(m.group(2))
        # under ip without MRL the code ends with the row's norm (float16)
        assert size == (M if b == 8 else (M + 1) // 2) + (2 if metric == "ip" and mrl is None else 0)
    elif quant == "SQ8":
        assert size == width
    elif quant == "SQ4":
        assert size == (width + 1) // 2
    elif quant == "F16":
        assert size == 2 * width
    elif quant == "Flat":
        assert size == 4 * width
    else:
        levels = int(quant[2:])
        per_level = (width + 7) // 8
        rb1 = code_size(spec.replace(quant, "RB1"), dim, metric)
        assert size - rb1 == (levels - 1) * per_level
        assert size >= levels * per_level


CODE_SIZE_CASES = [
    (13, "PQ13x8"), (13, "PQ5x4"), (13, "PQ1x8"), (13, "PQ3x4"), (13, "RB1"), (13, "RB3"), (13, "RB8"),
    (13, "SQ8"), (13, "SQ4"), (13, "F16"), (13, "Flat"), (13, "IVF4,PQ7x4"), (13, "MRL7,SQ4"),
    (13, "MRL9,IVF4,RB2"), (13, "MRL13,PQ13x4"), (13, "MRL1,Flat"),
    (65, "PQ65x4"), (65, "PQ16x8"), (65, "RB5"), (65, "SQ4"), (65, "F16"), (65, "MRL33,SQ4"),
    (65, "IVF8,RB2"), (65, "MRL64,IVF4,PQ8x4"), (65, "MRL63,RB7"), (65, "IVF2,SQ8"),
    (13, "OPQ5x4"), (13, "OPQ13x8"), (65, "MRL33,IVF4,OPQ8x8"), (65, "OPQ65x4"),
]


@pytest.mark.parametrize("dim, spec", CODE_SIZE_CASES)
def test_code_size_before_training_equals_code_width(dim, spec):
    metric = ("cosine", "ip", "l2")[len(spec) % 3]
    before = code_size(spec, dim, metric)
    x, _ = gaussian_clusters(300, dim, seed=dim)
    codec = trained(spec, dim, metric, x)
    assert codec.code_size == before
    codes = codec.encode(x[:50])
    assert isinstance(codes, Codes)
    assert codes.codes.dtype == np.uint8 and codes.codes.shape == (50, before)
    assert codes.lists.dtype == np.int64 and codes.lists.shape == (50,)
    assert codes.codes.flags.c_contiguous
    assert np.isfinite(codec.decode(*codes)).all()


# --------------------------------------------------------------------------- configs, state, repr


CONFIG_SPECS = ["Flat", "F16", "SQ8", "SQ4", "PQ8x8", "PQ8x4", "RB1", "RB3", "IVF4,PQ4x8", "IVF4,RB2",
                "MRL12,IVF4,SQ4", "MRL10,PQ5x4", "IVF4,F16", "OPQ8x8", "IVF4,OPQ5x4"]


@pytest.mark.parametrize("spec", CONFIG_SPECS)
@pytest.mark.parametrize("metric", METRICS)
def test_config_and_state_rebuild_an_identical_codec(spec, metric):
    dim = 16
    x, q = gaussian_clusters(400, dim, nq=8, seed=3)
    codec = trained(spec, dim, metric, x, seed=5, train_size=300, rotation="random")
    config = codec.to_config()
    text = json.dumps(config)  # JSON only
    config2 = json.loads(text)
    assert config2 == config
    state = codec.state()
    assert all(isinstance(k, str) for k in state)
    for name, arr in state.items():
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, name
    copy = Codec.from_config(config2, {k: np.array(v, copy=True) for k, v in state.items()})
    assert copy == codec and hash(copy) == hash(codec)
    assert copy.to_config() == config
    a, b = codec.encode(x), copy.encode(x)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.lists, b.lists)
    np.testing.assert_array_equal(codec.decode(*a), copy.decode(*b))
    ra = codec.index(*a).search(q, 7, nprobe=2)
    rb = copy.index(*b).search(q, 7, nprobe=2)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.scores, rb.scores)
    assert ra.stats == rb.stats
    # without state: same config, untrained
    bare = Codec.from_config(config2)
    # equality covers the trained state: an untrained twin equals only untrained twins
    assert bare != codec and bare == Codec.from_config(config2) and not bare.is_trained
    assert Codec.from_config(config2, codec.state()) == codec


def test_from_config_rejects_bad_configs_and_state():
    x, _ = gaussian_clusters(300, 16, seed=1)
    codec = trained("IVF4,PQ4x8", 16, "l2", x)
    config, state = codec.to_config(), codec.state()
    with pytest.raises(CodecSpecError):
        Codec.from_config({**config, "id": "numcodecs.zlib"})
    with pytest.raises(CodecSpecError):
        Codec.from_config({**config, "version": 999})
    with pytest.raises(CodecSpecError):
        Codec.from_config({**config, "code_size": config["code_size"] + 1})
    with pytest.raises(CodecSpecError):
        Codec.from_config({**config, "spec": "PQ4x5"})
    for metric in ("IP", "L2", "dot"):  # (an ip config with row_norms said row_norms was wrong)
        ip = Codec("PQ4x8", 16, "ip").to_config()
        with pytest.raises(CodecSpecError, match=f"field 'metric': expected one of .*found '{metric}'"):
            Codec.from_config({**ip, "metric": metric})
    with pytest.raises(CodecSpecError):
        Codec.from_config(config, {k: v for k, v in state.items() if k != "pq_books"})
    with pytest.raises(CodecSpecError):
        Codec.from_config(config, {**state, "centroids": state["centroids"][:2]})
    # the optional cell errors (trained from 32 rows a cell on): may be absent, never
    # mis-shaped, non-finite or negative
    x4, _ = gaussian_clusters(600, 16, seed=2)
    codec4 = trained("IVF4,PQ4x4", 16, "l2", x4)
    config, state = codec4.to_config(), codec4.state()
    assert state["pq_cell_err"].shape == (4, 16) and "pq_cell_err" not in codec.state()  # 300 rows: none
    assert Codec.from_config(config, {k: v for k, v in state.items() if k != "pq_cell_err"}).state().keys() == \
        codec.state().keys()
    with pytest.raises(CodecSpecError, match=r"'pq_cell_err': expected shape \(4, 16\), found \(4, 8\)"):
        Codec.from_config(config, {**state, "pq_cell_err": state["pq_cell_err"][:, :8]})
    with pytest.raises(CodecSpecError, match="'pq_cell_err': expected finite values"):
        Codec.from_config(config, {**state, "pq_cell_err": np.full((4, 16), np.nan, dtype=np.float32)})
    with pytest.raises(CodecSpecError, match=r"'pq_cell_err': expected values >= 0, found -1"):
        Codec.from_config(config, {**state, "pq_cell_err": np.full((4, 16), -1.0, dtype=np.float32)})
    with pytest.raises(CodecSpecError):
        Codec.from_config("IVF4,PQ4x8")  # type: ignore[arg-type]


@pytest.mark.parametrize("spec,name,kw", [("RB1", "rb_rotation", {}), ("RB2", "rb_rotation", {"rotation": "random"}),
                                          ("MRL8,RB1", "rb_rotation", {}), ("OPQ4x8", "pq_rotation", {}),
                                          ("IVF4,OPQ4x4", "pq_rotation", {})])
def test_from_config_refuses_a_rotation_that_is_not_orthogonal(spec, name, kw):
    # an all-zero rotation loaded and scored every row alike; training never makes one
    x, _ = gaussian_clusters(600, 16, seed=3)
    codec = trained(spec, 16, "cosine", x, **kw)
    config, state = codec.to_config(), codec.state()
    rot = state[name]
    assert Codec.from_config(config, state) == codec  # a trained one loads (to float32 rounding)
    q = np.linalg.qr(np.random.default_rng(1).standard_normal(rot.shape))[0]
    assert Codec.from_config(config, {**state, name: q}).is_trained  # any orthogonal matrix is one
    damaged = {"all zeros": np.zeros_like(rot), "scaled": rot * 1.01,
               "a row zeroed": np.vstack([rot[:-1], 0 * rot[-1:]]),
               "two rows the same": np.vstack([rot[:-1], rot[:1]])}
    for what, bad in damaged.items():
        with pytest.raises(CodecSpecError, match=f"{name!r}: expected an orthogonal rotation"):
            Codec.from_config(config, {**state, name: bad})
            pytest.fail(what)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spec="IVF8,PQ4x8", dim=16, metric="cosine"),
        dict(spec=" MRL8 , SQ4", dim=16, metric="l2"),
        dict(spec="RB2", dim=16, metric="ip", seed=3, train_size=1000, rotation="random"),
    ],
)
def test_repr_reads_like_the_constructor(kwargs):
    codec = Codec(**kwargs)
    text = repr(codec)
    assert text.startswith(f"Codec({format_spec(parse_spec(kwargs['spec']))!r}")
    assert f"dim={kwargs['dim']}" in text and f"metric={kwargs['metric']!r}" in text
    rebuilt = eval(text, {"Codec": Codec})
    assert rebuilt == codec
    assert rebuilt.to_config() == codec.to_config()


@pytest.mark.parametrize("spec", ["Flat", "IVF4,PQ4x8", "RB2", "SQ8"])
def test_untrained_codec_raises_not_trained(spec):
    codec = Codec(spec, 16, "l2")
    assert not codec.is_trained
    x = np.ones((3, 16), dtype=np.float32)
    size = codec.code_size
    with pytest.raises(NotTrained):
        codec.encode(x)
    with pytest.raises(NotTrained):
        codec.decode(np.zeros((3, size), np.uint8), np.zeros(3, np.int64))
    with pytest.raises(NotTrained):
        codec.index(np.zeros((3, size), np.uint8), np.zeros(3, np.int64)).search(x, 2)
    with pytest.raises(NotTrained):
        codec.search(x, np.zeros((3, size), np.uint8), np.zeros(3, np.int64), k=2)
    with pytest.raises(NotTrained):
        codec.state()
    for bad in (x, np.ones((3, 15), np.float32), np.full((3, 16), np.nan, np.float32)):
        with pytest.raises(NotTrained):  # before the queries are judged, as encode does
            codec.plan(bad)
    with pytest.raises(RuntimeError):  # NotTrained refines RuntimeError
        codec.encode(x)
    assert codec.train(np.random.default_rng(0).normal(size=(50, 16))) is codec
    assert codec.is_trained


# --------------------------------------------------------------------------- round trips


finite_rows = st.tuples(st.integers(1, 40), st.integers(1, 24)).flatmap(
    lambda shape: hnp.arrays(
        np.float32, shape,
        # hundredths in [-1e4, 1e4]: no underflow when squared, exact in float16 range
        elements=st.integers(-1_000_000, 1_000_000).map(lambda i: float(np.float32(i / 100))),
    )
)


@FAST
@given(finite_rows, st.sampled_from(METRICS), st.booleans())
def test_flat_decode_is_exact(x, metric, with_ivf):
    x = nonzero_rows(x, metric)
    spec = "IVF2,Flat" if with_ivf else "Flat"
    codec = trained(spec, x.shape[1], metric, x)
    dec = codec.decode(*codec.encode(x))
    assert dec.dtype == np.float32 and dec.shape == x.shape
    if metric == "cosine":
        np.testing.assert_allclose(dec, _normalize(x.astype(np.float64)), rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(dec, x)


@FAST
@given(finite_rows, st.sampled_from(METRICS), st.booleans())
def test_f16_decode_within_half_precision_rounding(x, metric, with_ivf):
    x = nonzero_rows(x, metric)
    spec = "IVF2,F16" if with_ivf else "F16"
    codec = trained(spec, x.shape[1], metric, x)
    codes = codec.encode(x)
    assert codes.codes.shape[1] == 2 * x.shape[1]
    dec = codec.decode(*codes)
    if metric == "cosine":
        ref = _normalize(x.astype(np.float64))
        assert np.all(np.abs(dec - ref) <= np.abs(ref) * 2.0**-10 + 2.0**-24)
    else:
        np.testing.assert_array_equal(dec, x.astype(np.float16).astype(np.float32))


def test_f16_out_of_half_range_values_are_rejected_or_kept_finite():
    # float16 tops out at 65504: a finite vector must not silently become inf in the codes
    # (the l2 scan then drops it from every result).
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32) * 1e5
    codec = trained("F16", 8, "l2", x)
    try:
        codes = codec.encode(x)
    except InvalidInput:
        return
    assert np.isfinite(codec.decode(*codes)).all()
    _, ids = codec.index(*codes).search(x[:3], 20)
    assert (ids >= 0).all(), "every vector must be findable"


@pytest.mark.parametrize("spec", ["SQ8", "SQ4", "IVF4,SQ8", "MRL12,SQ8", "MRL11,IVF3,SQ4"])
@pytest.mark.parametrize("metric", METRICS)
def test_sq_error_is_at_most_half_a_step(spec, metric):
    dim = 16
    x, _ = gaussian_clusters(500, dim, seed=11)
    x[:, 5] = 0.0  # a zero dimension
    codec = trained(spec, dim, metric, x)
    state = codec.state()
    levels = 255 if spec.endswith("SQ8") else 15
    half_step = state["sq_vdiff"].astype(np.float64) / levels / 2
    mrl = int(spec[3:spec.index(",")]) if spec.startswith("MRL") else None
    ref = coded_space(x, metric, mrl)
    dec = codec.decode(*codec.encode(x))
    err = np.abs(dec - ref)
    assert np.all(err <= half_step[None, :] + 1e-5 * (1 + np.abs(ref))), err.max(axis=0) / half_step


@pytest.mark.parametrize("spec", ["PQ4x8", "PQ4x4", "PQ5x8", "IVF4,PQ3x4", "MRL11,PQ4x8"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("spread", [True, False])
def test_pq_decodes_its_own_centroids_exactly(spec, metric, spread):
    dim = 13  # not a multiple of M: sub-spaces are zero-padded (spread: each its own pad; else the last)
    x, _ = gaussian_clusters(600, dim, seed=4)
    # the plain codes (under ip they would end with the row's norm, test_pq_row_norms)
    codec = trained(spec, dim, metric, x, row_norms=False, pq_spread=spread)
    assert codec.pq_spread == spread
    state = codec.state()
    books = state["pq_books"]
    m, ksub, dsub = books.shape
    width = codec.width
    rng = np.random.default_rng(0)
    chosen = rng.integers(0, ksub, size=(40, m))
    lists = rng.integers(0, codec.nlist, size=40)
    dims = pq_spread_positions(width, m) if spread else np.arange(width)  # where the coded dims sit
    recon = books[np.arange(m)[None, :], chosen].reshape(40, m * dsub)[:, dims]
    vectors = (recon + state["centroids"][lists]).astype(np.float32)
    full = np.zeros((40, dim), dtype=np.float32)
    full[:, :width] = vectors
    tol = 1e-5 * (1 + np.abs(vectors).max())
    # hand-made codes decode to the centroid sums
    sub = chosen.astype(np.uint8)
    made = sub if codec.quantizer.nbits == 8 else pq.pq4_pack(sub)
    np.testing.assert_allclose(codec.decode(made, lists), vectors, rtol=0, atol=tol)
    if metric == "ip" and codec.mrl is not None:
        return  # MRL renormalises ip vectors: a centroid sum is not a fixed point of encode
    # and encoding those vectors finds the same codes again (when they land in their list)
    keep = codec.assign(full) == lists
    assert keep.sum() >= 5
    codes = codec.encode(full[keep])
    np.testing.assert_allclose(codec.decode(*codes), vectors[keep], rtol=0, atol=tol)
    np.testing.assert_array_equal(codes.codes, made[keep])


# --------------------------------------------------------------------------- search semantics


@FAST
@given(
    n=st.integers(1, 80),
    dim=st.integers(1, 24),
    nq=st.integers(1, 4),
    extra_k=st.integers(-10, 6),
    metric=st.sampled_from(METRICS),
    seed=st.integers(0, 2**32 - 1),
    discrete=st.booleans(),
)
def test_flat_search_equals_exact_search(n, dim, nq, extra_k, metric, seed, discrete):
    rng = np.random.default_rng(seed)
    if discrete:  # small integer values: many exact ties
        x = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
        q = rng.integers(-2, 3, size=(nq, dim)).astype(np.float32)
        x, q = nonzero_rows(x, metric), nonzero_rows(q, metric)
    else:
        x = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.1, 10, size=(n, 1)).astype(np.float32)
        q = rng.normal(size=(nq, dim)).astype(np.float32)
    k = max(1, n + extra_k)
    codec = trained("Flat", dim, metric, x)
    res = codec.index(*codec.encode(x)).search(q, k)
    assert_matches_exact(res, coded_space(x, metric), coded_space(q, metric), metric, k)
    assert res.stats.candidates == n * nq
    if discrete and metric != "cosine":
        # integer data: scores are exact, so ids must equal the reference exactly (ties by id)
        _, ref_i = exact_topk(exact_scores(coded_space(x, metric), coded_space(q, metric), metric), metric, k)
        np.testing.assert_array_equal(res.ids, ref_i)


@pytest.mark.parametrize("metric", METRICS)
def test_search_result_unpacks_like_faiss(metric):
    x, q = gaussian_clusters(100, 8, nq=3, seed=2)
    codec = trained("Flat", 8, metric, x)
    res = codec.search(q, *codec.encode(x), k=4)
    D, I = res
    assert D is res.scores and I is res.ids
    assert D.shape == I.shape == (3, 4)
    assert res.stats.candidates == 300 and res.stats.lists_probed == 3
    if metric == "l2":
        assert np.all(np.diff(D, axis=1) >= 0) and np.all(D >= 0)
    else:
        assert np.all(np.diff(D, axis=1) <= 0)


@pytest.mark.parametrize("spec", ["Flat", "IVF4,Flat", "SQ8", "PQ4x8", "PQ4x4", "RB2", "F16", "OPQ4x8", "OPQ4x4"])
@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_n_pads_with_minus_one_and_worst_score(spec, metric):
    x, q = gaussian_clusters(30, 8, nq=3, seed=7)
    codec = trained(spec, 8, metric, x)
    index = codec.index(*codec.encode(x))
    assert len(index) == 30
    nprobe = codec.nlist
    scores, ids = index.search(q, 45, nprobe=nprobe)
    assert scores.shape == (3, 45)
    assert (ids[:, :30] >= 0).all()
    assert (ids[:, 30:] == -1).all()
    assert (scores[:, 30:] == worst_score(metric)).all()
    assert np.isfinite(scores[:, :30]).all()
    for row in ids:
        assert sorted(row[:30].tolist()) == list(range(30))
    # sdc pads the same way
    if spec.startswith("RB"):
        s2, i2 = index.search(q, 45, sdc=True)
        assert (i2[:, 30:] == -1).all() and (s2[:, 30:] == worst_score(metric)).all()


@pytest.mark.parametrize("spec", ["Flat", "F16", "SQ8", "SQ4", "PQ2x8", "PQ2x4", "RB1", "RB4", "IVF2,PQ2x8", "OPQ2x8",
                                  "IVF2,OPQ2x4"])
@pytest.mark.parametrize("metric", METRICS)
def test_one_vector(spec, metric):
    x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
    codec = trained(spec, 4, metric, x)
    codes = codec.encode(x)
    assert np.isfinite(codec.decode(*codes)).all()
    scores, ids = codec.index(*codes).search(np.array([[1.0, 0.0, 1.0, 0.0]], np.float32), 3, nprobe=2)
    assert ids.tolist() == [[0, -1, -1]]
    assert np.isfinite(scores[0, 0]) and (scores[0, 1:] == worst_score(metric)).all()


def test_empty_index_and_empty_queries():
    x, q = gaussian_clusters(50, 8, nq=2, seed=0)
    for metric in METRICS:
        codec = trained("IVF2,PQ2x8", 8, metric, x)
        codes = codec.encode(x[:0])
        assert codes.codes.shape == (0, codec.code_size)
        scores, ids = codec.index(*codes).search(q, 3, nprobe=2)
        assert (ids == -1).all() and (scores == worst_score(metric)).all()
        res = codec.index(*codec.encode(x)).search(q[:0], 3)
        assert res.scores.shape == (0, 3) and res.ids.shape == (0, 3)
        assert res.scores.dtype == np.float32 and res.ids.dtype == np.int64


@pytest.mark.parametrize("spec", ["Flat", "F16", "SQ8", "SQ4", "PQ4x8", "PQ4x4", "RB1", "RB2", "IVF4,PQ4x8",
                                  "IVF4,RB2", "MRL6,SQ8"])
@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_vectors_tie_by_smaller_id(spec, metric):
    rng = np.random.default_rng(12)
    dim = 8
    base = rng.normal(size=(60, dim)).astype(np.float32)
    dup = rng.normal(size=dim).astype(np.float32) * 4  # large norm: top-1 for ip as well
    x = base.copy()
    dup_rows = np.array([3, 17, 18, 40, 59])
    x[dup_rows] = dup
    codec = trained(spec, dim, metric, x)
    codes = codec.encode(x)
    # identical vectors, identical codes
    assert (codes.codes[dup_rows] == codes.codes[dup_rows[0]]).all()
    custom = np.arange(1000, 940, -1, dtype=np.int64)  # descending ids: row order != id order
    for ids in (None, custom):
        res = codec.index(*codes, ids=ids).search(np.stack([dup, -dup]), 60, nprobe=codec.nlist)
        assert_ordered(res, metric)
        want = dup_rows if ids is None else custom[dup_rows]
        scores, got = res
        # wherever the duplicates land, they are adjacent, equal-scored and in id order
        pos = np.flatnonzero(np.isin(got[0], want))
        assert len(pos) == len(want)
        assert np.all(np.diff(pos) == 1), got[0]
        assert got[0, pos].tolist() == sorted(want.tolist())
        assert len(set(scores[0, pos].tolist())) == 1
        if spec in ("Flat", "F16"):
            assert pos[0] == 0  # the query itself ranks first


@pytest.mark.parametrize("metric", METRICS)
def test_input_dtypes_and_layouts_are_accepted(metric):
    dim = 12
    x, q = gaussian_clusters(200, dim, nq=5, seed=9)
    x16, q16 = x.astype(np.float16), q.astype(np.float16)
    for spec in ("Flat", "SQ8", "PQ4x8", "IVF4,RB2"):
        codec = trained(spec, dim, metric, x)
        ref_codes = codec.encode(x)
        index = codec.index(*ref_codes)
        ref = index.search(q, 5, nprobe=2)
        wide = np.zeros((200, 2 * dim), dtype=np.float32)
        wide[:, ::2] = x
        variants = {
            "float64": x.astype(np.float64),
            "fortran": np.asfortranarray(x),
            "strided": wide[:, ::2],
            "list": x.tolist(),
        }
        for name, v in variants.items():
            got = codec.encode(v)
            np.testing.assert_array_equal(got.codes, ref_codes.codes, err_msg=name)
            np.testing.assert_array_equal(got.lists, ref_codes.lists, err_msg=name)
        for name, qv in {"float64": q.astype(np.float64), "fortran": np.asfortranarray(q),
                         "strided": np.repeat(q, 2, axis=1)[:, ::2]}.items():
            got = index.search(qv, 5, nprobe=2)
            np.testing.assert_array_equal(got.ids, ref.ids, err_msg=name)
            np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-6, err_msg=name)
        back = codec.encode(x[::-1])  # negative strides
        np.testing.assert_array_equal(back.codes, ref_codes.codes[::-1])
        # float16 in: same as its float32 value
        np.testing.assert_array_equal(codec.encode(x16).codes, codec.encode(x16.astype(np.float32)).codes)
        got = index.search(q16, 5, nprobe=2)
        want = index.search(q16.astype(np.float32), 5, nprobe=2)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
        # a single 1-D query is one row
        one = index.search(q[0], 5, nprobe=2)
        np.testing.assert_array_equal(one.ids, ref.ids[:1])
    # training accepts the same variants
    for v in (x.astype(np.float64), np.asfortranarray(x), x16):
        c = trained("SQ8", dim, metric, v)
        np.testing.assert_array_equal(c.state()["sq_vdiff"], trained("SQ8", dim, metric,
                                      np.asarray(v, np.float32)).state()["sq_vdiff"])


@pytest.mark.parametrize("spec", ["Flat", "F16", "SQ4", "PQ4x8", "PQ8x4", "IVF4,RB2", "MRL8,IVF4,SQ8"])
def test_read_only_and_memory_mapped_inputs(spec, tmp_path):
    # STYLE.md: read-only arrays are accepted so memory-mapped vectors and codes work
    x, q = gaussian_clusters(300, 16, nq=4, seed=13)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for metric in METRICS:
        codec = trained(spec, 16, metric, xm)
        ref = trained(spec, 16, metric, x)
        codes = codec.encode(xm)
        np.testing.assert_array_equal(codes.codes, ref.encode(x).codes)
        np.save(tmp_path / "codes.npy", codes.codes)
        cm = np.load(tmp_path / "codes.npy", mmap_mode="r")
        lists = codes.lists.copy()
        lists.setflags(write=False)
        qr = q.copy()
        qr.setflags(write=False)
        np.testing.assert_array_equal(codec.decode(cm, lists), ref.decode(*codes))
        got = codec.index(cm, lists).search(qr, 5, nprobe=2)
        want = ref.index(*codes).search(q, 5, nprobe=2)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)


@pytest.mark.parametrize("metric", METRICS)
def test_ivf_with_all_lists_probed_equals_flat(metric):
    dim = 16
    x, q = gaussian_clusters(600, dim, nq=20, seed=21)
    flat = trained("Flat", dim, metric, x)
    ivf = trained("IVF8,Flat", dim, metric, x)
    ref = flat.index(*flat.encode(x)).search(q, 10)
    codes = ivf.encode(x)
    assert len(np.unique(codes.lists)) > 1
    index = ivf.index(*codes)
    for nprobe in (8, 50):  # nprobe is capped at nlist
        res = index.search(q, 10, nprobe=nprobe)
        np.testing.assert_array_equal(res.ids, ref.ids)
        np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-5, atol=1e-5)
        assert res.stats.candidates == 20 * 600
        assert res.stats.lists_probed == 20 * 8
    assert_matches_exact(ref, coded_space(x, metric), coded_space(q, metric), metric, 10)


@pytest.mark.parametrize("metric", METRICS)
def test_ivf_probes_only_the_nearest_lists(metric):
    dim = 16
    x, q = gaussian_clusters(800, dim, nq=12, seed=22)
    codec = trained("IVF8,Flat", dim, metric, x)
    codes = codec.encode(x)
    sizes = np.bincount(codes.lists, minlength=8)
    index = codec.index(*codes)
    xs, qs = coded_space(x, metric), coded_space(q, metric)
    centroids = codec.state()["centroids"].astype(np.float64)
    sim = -exact_scores(centroids, qs, "l2") if metric == "l2" else qs @ centroids.T
    nearest = np.argsort(-sim, axis=1, kind="stable")
    # nprobe=1: exactly the nearest list, scored exactly
    probed = codec.assign(q)
    np.testing.assert_array_equal(probed, nearest[:, 0])
    res = index.search(q, 10, nprobe=1)
    assert res.stats.candidates == int(sizes[probed].sum())
    assert res.stats.lists_probed == 12
    for r in range(12):
        members = np.flatnonzero(codes.lists == probed[r])
        one = SearchResult(res.scores[r : r + 1], res.ids[r : r + 1])
        assert_matches_exact(one, xs[members], qs[r : r + 1], metric, 10, ids=members)
    # nprobe=3: the three nearest lists
    res3 = index.search(q, 10, nprobe=3)
    assert res3.stats.candidates == int(sizes[nearest[:, :3]].sum())
    assert res3.stats.lists_probed == 36
    for r in range(12):
        assert np.isin(codes.lists[res3.ids[r][res3.ids[r] >= 0]], nearest[r, :3]).all()
    # more probes never lose: the best score is at least as good
    better = res3.scores[:, 0] >= res.scores[:, 0] if metric != "l2" else res3.scores[:, 0] <= res.scores[:, 0]
    assert better.all()


@pytest.mark.parametrize("spec", ["Flat", "IVF4,Flat", "SQ8", "PQ4x4", "IVF4,RB2"])
@pytest.mark.parametrize("metric", METRICS)
def test_custom_ids_come_back(spec, metric):
    dim = 8
    x, q = gaussian_clusters(300, dim, nq=6, seed=5)
    codec = trained(spec, dim, metric, x)
    codes = codec.encode(x)
    custom = (np.random.default_rng(1).permutation(300) * 7 + 10**12).astype(np.int64)
    plain = codec.index(*codes).search(q, 8, nprobe=2)
    mine = codec.index(*codes, ids=custom).search(q, 8, nprobe=2)
    assert np.isin(mine.ids, custom).all()
    np.testing.assert_array_equal(mine.scores, plain.scores)
    for r in range(6):
        # ids with a score strictly better than the k-th (no tie at the boundary) agree
        sure = mine.scores[r] != mine.scores[r, -1]
        assert set(mine.ids[r][sure].tolist()) == set(custom[plain.ids[r][sure]].tolist())
    if spec.endswith("Flat"):
        np.testing.assert_array_equal(mine.ids, custom[plain.ids])
    # ids as a list are accepted
    listed = codec.index(*codes, ids=custom.tolist()).search(q, 8, nprobe=2)
    np.testing.assert_array_equal(listed.ids, mine.ids)


@pytest.mark.parametrize("spec", ["PQ4x4", "IVF4,PQ4x4", "RB2", "IVF4,RB2", "PQ4x8"])
@pytest.mark.parametrize("metric", METRICS)
def test_ids_beyond_the_reservoir_are_ranked_and_mapped_back(spec, metric):
    # the fast scans key ids into uint64 reservoir entries (ids <= RES_MAX_ID,
    # kernels/topk.py); an index with larger ids gives the kernels their ranks and maps the
    # results back. Ids in the same order give the same lists: scores bit for bit, ids
    # mapped, ties included, and mark_dead by the large ids. 300 queries reach the one-query,
    # grouped and list-major kernels.
    from vecz.kernels.topk import RES_MAX_ID
    dim = 8
    x, q = gaussian_clusters(300, dim, nq=300, seed=6)
    codec = trained(spec, dim, metric, x)
    codes = codec.encode(x)
    big = (RES_MAX_ID - 5 + np.arange(300) * 3).astype(np.int64)  # increasing: the same tie order
    small_index, big_index = codec.index(*codes), codec.index(*codes, ids=big)
    assert small_index._user_ids is None and big_index.ids.max() < 300
    for step in range(2):
        for k in (1, 10, 60):
            for queries in (q, q[:1]):
                plain = small_index.search(queries, k, nprobe=3)
                mine = big_index.search(queries, k, nprobe=3)
                np.testing.assert_array_equal(mine.scores.view(np.uint32), plain.scores.view(np.uint32))
                np.testing.assert_array_equal(mine.ids, np.where(plain.ids >= 0, big[np.maximum(plain.ids, 0)], -1))
        dead = np.arange(0, 300, 7)
        assert small_index.mark_dead(dead) == big_index.mark_dead(np.append(big[dead], [3, 2**62]))


@pytest.mark.parametrize("spec", ["PQ4x8", "IVF4,PQ4x8", "SQ8", "SQ4", "IVF4,SQ8", "MRL12,SQ4", "F16", "IVF4,F16"])
@pytest.mark.parametrize("metric", METRICS)
def test_asymmetric_scores_are_the_metric_to_the_reconstruction(spec, metric):
    # For PQ8, SQ and F16 the code-based score is exactly the metric between the float
    # query and the decoded vector: check scores and ranking against numpy.
    dim = 16
    x, q = gaussian_clusters(400, dim, nq=8, seed=31)
    codec = trained(spec, dim, metric, x)
    codes = codec.encode(x)
    dec = codec.decode(*codes).astype(np.float64)
    mrl = codec.mrl.dim if codec.mrl is not None else None
    res = codec.index(*codes).search(q, 10, nprobe=codec.nlist)
    if metric == "cosine" and "PQ" in spec and spec.endswith("x8"):
        # unit vectors' 8-bit PQ codes score the cosine to the reconstruction
        dec = dec / np.linalg.norm(dec, axis=1, keepdims=True)
    assert_matches_exact(res, dec, coded_space(q, metric, mrl), metric, 10)


@pytest.mark.parametrize("metric", METRICS)
def test_pq4_fast_scan_scores_approximate_the_reconstruction(metric):
    dim = 16
    x, q = gaussian_clusters(400, dim, nq=8, seed=32)
    codec = trained("IVF2,PQ8x4", dim, metric, x)
    codes = codec.encode(x)
    dec = codec.decode(*codes).astype(np.float64)
    if metric == "cosine":  # the cosine to the reconstruction, as the 8-bit scan
        dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    qs = coded_space(q, metric)
    full = exact_scores(dec, qs, metric)
    res = codec.index(*codes).search(q, 10, nprobe=2)
    assert_ordered(res, metric)
    spread = full.max() - full.min()
    pos = res.ids
    got_exact = np.take_along_axis(full, pos, axis=1)
    # 8-bit quantized tables: scores within a few percent of the score range
    assert np.abs(got_exact - res.scores).max() <= 0.05 * spread
    ref_s, _ = exact_topk(full, metric, 10)
    assert np.abs(ref_s - got_exact).max() <= 0.05 * spread


@pytest.mark.parametrize("spec", ["PQ8x4", "IVF3,PQ7x4", "IVF3,OPQ6x4", "MRL12,PQ5x4"])
def test_pq4_cosine_scales_the_code_score_by_the_reconstruction_norm(spec):
    # Under cosine the 4-bit scan scores a row by its code score (the plan's uint8 tables, as
    # `fs_scan` scores it) times the row's 1 / |x_hat| rounded to float16: exactly
    # float32(g * score), ranked by (score desc, id asc), whichever scan runs (one query at
    # a time here; groups and list-major: tests/test_fastscan.py). g is 1 / |x_hat| of the
    # reconstruction `decode` gives, within float16's rounding.
    from vecz.kernels import fastscan

    dim, n, k = 16, 400, 10
    x, q = gaussian_clusters(n, dim, nq=9, seed=33)
    codec = trained(spec, dim, "cosine", x)
    codes = codec.encode(x)
    index = codec.index(*codes)
    res = index.search(q, k, nprobe=codec.nlist)
    real = index.block_ids >= 0
    g = np.zeros(n, np.float32)
    assert index.pq_row_scale.dtype == np.uint16  # float16 bits
    g[index.block_ids[real]] = index.pq_row_scale.view(np.float16)[real]
    rec = codec.decode(*codes).astype(np.float64)
    np.testing.assert_allclose(g, 1 / np.linalg.norm(rec, axis=1), rtol=2.0**-10)
    plan = codec.plan(q, nprobe=codec.nlist)
    t = plan.tables
    raw_s, raw_i = fastscan.fs_scan_batch(t["qluts"], t["steps"], t["biases"], index.blocks, index.block_ids,
                                          index.block_offsets, plan.probes, plan.bias, n, np.full(len(q), -np.inf,
                                                                                                  np.float32))
    assert (raw_i >= 0).all()
    want = (g[raw_i] * raw_s).astype(np.float32)
    for r in range(len(q)):
        order = np.lexsort((raw_i[r], -want[r].astype(np.float64)))[:k]
        np.testing.assert_array_equal(res.ids[r], raw_i[r][order])
        np.testing.assert_array_equal(res.scores[r], want[r][order])


# --------------------------------------------------------------------------- recall


RECALL_DIM = 32
RECALL_THRESHOLDS = {
    # recall@10 at nprobe=4 of 8 lists; measured minimum over metrics and prefixes (seed
    # 2024) in brackets, minus a margin. Random is 10 / 1000 = 0.01.
    "PQ8x8": 0.35,  # [0.46]
    "PQ16x4": 0.22,  # [0.32]
    "RB1": 0.06,  # [0.12]
    "RB2": 0.30,  # [0.43]
    "RB4": 0.70,  # [0.80]
    "SQ8": 0.90,  # [0.96]
    "SQ4": 0.40,  # [0.52]
    "F16": 0.97,  # [0.997]
}
PREFIXES = ("", "IVF8,", "MRL24,", "MRL24,IVF8,")


@functools.lru_cache(maxsize=None)
def _recall_data():
    return gaussian_clusters(1000, RECALL_DIM, nq=100, n_clusters=16, seed=2024)


@functools.lru_cache(maxsize=None)
def _recall_index(spec: str, metric: str):
    x, _ = _recall_data()
    codec = trained(spec, RECALL_DIM, metric, x)
    return codec, codec.index(*codec.encode(x))


@functools.lru_cache(maxsize=None)
def _recall_truth(metric: str, mrl: int | None) -> np.ndarray:
    x, q = _recall_data()
    full = exact_scores(coded_space(x, metric, mrl), coded_space(q, metric, mrl), metric)
    return exact_topk(full, metric, 10)[1]


@functools.lru_cache(maxsize=None)
def _recall(spec: str, metric: str, sdc: bool) -> float:
    _, q = _recall_data()
    codec, index = _recall_index(spec, metric)
    truth = _recall_truth(metric, codec.mrl.dim if codec.mrl is not None else None)
    res = index.search(q, 10, nprobe=4, sdc=sdc)
    assert_result_shape(res, 100, 10)
    assert_ordered(res, metric)
    assert res.stats.lists_probed == 100 * min(4, codec.nlist)
    return recall_at(res.ids, truth, 10)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("quant", QUANTIZERS)
@pytest.mark.parametrize("metric", METRICS)
def test_recall_well_above_random(metric, quant, prefix):
    rec = _recall(prefix + quant, metric, False)
    assert rec >= RECALL_THRESHOLDS[quant], f"{prefix}{quant} {metric}: recall@10 {rec:.3f}"


@pytest.mark.parametrize("metric", METRICS)
def test_rb_symmetric_scoring_works_and_is_not_better_on_average(metric):
    asym, sym = [], []
    for levels in (1, 2, 4):
        for prefix in PREFIXES:
            spec = f"{prefix}RB{levels}"
            a, s = _recall(spec, metric, False), _recall(spec, metric, True)
            assert s >= RECALL_THRESHOLDS[f"RB{levels}"] * 0.8, f"{spec} {metric} sdc recall {s:.3f}"
            asym.append(a)
            sym.append(s)
    assert np.mean(sym) <= np.mean(asym) + 0.01, (np.mean(sym), np.mean(asym))


# measured minimum over metrics and dims 13/65 in brackets
ODD_DIM_THRESHOLDS = {"RB1": 0.12, "RB3": 0.60, "RB4": 0.72, "SQ4": 0.50, "SQ8": 0.90,  # [.24 .74 .85 .65 .96]
                      "IVF4,RB2": 0.35, "PQ5x8": 0.35}  # [.49 .48]


@pytest.mark.parametrize("spec", list(ODD_DIM_THRESHOLDS))
@pytest.mark.parametrize("dim", [13, 65])
@pytest.mark.parametrize("metric", METRICS)
def test_recall_on_odd_dimensions(metric, dim, spec):
    # widths that are not a multiple of 8 (RB bytes) or 2 (SQ4 nibbles) or M (PQ)
    x, q = gaussian_clusters(600, dim, nq=50, seed=dim)
    full = exact_scores(coded_space(x, metric), coded_space(q, metric), metric)
    _, truth = exact_topk(full, metric, 10)
    codec = trained(spec, dim, metric, x)
    res = codec.index(*codec.encode(x)).search(q, 10, nprobe=2)
    assert_ordered(res, metric)
    rec = recall_at(res.ids, truth, 10)
    assert rec >= ODD_DIM_THRESHOLDS[spec], f"{spec} dim {dim} {metric}: recall@10 {rec:.3f}"


# --------------------------------------------------------------------------- typed errors


@pytest.fixture(scope="module")
def small():
    x, q = gaussian_clusters(200, 8, nq=3, seed=8)
    codec = trained("IVF4,PQ4x8", 8, "l2", x)
    codes = codec.encode(x)
    return codec, codes, codec.index(*codes), x, q


def test_wrong_width_is_dimension_mismatch(small):
    codec, codes, index, x, q = small
    for call in (lambda: codec.encode(x[:, :7]), lambda: index.search(np.zeros((2, 9)), 3),
                 lambda: Codec("SQ8", 8).train(x[:, :5]), lambda: codec.assign(x[:, :3])):
        with pytest.raises(DimensionMismatch) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert "8" in str(info.value)
    with pytest.raises(DimensionMismatch, match="9"):
        index.search(np.zeros((2, 9)), 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_invalid_input(small, bad):
    codec, codes, index, x, q = small
    y = x.copy()
    y[7, 3] = bad
    with pytest.raises(InvalidInput, match="7"):
        codec.encode(y)
    with pytest.raises(InvalidInput):
        Codec("SQ8", 8, "l2").train(y)
    qq = q.copy()
    qq[0, 0] = bad
    with pytest.raises(InvalidInput):
        index.search(qq, 3)
    with pytest.raises(InvalidInput):  # also in float64 and float16 input
        codec.encode(y.astype(np.float64))
    with pytest.raises(InvalidInput):
        codec.encode(y.astype(np.float16))


def test_float64_values_overflowing_float32_are_invalid_input(small):
    codec, codes, index, x, q = small
    y = x.astype(np.float64)
    y[0, 0] = 1e300
    with pytest.raises(InvalidInput):
        codec.encode(y)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.complex64, np.complex128, object, bool, "U3"])
def test_non_float_dtypes_are_invalid_input(small, dtype):
    codec, codes, index, x, q = small
    y = np.ones((4, 8)).astype(dtype)
    with pytest.raises(InvalidInput):
        codec.encode(y)
    with pytest.raises(InvalidInput):
        index.search(y, 3)
    if np.dtype(dtype).kind not in "iu":  # training samples may be integers
        with pytest.raises(InvalidInput):
            Codec("SQ8", 8, "l2").train(y)


def test_bad_shapes_are_invalid_input(small):
    codec, codes, index, x, q = small
    with pytest.raises(InvalidInput):
        codec.encode(x[None])
    with pytest.raises(InvalidInput):
        index.search(np.float32(1.0), 3)
    with pytest.raises(InvalidInput):
        Codec("SQ8", 8).train(np.zeros((0, 8), np.float32))


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", None])
def test_bad_k_is_invalid_input(small, k):
    codec, codes, index, x, q = small
    with pytest.raises(InvalidInput):
        index.search(q, k)


@pytest.mark.parametrize("nprobe", [0, -3, 1.5])
def test_bad_nprobe_is_invalid_input(small, nprobe):
    codec, codes, index, x, q = small
    with pytest.raises(InvalidInput):
        index.search(q, 3, nprobe=nprobe)
    flat = trained("Flat", 8, "ip", x)
    with pytest.raises(InvalidInput):
        flat.index(*flat.encode(x)).search(q, 3, nprobe=nprobe)


def test_sdc_needs_an_rb_codec(small):
    codec, codes, index, x, q = small
    with pytest.raises(InvalidInput):
        index.search(q, 3, sdc=True)


def test_bad_codes_are_dimension_mismatch(small):
    codec, codes, index, x, q = small
    c, lists = codes
    bad_codes = [c.astype(np.int8), c.astype(np.float32), c[:, :-1], np.pad(c, ((0, 0), (0, 1))), c[0]]
    for bad in bad_codes:
        with pytest.raises(DimensionMismatch) as info:
            codec.decode(bad, lists[: len(bad)] if bad.ndim == 2 else lists[:1])
        assert str(codec.code_size) in str(info.value)
        with pytest.raises(DimensionMismatch):
            codec.index(bad, lists[: len(bad)] if bad.ndim == 2 else lists[:1])


def test_encode_result_goes_to_index_decode_and_search_as_it_is(small):
    # the Codes tuple encode returns, passed whole, is the codes and lists unpacked; lists given
    # beside it are refused; a ragged sequence is a DimensionMismatch, not numpy's ValueError
    codec, codes, index, x, q = small
    c, lists = codes
    got, want = codec.index(codes).search(q, 5, nprobe=2), index.search(q, 5, nprobe=2)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(codec.decode(codes), codec.decode(c, lists))
    np.testing.assert_array_equal(codec.search(q, codes, k=5, nprobe=2).ids, want.ids)
    with pytest.raises(InvalidInput, match="given twice"):
        codec.index(codes, lists)
    with pytest.raises(DimensionMismatch, match="no array"):
        codec.index((c, lists[:3]))


@pytest.mark.parametrize("spec", ["IVF4,PQ4x8", "OPQ4x8"])
def test_cosine_pq8_index_counts_the_byte_a_row_of_its_norm_filter(spec):
    # the first cosine scan derives one byte a row (kernels/pq.py `pq_inv_norm_bounds`),
    # held by the index and counted in nbytes (the store's ram figures); OPQ's rotated
    # centroids (float32 (nlist, width)), the books' transposed copy that the tables are
    # made from (`pq.pq_lut_books`, the size of the books) and the float64 norm tables of
    # each list (`pq.pq_list_sub_norms`, nlist x M x ksub) are the codec's, made once for
    # every index
    x, q = gaussian_clusters(300, 8, nq=3, seed=4)
    codec = trained(spec, 8, "cosine", x)
    index = codec.index(codec.encode(x))
    before = index.nbytes
    index.search(q, 3, nprobe=2)
    assert index.nbytes == before + len(x) + 2 * pq.INV_BUCKETS * 4
    books = codec.state()["pq_books"].nbytes
    sub_norms = codec.nlist * 4 * 256 * 8
    assert codec.derived_nbytes() == (4 * codec.nlist * 8 if "OPQ" in spec else 0) + books + sub_norms


@pytest.mark.parametrize("spec,sdc", [("IVF8,PQ6x8", False), ("IVF8,OPQ4x8", False), ("IVF8,PQ6x4", False),
                                      ("IVF8,OPQ4x4", False), ("MRL10,IVF8,PQ5x8", False), ("IVF8,RB1", False),
                                      ("IVF8,RB2", False), ("IVF8,RB2", True), ("MRL10,IVF8,RB1", False)])
def test_l2_ivf_tables_from_list_terms_match_tables_from_scratch(spec, sdc, monkeypatch):
    # l2 on residuals: the plan's tables from one table a query and what the codec derives per
    # list once (PQ.probe_tables: 8-bit PQ's per-list terms), or for 4-bit PQ and RB one
    # table a query and each row's own-list term in the layout (own_list_tables), give the
    # search of the tables made from q - c per probe: the same ids and (float32 rounding)
    # scores for 8-bit PQ; 4-bit PQ and RB within the quantization of their tables. RB's
    # symmetric scoring encodes each probe's residual either way (its layout's |r|^2 made
    # back from the own-list terms, `RB._sdc_factors`). Past LIST_TERMS_BUDGET (and
    # for 4-bit PQ without its own-list terms) the tables come from scratch; what was
    # derived is not counted once the state changes.
    from vecz.engine import quantizers
    x, q = gaussian_clusters(600, 12, nq=20, seed=3)
    x *= np.random.default_rng(1).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32)
    codec = trained(spec, 12, "l2", x)
    index = codec.index(codec.encode(x))
    plan = codec.plan(q, nprobe=3, sdc=sdc)
    got = index.search(q, 10, nprobe=3, sdc=sdc)
    own = spec.endswith("PQ6x4") or spec.endswith("PQ4x4") or ("RB" in spec and not sdc)
    assert ("qluts" in plan.tables and plan.tables["qluts"].shape[1] == 1 and "q_sq" in plan.tables) == own
    assert codec.derived_nbytes() > 0  # the centroids' mean (and the rotated centroids)
    # a plan holds what its scan needs: it scans the same after the codec is trained again
    # (on other rows: other centroids and books) or loaded
    codec.train(x[::-1] * 1.5)
    assert codec.derived_nbytes() == 0 and codec._derived == (None, {})  # the old arrays freed
    _assert_search_equal(index.scan(plan, 10)[:2], got)
    index.search(q, 10, nprobe=3, sdc=sdc)
    codec._load_state(trained(spec, 12, "l2", x).state())  # loading a state drops them too
    assert codec.derived_nbytes() == 0 and codec._derived == (None, {})
    _assert_search_equal(index.scan(plan, 10)[:2], got)
    monkeypatch.setattr(quantizers, "LIST_TERMS_BUDGET", 0)
    monkeypatch.setattr(quantizers.PQ, "own_list_l2", property(lambda self: False))
    codec = trained(spec, 12, "l2", x)
    want = codec.index(codec.encode(x)).search(q, 10, nprobe=3, sdc=sdc)
    if own:  # tables from q - c per probe
        assert codec.plan(q, nprobe=3, sdc=sdc).tables["qluts"].shape[1] == 3
    assert codec.derived_nbytes() == 0
    if spec.endswith("x8"):
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    elif own:
        # other uint8 tables (one of q - m a query against one of q - c a probe): other
        # near-ties, so the same rows but not in the same places; each side's distances are
        # the exact distances to the decoded rows within the same order of error (measured:
        # own / per-probe mean error 0.99-1.33)
        assert np.mean([len(set(a) & set(b)) for a, b in zip(got.ids, want.ids)]) > 0.9 * 10
        # PQ scores the decoded rows; RB estimates the rows themselves (with their |r|^2)
        decoded = x if "RB" in spec else codec.decode(codec.encode(x))

        def error(res):
            return np.mean(np.abs(res.scores - ((decoded[res.ids] - q[:, None]) ** 2).sum(axis=2)))

        assert error(got) <= 2 * error(want) + 1e-6
    else:
        assert np.mean(got.ids == want.ids) > 0.95
        np.testing.assert_allclose(got.scores, want.scores, rtol=0.02, atol=0.02 * np.abs(want.scores).max())


@pytest.mark.parametrize("spec,offset", [("IVF8,RB1", 0.0), ("IVF8,RB2", 0.0), ("IVF8,RB2", 50.0)])
def test_rb_own_list_terms_give_back_each_rows_sq_norm(spec, offset):
    # RB under l2 behind IVF keeps T = |r|^2 + 2 g <(c - m) R, s> in place of |r|^2 (no bytes
    # a row); a symmetric scan of a layout without its rows makes |r|^2 back from the blocks
    # (`RB._sdc_factors`): each row's coded |r|^2 within float32 rounding of T, also
    # for rows far from the origin; padding rows are left alone (the scan skips id -1)
    x, q = gaussian_clusters(700, 20, nq=5, seed=4)
    x = x * np.random.default_rng(2).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32) + np.float32(offset)
    codec = trained(spec, 20, "l2", x)
    codes = codec.encode(x)
    index = codec.index(codes.codes, codes.lists, keep_rows=False)
    assert index.rb_own_terms and getattr(index, "rb_sdc_factors", None) is None
    made = codec.quantizer._sdc_factors(index, False)
    assert index.rb_sdc_factors is made and codec.quantizer._sdc_factors(index, False) is made  # made once
    want = codec.quantizer.split_codes(codes.codes, codec.width)[1]
    live = index.block_ids >= 0
    rows = index.block_ids[live]
    np.testing.assert_array_equal(made[live, 0], want[rows, 0])
    terms = index.block_factors[live, 1].astype(np.float64)
    assert not np.allclose(terms, want[rows, 1], rtol=1e-3)  # the blocks hold the terms, not |r|^2
    tol = 4 * np.finfo(np.float32).eps * (np.abs(terms) + want[rows, 1])
    assert (np.abs(made[live, 1] - want[rows, 1]) <= tol).all()
    # and the symmetric search scores as the index that keeps its rows
    kept = codec.index(codes.codes, codes.lists)
    assert not kept.rb_own_terms or kept.factors is not None
    a, b = index.search(q, 10, nprobe=3, sdc=True), kept.search(q, 10, nprobe=3, sdc=True)
    _assert_search_equal(a, b)  # bit for bit: the kept rows' |r|^2 goes through the term and back too


def _assert_search_equal(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("spec", ["IVF4,RB1", "RB2", "IVF4,PQ4x8", "PQ4x4", "SQ8", "F16"])
def test_no_rows_encode_to_no_codes(spec):
    x, _ = gaussian_clusters(200, 16, seed=1)
    codec = trained(spec, 16, "l2", x)
    enc = codec.encode(x[:0])
    assert enc.codes.shape == (0, codec.code_size) and enc.lists.shape == (0,)
    assert len(codec.index(enc)) == 0


def test_arrays_derived_from_an_old_state_never_serve_the_new_one():
    # a search that read the state before a train derives for that state only: whatever it
    # stores is not what later searches of the new state use (they derive again)
    x, q = gaussian_clusters(600, 12, nq=20, seed=3)
    codec = trained("IVF8,PQ6x8", 12, "l2", x)
    old = codec._require()
    codec.train(x * 2.0)
    stale = codec._derived_of(old)  # a search that read `old` before the train, finishing after it
    stale["pq_list_terms"] = np.full((8, 6, 256), 1e6, np.float32)
    got = codec.index(codec.encode(x)).search(q, 10, nprobe=3)
    fresh = trained("IVF8,PQ6x8", 12, "l2", x)
    fresh.train(x * 2.0)
    want = fresh.index(fresh.encode(x)).search(q, 10, nprobe=3)
    _assert_search_equal((got.scores, got.ids), want)


def test_bad_lists_and_ids_are_invalid_input(small):
    codec, codes, index, x, q = small
    c, lists = codes
    with pytest.raises(InvalidInput):
        codec.decode(c, None)  # IVF codes need their lists
    with pytest.raises(InvalidInput):
        codec.decode(c, np.full(len(c), 4))
    with pytest.raises(InvalidInput):
        codec.decode(c, np.full(len(c), -1))
    with pytest.raises(InvalidInput):
        codec.index(c, lists[:-1])
    with pytest.raises(InvalidInput):
        codec.index(c, lists, ids=np.arange(len(c) - 1))


@pytest.mark.parametrize("metric", ["euclidean", "COSINE", "", "dot", None])
def test_unknown_metric_is_invalid_input(metric):
    with pytest.raises(InvalidInput) as info:
        Codec("Flat", 8, metric)
    assert isinstance(info.value, ValueError)
    assert "cosine" in str(info.value)


def test_unknown_rotation_is_invalid_input():
    with pytest.raises(InvalidInput):
        Codec("RB2", 8, rotation="pca")


def test_error_hierarchy():
    assert issubclass(CodecSpecError, ValueError) and issubclass(CodecSpecError, VeczError)
    assert issubclass(DimensionMismatch, ValueError) and issubclass(DimensionMismatch, VeczError)
    assert issubclass(InvalidInput, ValueError) and issubclass(InvalidInput, VeczError)
    assert issubclass(NotTrained, RuntimeError) and issubclass(NotTrained, VeczError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), Exception)


# --------------------------------------------------------------------------- degenerate training data


def _degenerate(kind: str, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(17)
    if kind == "constant-dims":
        base = rng.normal(size=(5, dim)).astype(np.float32)
        x = base[rng.integers(0, 5, 300)]  # 5 distinct vectors, many duplicates
        x[:, 3] = 0.0
        x[:, 7] = 2.5
        x[:, dim - 1] = 0.0
        return x
    if kind == "identical":
        return np.tile(rng.normal(size=(1, dim)).astype(np.float32), (200, 1))
    if kind == "single":
        return rng.normal(size=(1, dim)).astype(np.float32)
    if kind == "sparse":
        x = np.zeros((250, dim), dtype=np.float32)
        x[np.arange(250), rng.integers(0, 3, 250)] = 1.0  # one-hot on the first 3 dims
        return x
    raise ValueError(kind)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("kind", ["constant-dims", "identical", "single", "sparse"])
@pytest.mark.parametrize("quant", ("PQ4x8", "PQ8x4", "RB1", "RB2", "RB4", "SQ8", "SQ4", "F16", "Flat"))
@pytest.mark.parametrize("prefix", ["", "MRL12,IVF8,"])
def test_degenerate_training_data_gives_no_nan(kind, quant, prefix):
    x = _degenerate(kind)
    spec = prefix + quant
    for metric in METRICS:
        codec = trained(spec, 16, metric, x)
        for name, arr in codec.state().items():
            assert np.isfinite(arr).all(), f"{spec} {metric}: state {name} has NaN/inf"
        codes = codec.encode(x)
        dec = codec.decode(*codes)
        assert np.isfinite(dec).all(), f"{spec} {metric}: decode has NaN/inf"
        if quant in ("Flat", "F16", "SQ8") or quant.startswith("PQ"):
            mrl = codec.mrl.dim if codec.mrl is not None else None
            # few distinct values: the training vectors themselves are reproduced closely
            np.testing.assert_allclose(dec, coded_space(x, metric, mrl), atol=0.02, err_msg=f"{spec} {metric}")
        index = codec.index(*codes)
        k = min(5, len(x))
        for sdc in ((False, True) if quant.startswith("RB") else (False,)):
            scores, ids = index.search(x[:10], k, nprobe=codec.nlist, sdc=sdc)
            assert (ids >= 0).all(), f"{spec} {metric} sdc={sdc}: lost vectors {ids}"
            assert np.isfinite(scores).all(), f"{spec} {metric} sdc={sdc}: scores {scores}"


@pytest.mark.parametrize("spec", ["RB1", "IVF16,RB2", "PQ12x8", "IVF8,PQ24x4", "IVF4,SQ4", "MRL64,RB1"])
def test_chunked_encoding_gives_the_codes_of_one_pass(spec, monkeypatch):
    """`Codec.encode` codes rows in chunks of ENCODE_CHUNK_BYTES: the chunking is invisible."""
    import vecz.engine.codecs as codecs_module

    x = np.random.default_rng(5).standard_normal((5000, 96)).astype(np.float32)
    codec = Codec(spec, 96, "l2")
    codec.train(x[:2000])
    whole = codec.encode(x)
    monkeypatch.setattr(codecs_module, "ENCODE_CHUNK_BYTES", 1)  # 1,024-row chunks, a ragged last one
    chunked = codec.encode(x)
    np.testing.assert_array_equal(chunked.codes, whole.codes)
    np.testing.assert_array_equal(chunked.lists, whole.lists)


# --------------------------------------------------------------------------- OPQ


@pytest.mark.parametrize("spec", ["OPQ4x8", "OPQ5x4", "IVF4,OPQ4x8", "IVF3,OPQ6x4", "MRL11,OPQ3x8"])
@pytest.mark.parametrize("metric", METRICS)
def test_opq_scores_are_those_of_its_reconstructions(spec, metric):
    """OPQ codes r @ R and rotates the query into the same space: a search must score each
    row as the rotated-back reconstruction `decode` returns (cosine: by the cosine to it,
    as PQ x8 is scored), and a row's code must not depend on its batch."""
    dim = 13
    x, q = gaussian_clusters(400, dim, nq=7, seed=3)
    codec = trained(spec, dim, metric, x)
    rot = codec.state()["pq_rotation"]
    np.testing.assert_allclose(rot @ rot.T, np.eye(codec.width), atol=2e-5)
    codes = codec.encode(x)
    one_by_one = np.concatenate([codec.encode(x[i:i + 1]).codes for i in range(0, 400, 37)])
    np.testing.assert_array_equal(one_by_one, codes.codes[::37])
    rec = codec.decode(*codes).astype(np.float64)
    qp = codec._prepare(q, "queries").astype(np.float64)
    if metric == "l2":
        want = -((qp[:, None, :] - rec[None]) ** 2).sum(-1)
    else:
        want = qp @ rec.T
        if codec.unit_rows:  # cosine, and ip behind MRL (unit rows too): the cosine to it
            want /= np.linalg.norm(rec, axis=1)[None, :]
    k = 5
    res = codec.index(*codes).search(q, k, nprobe=codec.nlist)
    got = -res.scores if metric == "l2" else res.scores
    picked = np.take_along_axis(want, res.ids, axis=1)
    tol = 1e-4 if spec.endswith("x8") else 0.08 * np.abs(want).max()  # 4-bit: uint8 tables
    np.testing.assert_allclose(got, picked, atol=tol, rtol=1e-4)
    best = -np.sort(-want, axis=1)[:, :k]
    assert (picked >= best[:, -1:] - 2 * tol).all()


def test_opq_lowers_the_coding_error_on_correlated_data():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 24)) * (0.8 ** np.arange(24))[None, :]
    x = (z @ np.linalg.qr(rng.standard_normal((24, 24)))[0]).astype(np.float32) + 3.0
    err = {}
    for spec in ("PQ6x4", "OPQ6x4"):
        codec = trained(spec, 24, "l2", x)
        err[spec] = ((codec.decode(*codec.encode(x)) - x) ** 2).sum(1).mean()
    assert err["OPQ6x4"] < 0.75 * err["PQ6x4"], err


@pytest.mark.parametrize("nprobe", [True, False, np.bool_(True), 0, 1.0])
def test_plan_refuses_nprobe_that_is_not_a_count(nprobe):
    codec = Codec("IVF4,RB1", 16, "ip").train(np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32))
    with pytest.raises(InvalidInput, match="nprobe must be an integer >= 1"):
        codec.plan(np.ones((2, 16), np.float32), nprobe=nprobe)


# --------------------------------------------------------------------------- PQ row norms (ip)


@pytest.mark.parametrize("spec", ["PQ4x8", "PQ5x4", "IVF4,PQ4x8", "IVF4,OPQ4x4", "OPQ4x8"])
def test_pq_row_norms(spec):
    # under ip a PQ code ends with the row's norm (float16, little-endian) and the row
    # scores |x| <q, x_hat> / |x_hat|: decode gives that scaled reconstruction, the 8-bit
    # scan scores q . decode, the 4-bit one approximates it
    dim = 13
    x, q = gaussian_clusters(600, dim, nq=8, seed=41)
    x *= np.random.default_rng(1).uniform(0.2, 3.0, size=(600, 1)).astype(np.float32)  # norms that vary
    codec = trained(spec, dim, "ip", x)
    plain = Codec.from_config({**codec.to_config(), "row_norms": False, "code_size": codec.code_size - 2},
                              codec.state())
    assert codec.row_norms and not plain.row_norms
    assert codec.code_size == plain.code_size + 2 == code_size(spec, dim, "ip")
    assert codec.to_config()["row_norms"] is True and codec.score_rule == 4 and plain.score_rule == 1
    codes = codec.encode(x)
    base = plain.encode(x)
    np.testing.assert_array_equal(codes.codes[:, :-2], base.codes)  # the same sub-codes
    np.testing.assert_array_equal(codes.lists, base.lists)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    np.testing.assert_array_equal(codes.codes[:, -2:].copy().view("<f2")[:, 0], norms.astype(np.float16))
    dec = codec.decode(*codes).astype(np.float64)
    plain_dec = plain.decode(*base).astype(np.float64)
    # the reconstruction's direction, the row's length (float16's rounding, twice)
    np.testing.assert_allclose(np.linalg.norm(dec, axis=1), norms, rtol=2e-3)
    cos = (dec * plain_dec).sum(1) / np.linalg.norm(dec, axis=1) / np.linalg.norm(plain_dec, axis=1)
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    state = codec.state()
    if "pq_cell_err" in state:  # the error scale of rerank="auto": the cells' times sqrt(|x|)
        ours = codec.quantizer.row_errors(codes.codes, codec.width, state)
        theirs = plain.quantizer.row_errors(base.codes, plain.width, state)
        np.testing.assert_allclose(ours, theirs * np.sqrt(norms.astype(np.float16).astype(np.float32)), rtol=1e-6)
    res = codec.index(*codes).search(q, 10, nprobe=codec.nlist)
    full = q.astype(np.float64) @ dec.T
    if codec.quantizer.nbits == 8:
        assert_matches_exact(res, dec, q.astype(np.float64), "ip", 10)
    else:  # the fast scan's 8-bit tables; its |x_hat|^2 sums in another order (g within a float16 step)
        got = np.take_along_axis(full, res.ids, 1)
        assert np.abs(got - res.scores).max() <= 0.05 * (full.max() - full.min())
    # and rank no worse than the plain codes here (13 dims, 600 rows: within a row or two;
    # on real embeddings they read far fewer rows, test_quality)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    ours = recall_at(res.ids, exact, 10)
    theirs = recall_at(plain.index(*base).search(q, 10, nprobe=codec.nlist).ids, exact, 10)
    assert ours >= theirs - 0.05


def test_pq_row_norms_where_they_apply():
    x, _ = gaussian_clusters(300, 16, seed=3)
    assert Codec("PQ4x8", 16, "ip").row_norms
    assert Codec("PQ4x8", 16, "ip", row_norms=False).code_size == 4
    for spec, metric in (("PQ4x8", "cosine"), ("PQ4x8", "l2"), ("MRL8,PQ4x8", "ip"), ("RB1", "ip"), ("SQ8", "ip")):
        codec = Codec(spec, 16, metric)
        assert not codec.row_norms and "row_norms" not in codec.to_config()
        assert codec.code_size == code_size(spec, 16, metric)
        with pytest.raises(InvalidInput, match="row_norms"):
            Codec(spec, 16, metric, row_norms=True)
    with pytest.raises(InvalidInput, match="row_norms"):
        Codec("PQ4x8", 16, "ip", row_norms=1)
    # a config from before row norms (no field) keeps the plain codes
    old = {k: v for k, v in Codec("PQ4x8", 16, "ip", row_norms=False).to_config().items() if k != "row_norms"}
    assert not Codec.from_config(old).row_norms
    for bad in ("yes", 1, None):
        with pytest.raises(CodecSpecError, match="row_norms"):
            Codec.from_config({**old, "row_norms": bad})
    with pytest.raises(CodecSpecError, match="row_norms"):
        Codec.from_config({**Codec("PQ4x8", 16, "l2").to_config(), "row_norms": True})
    # a norm past float16's range is refused with what was expected and found
    codec = trained("PQ4x8", 16, "ip", x)
    big = x[:3].copy()
    big[1] *= 1e5
    with pytest.raises(InvalidInput, match="row 1"):
        codec.encode(big)
    codec.encode(x[:3] * 1000)  # within range


@pytest.mark.parametrize("spec", ["MRL11,PQ4x8", "MRL11,PQ6x4", "MRL11,IVF3,PQ4x8", "MRL11,IVF3,OPQ6x4"])
def test_pq_behind_mrl_under_ip_scores_the_cosine_to_the_reconstruction(spec):
    # MRL renormalises what it keeps under ip: unit rows, as under cosine, and PQ scores them
    # the same way (score rule 5), without row norms (every row's would be 1)
    dim = 13
    x, q = gaussian_clusters(500, dim, nq=7, seed=12)
    codec = trained(spec, dim, "ip", x)
    assert codec.unit_rows and not codec.row_norms and codec.score_rule == 5
    assert Codec(spec, dim, "cosine").score_rule != 5 and not Codec(spec, dim, "l2").unit_rows
    codes = codec.encode(x)
    rec = codec.decode(*codes).astype(np.float64)
    qp = codec._prepare(q, "queries").astype(np.float64)
    want = qp @ rec.T / np.linalg.norm(rec, axis=1)[None, :]
    res = codec.index(*codes).search(q, 5, nprobe=codec.nlist)
    picked = np.take_along_axis(want, res.ids, axis=1)
    tol = 1e-4 if "x8" in spec else 0.08 * np.abs(want).max()  # 4-bit: uint8 tables
    np.testing.assert_allclose(res.scores, picked, atol=tol, rtol=1e-4)


# --------------------------------------------------------------------------- few rows a list


@pytest.mark.parametrize("spec, key", [("IVF16,PQ4x8", "pq_books"), ("IVF16,PQ4x4", "pq_books"), ("IVF16,SQ8", "sq_vdiff")])
def test_ivf_trained_on_one_row_a_list_still_trains_its_residual_codes(spec, key):
    # with as many rows as lists every row is a centroid and its residual 0: PQ's books and
    # SQ's ranges trained on zeros (all 0) and coded every later row as its centroid (recall
    # 0.012 on real data in a review). Training residuals of such rows are now held out.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 16)).astype(np.float32)
    later = rng.standard_normal((400, 16)).astype(np.float32)
    c = Codec(spec, 16, "l2").train(x)
    assert np.abs(c.state()[key]).max() > 0
    codes = c.encode(later)
    centroid = c.state()["centroids"][codes.lists]
    err_code = np.linalg.norm(c.decode(codes) - later, axis=1).mean()
    err_centroid = np.linalg.norm(centroid - later, axis=1).mean()
    assert err_code < 0.8 * err_centroid, (err_code, err_centroid)


@pytest.mark.parametrize("n, distinct", [(10, 10), (80, 10)])
def test_ivf_with_fewer_distinct_training_rows_than_lists_probes_distinct_lists(n, distinct):
    # the lists past the distinct rows repeat their centroids: a query's nprobe went to copies
    # of one centroid (all empty but the first) and found 1 row of k = 10 in a review
    rng = np.random.default_rng(4)
    x = np.repeat(rng.standard_normal((distinct, 16)).astype(np.float32), n // distinct, axis=0)
    c = Codec("IVF64,SQ8", 16, "l2").train(x)
    centroids = c.state()["centroids"]
    assert len(np.unique(centroids, axis=0)) == distinct
    rows = rng.standard_normal((500, 16)).astype(np.float32)
    lists = c.encode(rows).lists
    q = rng.standard_normal((20, 16)).astype(np.float32)
    probes, _ = c._probe(c._prepare(q, "queries"), 4)
    assert probes.shape == (20, 4)
    for row in probes:  # four distinct centroids, each a list that holds rows
        assert len(np.unique(centroids[row], axis=0)) == 4 and np.isin(row, lists).all()
    first = np.sort(np.unique(centroids, axis=0, return_index=True)[1])  # each distinct centroid's list
    d = ((q[:, None, :] - centroids[None, first, :]) ** 2).sum(axis=2)
    want = first[np.argsort(d, axis=1, kind="stable")[:, :4]]  # the four nearest distinct lists
    np.testing.assert_array_equal(np.sort(probes, axis=1), np.sort(want, axis=1))


def test_pq_under_ip_refuses_row_norms_float16_cannot_hold():
    # norms stored as float16: below 6e-08 every row scored 0 (recall 0 at a 1e-8 scale)
    x = np.random.default_rng(6).standard_normal((300, 16)).astype(np.float32)
    c = Codec("PQ4x8", 16, "ip").train(x)
    for scale in (1e-8, 1e-5):
        with pytest.raises(errors.InvalidInput, match="expected norms of at least 6.1e-05 \\(or 0\\)"):
            c.encode(x * np.float32(scale))
    c.encode(np.zeros((2, 16), np.float32))  # a zero row scores 0 anyway
    c.encode(x * np.float32(1e-3))


@pytest.mark.parametrize("spec, match", [
    ("PQ\u0663x8", "unknown stage"), ("IVF\uff1064,PQ8x8", "unknown stage"),
    ("IVF1000000000,PQ8x8", "nlist must be at most 9 digits, found 10"),
    ("PQ8x00000000008", "PQ bits must be 4 or 8, found 00000000008"),
])
def test_specs_take_ascii_digits_and_say_what_is_too_long(spec, match):
    with pytest.raises(errors.CodecSpecError, match=match):
        parse_spec(spec)


@pytest.mark.parametrize("dim", [384.7, "384", True])
def test_codec_dim_must_be_an_integer(dim):
    with pytest.raises(errors.InvalidInput, match="dim: expected an integer"):
        Codec("PQ8x8", dim)


def test_a_lone_outlier_does_not_widen_sq_ranges(monkeypatch):
    # an outlier k-means leaves alone in its list gave its far held-out residual to SQ's
    # min/max ranges, coarsening every row's code (IVF64,SQ4 recall@10 0.762 -> 0.360 in a
    # review): held-out residuals are only for training sets with few rows a list
    import vecz.engine.codecs as codecs_module

    rng = np.random.default_rng(9)
    centres = rng.standard_normal((64, 16)).astype(np.float32) * 3
    x = centres[rng.integers(0, 64, 5000)] + rng.standard_normal((5000, 16)).astype(np.float32) * 0.3
    x[17] = 60.0  # one outlier
    new = Codec("IVF64,SQ4", 16, "l2").train(x).state()
    monkeypatch.setattr(codecs_module, "_held_out_residuals", lambda *a, **k: None)
    old = Codec("IVF64,SQ4", 16, "l2").train(x).state()
    for name in new:
        np.testing.assert_array_equal(new[name], old[name])


def test_store_stats_count_the_distinct_lists_probed(tmp_path):
    from vecz import Store

    rng = np.random.default_rng(10)
    with Store.create(tmp_path / "s", dim=16, codec="IVF64,SQ8", metric="l2", dense=None) as s:
        s.train(np.repeat(rng.standard_normal((10, 16)).astype(np.float32), 8, axis=0))
        s.add(rng.standard_normal((300, 16)).astype(np.float32))
        res = s.search(rng.standard_normal((7, 16)).astype(np.float32), 5, nprobe=64)
        assert res.stats.lists_probed == 7 * 10  # was 7 * 64: lists never probed were counted
        assert s.search(rng.standard_normal((7, 16)).astype(np.float32), 5, nprobe=4).stats.lists_probed == 28


# --------------------------------------------------------------------------- the standalone Codec's edges
# (from a review of the Codec API used without a Store; each failed before its fix)


@pytest.mark.parametrize("metric,spec", [("l2", "PQ3x8"), ("ip", "SQ8"), ("ip", "RB2"), ("l2", "OPQ3x8"),
                                         ("ip", "Flat")])
def test_a_codec_refuses_norms_whose_scores_leave_float32(metric, spec):
    # rows of norm 4e20 trained and searched: scores inf, every slot id -1 (OPQ: a raw LinAlgError)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12)).astype(np.float32)
    with pytest.raises(InvalidInput, match=r"training sample: expected vector norms below 1e\+15 .* in row 0"):
        Codec(spec, 12, metric).train(x * 1e20)
    codec = Codec(spec, 12, metric).train(x)
    big = x[:3].copy()
    big[2] *= 1e15
    with pytest.raises(InvalidInput, match=r"in row 2"):
        codec.encode(big)
    with pytest.raises(InvalidInput, match=r"queries: expected vector norms below"):
        codec.index(codec.encode(x)).search(big, 3)


def test_codec_arguments_and_state_are_checked_as_the_docs_say():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    # np.False_ passed the check and then meant True (is not False)
    assert Codec("PQ4x8", 16, "ip", row_norms=np.False_).code_size == 4 == Codec("PQ4x8", 16, "ip", row_norms=False).code_size
    # the module-level code_size checks metric and dim as Codec does
    for metric, dim in (("dot", 16), ("IP", 16), ("ip", 16.5), ("ip", "16"), ("ip", None), ("ip", True)):
        with pytest.raises(InvalidInput):
            code_size("PQ4x8", dim, metric)
    codec = Codec("IVF4,PQ4x8", 16, "l2").train(x)
    codes = codec.encode(x[:20])
    for lists in (codes.lists + 0.7, np.array(["a"] * 20), np.full(20, np.nan)):  # truncated, or raw errors
        with pytest.raises(InvalidInput):
            codec.decode(codes.codes, lists)
    for ids in (np.arange(20) + 0.5, np.array(["a"] * 20), np.full(20, 2 ** 64 - 1, np.uint64)):
        with pytest.raises(InvalidInput):
            codec.index(codes.codes, codes.lists, ids)
    with pytest.raises(InvalidInput, match="k must be"):
        codec.index(codes).search(x[:2], True)
    # the state handed out cannot change the codec under its caches, nor can the caller's arrays
    state = codec.state()
    with pytest.raises(ValueError, match="read-only"):
        state["pq_books"][0, 0, 0] = 1.0
    given = {name: np.array(arr) for name, arr in state.items()}
    again = Codec.from_config(codec.to_config(), given)
    given["pq_books"][:] = 0
    np.testing.assert_array_equal(again.encode(x[:20]).codes, codes.codes)
    for bad in (np.full(state["centroids"].shape, "a"), state["centroids"] + 1j):
        with pytest.raises(CodecSpecError, match="expected real numbers"):
            Codec.from_config(codec.to_config(), {**state, "centroids": bad})
    for field, value in (("version", True), ("version", 1.0), ("code_size", "4")):
        with pytest.raises(CodecSpecError):
            Codec.from_config({**codec.to_config(), field: value})


def test_pq_spreads_its_padding_over_the_sub_quantizers(tmp_path):
    """PQ on a width M does not divide padded rows on the right, so sub-quantizers wholly past
    the last dim coded nothing (PQ124x8 on 384 dims coded as PQ96x8; wordnet-minilm recall@10
    0.864 against 0.904 spread). New codecs spread the padding (`pq_spread`, in the config);
    a config without the field (made before it) keeps padding on the right."""
    dim = 40
    x, _ = gaussian_clusters(3000, dim, seed=5)
    # 12 sub-quantizers of 4 dims padded on the right: 10 code dims, 2 only zeros
    errors = {}
    for spread in (True, False):
        codec = trained("PQ12x8", dim, "l2", x, pq_spread=spread)
        assert codec.pq_spread == spread and codec.to_config()["pq_spread"] == spread
        errors[spread] = float(np.linalg.norm(codec.decode(*codec.encode(x)) - x, axis=1).mean())
        assert np.allclose(codec.decode(*codec.encode(x)), Codec.from_config(*_config_state(codec)).decode(
            *codec.encode(x)))
    assert errors[True] < 0.9 * errors[False], errors
    old = trained("PQ12x8", dim, "l2", x, pq_spread=False).to_config()
    del old["pq_spread"]  # a codec made before the field: padding on the right
    assert not Codec.from_config(old).pq_spread
    assert Codec("PQ12x8", dim, "l2").pq_spread and "pq_spread" not in Codec("PQ10x8", dim, "l2").to_config()
    for bad, match in ((dict(pq_spread="yes"), "pq_spread: expected True, False or None"),
                       (dict(pq_spread=True, spec="PQ10x8"), "only PQ on a width M does not divide")):
        with pytest.raises(InvalidInput, match=match):
            Codec(bad.pop("spec", "PQ12x8"), dim, "l2", **bad)
    with pytest.raises(CodecSpecError, match="pq_spread"):
        Codec.from_config({**old, "pq_spread": 1})
    from vecz import Store

    with Store.create(tmp_path / "s", dim=dim, metric="l2", codec="OPQ12x4") as s:  # a store keeps it
        s.add(x)
        before = s.search(x[:5], 5, rerank=0)
    with Store.open(tmp_path / "s") as r:
        assert r.codec.pq_spread
        np.testing.assert_array_equal(r.search(x[:5], 5, rerank=0).ids, before.ids)


def _config_state(codec: Codec) -> tuple[dict, dict]:
    return codec.to_config(), codec.state()
