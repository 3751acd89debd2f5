"""Centred cosine scans (`Codec.scans_centred`, score rule 3): RB under cosine estimates
<x - lambda c, r> and adds lambda <c, r>, as the l2 scan of x / lambda on residuals mapped
back to cosines. Checked against the l2 scan of the same codes (bit for bit), against a
numpy estimate from the decoded codes, and on embeddings whose vectors all lean one way,
where the uncentred estimate loses the ranking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.engine.codecs import CENTRE_MAX, CENTRE_MIN, Codec
from vecz.engine.layout import centred_to_cosine, cosine_to_centred

K = 10


def _clusters(n: int, dim: int, nq: int, seed: int, lean: float = 0.0):
    """Gaussian clusters, and with `lean` every vector pushed by lean x its norm along one
    unit direction (an embedding whose vectors all lean one way)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim)) * 3.0
    x = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, dim))
    q = centres[rng.integers(0, 12, nq)] + rng.normal(size=(nq, dim))
    if lean:
        u = rng.normal(size=dim)
        u /= np.linalg.norm(u)
        x = x + lean * np.linalg.norm(x, axis=1, keepdims=True) * u
        q = q + lean * np.linalg.norm(q, axis=1, keepdims=True) * u
    return x.astype(np.float32), q.astype(np.float32)


def _unit(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _as_l2(codec: Codec) -> Codec:
    cfg = codec.to_config()
    cfg["metric"] = "l2"
    return Codec.from_config(cfg, codec.state())


@pytest.mark.parametrize("spec, metric", [("RB1", "cosine"), ("RB2", "cosine"), ("MRL24,RB1", "cosine"),
                                          ("MRL24,RB2", "cosine"), ("MRL24,RB1", "ip"), ("MRL24,RB2", "ip")])
@pytest.mark.parametrize("nq", [1, 3, 40])
def test_centred_cosine_scan_is_the_l2_scan_of_the_scaled_query(spec, metric, nq):
    # Without IVF: same codes, same state, the cosine codec's scores are exactly its map of
    # the l2 codec's distances for the queries x / lambda, with the same ids. nq 1, 3 and 40
    # take the one-query driver and groups of queries. (With IVF the centred scan's one
    # table a query rounds differently from l2's table per list: see the numpy check.) Under
    # ip behind MRL the rows and queries are renormalised, unit as under cosine: the same.
    sdc = False
    dim = 32
    x, q = _clusters(500, dim, nq, seed=nq + 7, lean=0.8)
    codec = Codec(spec, dim, metric, seed=3).train(x)
    assert codec.scans_centred and codec.score_rule == 3
    codes = codec.encode(x)
    nprobe = codec.nlist
    res = codec.index(*codes).search(q, K, nprobe=nprobe, sdc=sdc)
    prepared = codec._prepare_rows(np.ascontiguousarray(q), "queries")
    plan = codec.plan(q, nprobe=nprobe, sdc=sdc)
    lam = plan.centre
    np.testing.assert_array_equal(lam, codec._centres(prepared, plan.probes))
    assert ((lam >= CENTRE_MIN) & (lam <= CENTRE_MAX)).all()
    scaled = np.zeros((nq, dim), dtype=np.float32)  # an MRL codec truncates to its width
    scaled[:, :prepared.shape[1]] = (prepared / lam[:, None]).astype(np.float32)
    l2 = _as_l2(codec)
    ref = l2.index(*codes).search(scaled, K, nprobe=nprobe, sdc=sdc)
    np.testing.assert_array_equal(res.ids, ref.ids)
    want = centred_to_cosine(-ref.scores, lam)
    np.testing.assert_array_equal(res.scores.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("spec", ["RB1", "RB2", "IVF4,RB2", "IVF8,RB1"])
def test_centred_cosine_scores_the_centred_estimate(spec):
    # numpy: <x, c> + <x - lambda c, e> + lambda (1 - |c|^2 - |r|^2) / 2, with c the row's list
    # centroid, |r|^2 the stored factor, lambda the query's, and e RaBitQ's estimator of the
    # residual r = x - c: the decoded residual r_hat scaled to <r, e> = |r|^2 (the ip scan
    # scores <x, c> + <x, e>). The scan's 4-bit tables round: within 1% of the spread (the
    # rounding measured 0.15%), where the uncentred estimate <x, c> + <x, e> is 3-13% away.
    dim = 32
    x, q = _clusters(600, dim, 12, seed=5, lean=0.8)
    codec = Codec(spec, dim, "cosine", seed=3).train(x)
    codes = codec.encode(x)
    res = codec.index(*codes).search(q, 50, nprobe=codec.nlist)
    xq, xn = _unit(q), _unit(x)
    lam = codec.plan(q, nprobe=codec.nlist).centre
    centroids = codec.state()["centroids"].astype(np.float64)
    c = centroids[codes.lists] if codes.lists is not None else np.broadcast_to(centroids[0], (len(x), dim))
    r, r_hat = xn - c, codec.decode(*codes).astype(np.float64) - c
    e = r_hat * (np.einsum("nd,nd->n", r, r) / np.einsum("nd,nd->n", r, r_hat))[:, None]
    _, factors = codec.quantizer.split_codes(codes.codes, codec.width)
    r_sq = factors[:, 1].astype(np.float64)
    plain = xq @ (c + e).T
    est = plain - lam[:, None] * np.einsum("nd,nd->n", c, e)[None, :] \
        + lam[:, None] * (1.0 - np.einsum("nd,nd->n", c, c) - r_sq)[None, :] / 2
    spread = est.max() - est.min()
    assert np.abs(np.take_along_axis(est, res.ids, axis=1) - res.scores).max() <= 0.01 * spread
    assert np.abs(np.take_along_axis(plain, res.ids, axis=1) - res.scores).max() > 0.02 * spread


def _found(order: np.ndarray, truth: np.ndarray, depth: int) -> float:
    """The share of the true top 10 among the first `depth` of each row of `order`."""
    return float(np.mean([len(set(a[:depth]) & set(b)) / K for a, b in zip(order, truth)]))


@pytest.mark.parametrize("spec", ["RB1", "IVF8,RB1", "RB2"])
def test_centred_cosine_keeps_the_ranking_of_vectors_that_all_lean_one_way(spec):
    # Vectors pushed toward one direction until their cosines to it average about 0.9. The
    # uncentred estimate <x, c> + <x, e> (numpy, e as above) errs with |x| = 1 while the
    # neighbours' scores differ by a few hundredths; the centred scan errs with
    # |x - lambda c|. The share of the true top 10 in the code's top 50 (what a re-rank
    # reads), against the uncentred one's; measured 0.44 / 0.28 (RB1), 0.82 / 0.43 (IVF8,RB1,
    # a17b7d5's scan), 0.87 / 0.46 (RB2): the margin asked is half the smallest gain.
    dim = 128
    x, q = _clusters(2000, dim, 100, seed=11, lean=2.0)
    xu, qu = _unit(x), _unit(q)
    direction = xu.mean(axis=0) / np.linalg.norm(xu.mean(axis=0))
    assert (xu @ direction).mean() > 0.85
    truth = np.argsort(-(qu @ xu.T), axis=1, kind="stable")[:, :K]
    codec = Codec(spec, dim, "cosine", seed=3).train(x)
    codes = codec.encode(x)
    got = _found(codec.index(*codes).search(q, 50, nprobe=codec.nlist).ids, truth, 50)
    centroids = codec.state()["centroids"].astype(np.float64)
    c = centroids[codes.lists] if codes.lists is not None else np.broadcast_to(centroids[0], (len(x), dim))
    r, r_hat = xu - c, codec.decode(*codes).astype(np.float64) - c
    e = r_hat * (np.einsum("nd,nd->n", r, r) / np.einsum("nd,nd->n", r, r_hat))[:, None]
    uncentred = _found(np.argsort(-(qu @ (c + e).T), axis=1, kind="stable"), truth, 50)
    assert got >= uncentred + 0.08, (got, uncentred)


@settings(max_examples=300, deadline=None)
@given(st.floats(CENTRE_MIN, CENTRE_MAX), st.floats(-1.5, 1.5, width=32))
def test_a_centred_floor_never_shuts_out_a_row_the_cosine_floor_admits(lam, floor):
    # cosine_to_centred rounds down: every kernel score s >= the converted floor includes
    # each s whose cosine (centred_to_cosine) is >= the floor.
    centre = np.array([lam])
    t = cosine_to_centred(np.array([floor], dtype=np.float32), centre)[0]
    above = np.nextafter(t, np.float32(-np.inf))  # the largest kernel score the floor shuts out
    assert centred_to_cosine(np.array([[above]], dtype=np.float32), centre)[0, 0] < np.float32(floor)
    assert cosine_to_centred(np.array([-np.inf], dtype=np.float32), centre)[0] == -np.inf
    assert centred_to_cosine(np.array([[-np.inf]], dtype=np.float32), centre)[0, 0] == -np.inf


def test_other_codecs_and_metrics_are_not_centred():
    x, _ = _clusters(300, 16, 0, seed=1)
    for spec, metric in [("RB1", "ip"), ("RB1", "l2"), ("IVF4,RB1", "l2"), ("PQ4x8", "cosine"),
                         ("PQ8x4", "cosine"), ("SQ8", "cosine")]:
        codec = Codec(spec, 16, metric, seed=3).train(x)
        assert not codec.scans_centred
        assert codec.score_rule != 3
        assert codec.plan(x[:2]).centre is None


@pytest.mark.parametrize("spec", ["RB1", "IVF4,RB2", "IVF8,RB1"])
def test_symmetric_scoring_stays_uncentred(spec):
    # sdc=True plans as before the centring: no lambda, the inner-product path, the same
    # answers as the ip codec of the same state on the normalised queries (score rule 3
    # covers asymmetric scans only)
    dim = 32
    x, q = _clusters(400, dim, 9, seed=2, lean=0.8)
    codec = Codec(spec, dim, "cosine", seed=3).train(x)
    codes = codec.encode(x)
    assert codec.plan(q, nprobe=2, sdc=True).centre is None
    cfg = codec.to_config()
    cfg["metric"] = "ip"
    ip = Codec.from_config(cfg, codec.state())
    got = codec.index(*codes).search(q, K, nprobe=2, sdc=True)
    want = ip.index(*codes).search(_unit(q).astype(np.float32), K, nprobe=2, sdc=True)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)


def _rows_of(plan, a: int, b: int):
    """The plan of queries a..b-1 of `plan`: the same tables, so any driver must agree."""
    from vecz.engine.layout import QueryPlan
    return QueryPlan(plan.codec, plan.probes[a:b], plan.bias[a:b], {k: v[a:b] for k, v in plan.tables.items()},
                     sdc=plan.sdc, shared=plan.shared, centre=plan.centre[a:b])


@pytest.mark.parametrize("spec, metric", [("IVF8,RB1", "cosine"), ("IVF4,RB2", "cosine"), ("MRL24,IVF4,RB1", "cosine"),
                                          ("MRL24,IVF4,RB1", "ip")])
def test_centred_ivf_drivers_agree(spec, metric):
    # one query at a time, groups of queries and list-major batches (nq >= LIST_MIN_QUERIES)
    # scan the same table and the same per-row terms: the same scores, bit for bit (the
    # plan is sliced: a lone query planned alone rotates in a compiled loop, not BLAS)
    dim = 32
    x, q = _clusters(700, dim, 40, seed=4, lean=0.8)
    codec = Codec(spec, dim, metric, seed=3).train(x)
    assert codec.scans_centred
    index = codec.index(*codec.encode(x))
    plan = codec.plan(q, nprobe=3)
    batch = index.scan(plan, K)
    for a, b in [(i, i + 1) for i in range(0, 40, 7)] + [(5, 7), (10, 13)]:
        part = index.scan(_rows_of(plan, a, b), K)
        np.testing.assert_array_equal(part.ids, batch.ids[a:b])
        np.testing.assert_array_equal(part.scores.view(np.uint32), batch.scores[a:b].view(np.uint32))
