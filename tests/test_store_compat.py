"""Stores written by vecz 0.2 (manifest layout 1: one dense file per segment, one cumulative
deletes file, rows in add order) still open, search the same, check clean, and take new
writes: tests/fixtures/stores/ holds three written by that release with the results it
returned (tests/fixtures/make_store_v1.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vecz import Store, check_store
from vecz.errors import StoreCorrupted
from vecz.formats import manifest as mf

STORES = Path(__file__).resolve().parent / "fixtures" / "stores"
NAMES = ["v1-ivf-rb1", "v1-pq-l2", "v1-sq-codes-only"]


@pytest.fixture(params=NAMES)
def old_store(request, tmp_path):
    path = tmp_path / request.param
    shutil.copytree(STORES / request.param, path)
    return path, dict(np.load(STORES / f"{request.param}-expected.npz"))


def test_fixtures_are_layout_1():
    for name in NAMES:
        body = mf.read_manifest(STORES / name)
        assert "layout" not in body and body["deletes"] is not None, name


def test_old_store_opens_and_searches_the_same(old_store):
    path, expected = old_store
    with Store.open(path) as store:
        np.testing.assert_array_equal(store.ids(), expected["live_ids"])
        res = store.search(expected["queries"], 5, nprobe=2 if store.codec.nlist > 1 else None,
                           rerank=int(expected["rerank"]))
        if store.codec.scans_centred:
            _check_rescored_answers(store, res, expected)
        else:
            np.testing.assert_array_equal(res.ids, expected["ids"])
            np.testing.assert_allclose(res.scores, expected["scores"], rtol=1e-5, atol=1e-5)
        assert len(store) == expected["live_ids"].size
        for dead in (3, 4, 5, 1050, 1100, 1109):
            assert dead not in store
    assert check_store(path) == []
    assert check_store(path, all_versions=True) == []


def _vectors_by_id() -> dict[int, np.ndarray]:
    """The fixtures' rows by id, as make_store_v1.py added them."""
    x = np.load(STORES / "v1-vectors.npy")
    ids = np.concatenate([np.arange(150), np.arange(1000, 1100)[::-1], 1100 + np.arange(150)])
    return dict(zip(ids.tolist(), x))


def _check_rescored_answers(store, res, expected) -> None:
    """RB under cosine scores its codes centred since stop 43 (score rule 3,
    `Codec.scans_centred`); the release that wrote v1-ivf-rb1 ranked its shortlist by rule
    1, so the answers may differ where the codes' ranking did. What holds whatever the
    rule: each answer's score is its row's exact cosine (the re-rank from the f32 dense
    file), and the answers hold at least as many of the exact top 5 of the live rows as
    the release's did."""
    rows = _vectors_by_id()
    live = expected["live_ids"]
    base = np.stack([rows[int(i)] for i in live]).astype(np.float64)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = expected["queries"].astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = q @ base.T
    truth = live[np.argsort(-exact, axis=1, kind="stable")[:, :5]]
    assert (res.ids >= 0).all()
    got = np.array([[float(q[i] @ (rows[int(j)] / np.linalg.norm(rows[int(j)]))) for j in res.ids[i]]
                    for i in range(len(q))])
    np.testing.assert_allclose(res.scores, got, rtol=1e-5, atol=1e-5)

    def found(ids):
        return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth))

    assert found(res.ids) >= found(expected["ids"])


def test_old_store_takes_writes_and_becomes_layout_2(old_store):
    path, expected = old_store
    x = np.load(STORES / "v1-vectors.npy")
    with Store.open(path, mode="a") as store:
        live_before = store.ids()
        new = store.add(x[:30] + np.float32(0.01))
        store.delete([0, int(new[0]), 1099])
        assert mf.read_manifest(path)["layout"] == 2
        want = np.setdiff1d(np.union1d(live_before, new), [0, int(new[0]), 1099])
        np.testing.assert_array_equal(store.ids(), want)
        store.compact()
        np.testing.assert_array_equal(store.ids(), want)
    with Store.open(path) as store:
        np.testing.assert_array_equal(store.ids(), want)
        if store.dense != "none":
            # every live old row still finds itself first by exact score
            q = x[[10, 200, 300]]
            res = store.search(q, 1, nprobe=store.codec.nlist, rerank=50)
            assert res.ids[:, 0].tolist() == [10, 1000 + (99 - 50), 1100 + 50]
    assert check_store(path) == []


def test_a_layout_1_deletes_file_must_hold_the_count_its_manifest_says(tmp_path):
    # pointing layout 1's deletes at an older cumulative file (4 pairs where the manifest
    # counts 14) brought 10 deleted rows back, and check said ok
    path = tmp_path / "v1"
    shutil.copytree(STORES / "v1-pq-l2", path)
    version = mf.list_versions(path)[-1]
    body = mf.read_manifest(path, version)
    older = sorted(n for n in (p.name for p in path.iterdir()) if n.startswith("del-") and n != body["deletes"]["file"])
    assert older, "the fixture keeps an older cumulative deletes file"
    body["deletes"]["file"] = older[0]
    (path / mf.manifest_name(version)).unlink()
    mf.write_manifest(path, version, body)
    with pytest.raises(StoreCorrupted, match=r"holds \d+ \(serial, row\) pairs, \d+ distinct; the manifest's deletes "
                                             r"count is 14"):
        Store.open(path)
    assert check_store(path)
