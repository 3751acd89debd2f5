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
        np.testing.assert_array_equal(res.ids, expected["ids"])
        np.testing.assert_allclose(res.scores, expected["scores"], rtol=1e-5, atol=1e-5)
        assert len(store) == expected["live_ids"].size
        for dead in (3, 4, 5, 1050, 1100, 1109):
            assert dead not in store
    assert check_store(path) == []
    assert check_store(path, all_versions=True) == []


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
