"""vecz on Ray (engine/ray.py): a distributed build equals a one-process build with the same
trained codec, commits all or nothing (a worker killed mid-build, a bad batch), and a
sharded search equals the one-process search, or raises `ShardUnavailable` when an actor
is gone. One local cluster (``ray.init(num_cpus=2)``) for the module, started and shut
down here.

Ray is the optional extra ``vecz[ray]``: without it these tests skip, unless
VECZ_REQUIRE_RAY=1 (CI sets it), which makes a missing Ray a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vecz import Store, check_store
from vecz.engine.segments import read_codes
from vecz.formats import manifest as mf
from vecz.errors import InvalidInput, MissingDependency, ShardUnavailable

if os.environ.get("VECZ_REQUIRE_RAY") == "1":
    import ray  # noqa: F401  (a failure here fails the run: CI installs vecz[ray])
else:
    ray = pytest.importorskip("ray", reason="Ray is the optional extra vecz[ray]; pip install 'vecz[ray]'")

from vecz.engine import ray as vray  # noqa: E402

CONTROL = Path(os.environ.setdefault(vray._PAUSE_ENV, f"/tmp/vecz-ray-test-{os.getpid()}"))


@pytest.fixture(scope="module", autouse=True)
def cluster():
    CONTROL.mkdir(parents=True, exist_ok=True)
    (CONTROL / "pause").unlink(missing_ok=True)
    # workers inherit this process's environment (the pause hook's variable among it)
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield
    ray.shutdown()


def _data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, dim)) * 2
    x = centers[rng.integers(0, 8, n)] + rng.standard_normal((n, dim))
    x[5] = x[4]  # a duplicate vector: ties
    return x.astype(np.float32)


def _content(store: Store) -> dict[int, tuple]:
    """id -> (code bytes, IVF list, stored error bytes) over the store's live rows."""
    out = {}
    for seg in store._segments:
        arrays = read_codes(store.path, seg.rec, store.codec)
        dead = set(seg.dead.tolist())
        for i, id_ in enumerate(arrays["ids"]):
            if i not in dead:
                err = arrays["errors"][i].tobytes() if "errors" in arrays else None
                out[int(id_)] = (arrays["codes"][i].tobytes(), int(arrays["lists"][i]), err)
    return out


def _same_rows(a: Store, b: Store) -> None:
    ca, cb = _content(a), _content(b)
    assert ca.keys() == cb.keys()
    differ = [i for i in ca if ca[i] != cb[i]]
    assert not differ, f"{len(differ)} ids have other codes, first {differ[0]}"
    ids = np.array(sorted(ca), dtype=np.int64)
    assert np.array_equal(a.get(ids).view(np.uint32), b.get(ids).view(np.uint32))


def _reference(tmp: Path, built: Path, x: np.ndarray, ids: np.ndarray | None = None) -> Store:
    """A one-process store of the same rows with the distributed build's trained codec."""
    with Store.open(built) as s:
        codec, dense = s.codec, s.dense
    ref = Store.create(tmp, codec=codec, dense=dense)
    ref.add(x, ids)
    ref.close()
    return Store.open(tmp)


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("staging-"))


@pytest.mark.parametrize("spec,dense,metric", [("RB1", "f16", "cosine"), ("IVF8,PQ8x8", "f32", "l2"),
                                               ("SQ8", "f32", "ip")])
def test_build_equals_a_one_process_build(tmp_path, spec, dense, metric):
    x = _data(2600, 24)
    np.save(tmp_path / "x.npy", x)
    path = tmp_path / "built"
    report = vray.build(path, tmp_path / "x.npy", codec=spec, dense=dense, metric=metric, segment_rows=700,
                        workers=2)
    assert (report.rows, report.dim, report.spec) == (2600, 24, spec)
    assert report.segments >= 4  # one segment per batch of at most 700 rows
    with Store.open(path) as store:
        # create (1), train (2), every row in ONE commit (3)
        assert store.version == report.version == 3
        assert len(store) == 2600 and store.info()["segments"] == report.segments
        assert max(store.info()["segment_rows"]) <= 700
        assert np.array_equal(store.ids(), np.arange(2600))  # ids in dataset order
        with _reference(tmp_path / "ref", path, x) as ref:
            _same_rows(store, ref)
            q = x[:40] + 0.05
            a, b = store.search(q, 10, rerank=60), ref.search(q, 10, rerank=60)
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
    assert check_store(path) == []
    assert _leftovers(path) == []


def test_build_appends_with_ids_that_continue(tmp_path):
    x = _data(1500, 16)
    path = tmp_path / "s"
    vray.build(path, x[:1000], codec="RB2", segment_rows=400)
    report = vray.build(path, x[1000:], codec="RB2", segment_rows=400)
    with Store.open(path) as store:
        assert report.version == 4  # the second build is one more commit, no retraining
        assert np.array_equal(store.ids(), np.arange(1500))
        with _reference(tmp_path / "ref", path, x) as ref:
            _same_rows(store, ref)


def test_build_from_parquet_with_an_id_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = _data(1800, 20, seed=3)
    ids = np.random.default_rng(1).permutation(10_000)[:1800].astype(np.int64) * 7
    table = pa.table({"key": ids, "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 20)})
    pq.write_table(table, tmp_path / "v.parquet", row_group_size=500)
    path = tmp_path / "s"
    vray.build(path, tmp_path / "v.parquet", codec="IVF4,RB1", id_column="key", column="emb", segment_rows=600)
    with Store.open(path) as store:
        assert np.array_equal(store.ids(), np.sort(ids))
        assert store.next_id == int(ids.max()) + 1
        with _reference(tmp_path / "ref", path, x, ids) as ref:
            _same_rows(store, ref)


def test_a_batch_larger_than_segment_rows_is_cut_into_sorted_disjoint_segments(tmp_path):
    import numba

    from vecz import Codec

    x = _data(2500, 16, seed=9)
    codec = Codec("RB1", 16, "cosine")
    codec.train(x)
    ids = np.random.default_rng(2).permutation(2500).astype(np.int64) * 3
    out = vray._encode_batch({"v": x, "id": ids}, codec_ref=[ray.put((codec.to_config(), codec.state()))],
                             key="t", column="v", id_column="id", id_offset=0, staging=str(tmp_path), dense="f16",
                             dim=16, threads=numba.get_num_threads(), segment_rows=1000)
    assert out["rows"] == [833, 833, 834]
    assert out["min_id"][1] > out["max_id"][0] and out["min_id"][2] > out["max_id"][1]
    assert (out["min_id"][0], out["max_id"][2]) == (0, 2499 * 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [s for s in out["seg"]] + [s.replace(".seg", ".dense") for s in out["seg"]])


def test_a_bad_batch_commits_nothing(tmp_path):
    x = _data(2000, 16)
    path = tmp_path / "s"
    vray.build(path, x[:500], codec="RB1", segment_rows=500)
    bad = x[500:].copy()
    bad[1234] = np.nan  # in the third batch of four
    with pytest.raises(InvalidInput, match="NaN|finite"):  # the worker's own typed error
        vray.build(path, bad, codec="RB1", segment_rows=400)
    with Store.open(path) as store:
        assert store.version == 3 and len(store) == 500
    assert _leftovers(path) == []
    # ids repeated across batches: found by the driver before anything is adopted
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.concatenate([np.arange(600), np.arange(100, 700)]) + 10_000
    rows = _data(1200, 16, seed=5)
    pq.write_table(pa.table({"id": ids, "v": pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), 16)}),
                   tmp_path / "dup.parquet", row_group_size=600)
    with pytest.raises(InvalidInput, match="distinct"):
        vray.build(path, tmp_path / "dup.parquet", codec="RB1", id_column="id", segment_rows=600)
    # ids already in the store
    pq.write_table(pa.table({"id": np.arange(490, 510), "v": pa.FixedSizeListArray.from_arrays(
        pa.array(rows[:20].ravel()), 16)}), tmp_path / "old.parquet")
    with pytest.raises(InvalidInput, match="already in"):
        vray.build(path, tmp_path / "old.parquet", codec="RB1", id_column="id")
    with Store.open(path) as store:
        assert store.version == 3 and len(store) == 500
    assert _leftovers(path) == [] and check_store(path) == []
    with pytest.raises(InvalidInput, match="codec"):
        vray.build(path, x[:10], codec="PQ4x8")
    # a store this build created is removed again when nothing was committed to it
    with pytest.raises(InvalidInput, match="NaN|finite"):
        vray.build(tmp_path / "new", bad, codec="RB1", segment_rows=400)
    assert not (tmp_path / "new").exists()


def test_bad_rows_of_a_dataset_or_a_ragged_column_are_typed_errors(tmp_path):
    """Found by a review: from a Ray Dataset (Ray Data wraps a UDF's error and drops its type
    and message) a NaN row, float ids and an id twice in a batch came back as a bare
    RayTaskError(UserCodeException); a variable-width list column raised numpy's ValueError;
    workers=0 Ray's ValueError; uint64 ids of 2**63 and more were called negative."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = _data(400, 16, seed=9)
    path = tmp_path / "s"
    vray.build(path, x[:100], codec="RB1")
    bad = x[100:].copy()
    bad[7, 3] = np.nan
    with pytest.raises(InvalidInput, match="finite"):
        vray.build(path, ray.data.from_numpy(bad), segment_rows=100)
    floats = ray.data.from_items([{"v": row, "id": float(i) + 0.5} for i, row in enumerate(x[100:140])])
    with pytest.raises(InvalidInput, match="integer id"):
        vray.build(path, floats, id_column="id", segment_rows=100)
    twice = ray.data.from_items([{"v": row, "id": 1000 + i // 2} for i, row in enumerate(x[100:140])])
    with pytest.raises(InvalidInput, match="distinct ids"):
        vray.build(path, twice, id_column="id", segment_rows=100)
    # id 2055 in the first and third batches, whose ranges each overlap the second's only
    # pairwise by min id: [2000, 2100], [2010, 2020], [2050, 2060] (it was committed twice)
    spread = [2000, 2030, 2055, 2100, 2010, 2012, 2014, 2020, 2050, 2052, 2055, 2060]
    thrice = ray.data.from_items([{"v": row, "id": i} for i, row in zip(spread, x[100:112])], override_num_blocks=3)
    with pytest.raises(InvalidInput, match="distinct ids, found 2055"):
        vray.build(path, thrice, id_column="id", segment_rows=4)
    with Store.open(path) as store:
        assert len(store) == 100 and store.version == 3
    assert _leftovers(path) == []
    rows = [list(r) for r in x[:50]]
    rows[30] = rows[30][:15]
    pq.write_table(pa.table({"v": pa.array(rows, pa.list_(pa.float32()))}), tmp_path / "ragged.parquet")
    with pytest.raises(InvalidInput, match="expected rows of one width"):
        vray.build(tmp_path / "r", tmp_path / "ragged.parquet", codec="RB1")
    with pytest.raises(InvalidInput, match="workers: expected None or an integer >= 1, found 0"):
        vray.build(tmp_path / "w", x[:50], codec="RB1", workers=0)
    table = pa.table({"id": pa.array(np.arange(20, dtype=np.uint64) + np.uint64(2 ** 63), pa.uint64()),
                      "v": pa.FixedSizeListArray.from_arrays(pa.array(x[:20].ravel()), 16)})
    pq.write_table(table, tmp_path / "u64.parquet")
    with pytest.raises(InvalidInput, match="ids must fit int64"):
        vray.build(tmp_path / "u", tmp_path / "u64.parquet", codec="RB1", id_column="id")


def test_cli_ray_build_takes_the_id_column_as_the_one_process_build_does(tmp_path, capsys):
    """vecz build --ray numbered the rows 0, 1, ... where the one-process build takes an
    integer column named 'id' (and without --column it refused the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vecz.engine.cli import main

    x = _data(300, 16, seed=4)
    table = pa.table({"id": np.arange(300) * 10 + 7, "v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 16)})
    pq.write_table(table, tmp_path / "x.parquet")
    (tmp_path / "parts").mkdir()  # a directory of Parquet files: --ray took no id column from it
    pq.write_table(table.slice(0, 150), tmp_path / "parts" / "a.parquet")
    pq.write_table(table.slice(150), tmp_path / "parts" / "b.parquet")
    for name, src, extra in (("plain", "x.parquet", []), ("ray", "x.parquet", ["--ray"]), ("dir", "parts", ["--ray"])):
        assert main(["build", str(tmp_path / src), str(tmp_path / name), "--codec", "RB1",
                     "--no-calibrate", *extra]) == 0
        assert "ids from column 'id'" in capsys.readouterr().err
    for name in ("ray", "dir"):
        with Store.open(tmp_path / "plain") as a, Store.open(tmp_path / name) as b:
            np.testing.assert_array_equal(a.ids(), b.ids())
            np.testing.assert_array_equal(a.search(x[:5], 3, rerank=10).ids, b.search(x[:5], 3, rerank=10).ids)
    assert main(["build", str(tmp_path / "x.parquet"), str(tmp_path / "zero"), "--ray", "--batch-rows", "0"]) == 2
    assert "--batch-rows must be >= 1, found 0" in capsys.readouterr().err  # (0 meant the default)
    (tmp_path / "two").mkdir()  # two vector columns: the message named only the API's column=
    pq.write_table(table.append_column("w", table.column("v")), tmp_path / "two" / "a.parquet")
    assert main(["build", str(tmp_path / "two"), str(tmp_path / "two_out"), "--ray"]) == 2
    assert "(vecz build: --column)" in capsys.readouterr().err
    (tmp_path / "parts" / "readme.txt").write_text("notes")  # (a raw ArrowInvalid traceback)
    assert main(["build", str(tmp_path / "parts"), str(tmp_path / "junk"), "--ray"]) == 2
    assert "expected a Parquet file or a directory of Parquet files" in capsys.readouterr().err


def _ray_workers_pids_of(marker_dir: Path) -> list[int]:
    return [int(p.name.split("-")[0]) for p in marker_dir.iterdir() if p.name != "pause"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def _paused(call, switch: str, seconds: str) -> tuple[threading.Thread, dict]:
    """Start call() in a thread with the pause hook's `switch` on (engine/ray.py `_pause`);
    the thread leaves {"out": what it returned} or {"error": what it raised}."""
    for p in CONTROL.iterdir():
        p.unlink()
    (CONTROL / switch).write_text(seconds)
    result: dict = {}

    def run():
        try:
            result["out"] = call()
        except BaseException as exc:  # noqa: BLE001 (the test looks at it)
            result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_a_worker_killed_mid_build_leaves_no_partial_version(tmp_path):
    x = _data(1200, 16, seed=7)
    path = tmp_path / "s"
    vray.build(path, x[:200], codec="PQ4x8", dense="f16", segment_rows=200)  # trained; version 3
    t, result = _paused(lambda: vray.build(path, x[200:], codec="PQ4x8", segment_rows=500), "pause", "1.5")
    try:
        deadline = time.monotonic() + 120
        while not _ray_workers_pids_of(CONTROL) and time.monotonic() < deadline:
            time.sleep(0.05)
        victims = _ray_workers_pids_of(CONTROL)
        assert victims, "no batch reached the pause"
        os.kill(victims[0], signal.SIGKILL)  # the worker dies with a staged dense file and no codes file
        deadline = time.monotonic() + 30
        while _alive(victims[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(victims[0])
        with Store.open(path) as store:  # meanwhile: the previous version, whole
            assert store.version == 3 and len(store) == 200
        (CONTROL / "pause").unlink()  # Ray's re-run of the batch goes straight through
    finally:
        (CONTROL / "pause").unlink(missing_ok=True)
        t.join(180)
    assert "error" not in result, result.get("error")
    assert result["out"].version == 4
    with Store.open(path) as store:
        assert len(store) == 1200
        with _reference(tmp_path / "ref", path, x) as ref:
            _same_rows(store, ref)
    assert _leftovers(path) == [] and check_store(path) == []


def test_a_driver_that_dies_leaves_its_staging_to_the_next_writer(tmp_path):
    x = _data(300, 8)
    path = tmp_path / "s"
    vray.build(path, x, codec="RB1")
    stale = path / ("staging-" + "ab" * 16)
    stale.mkdir()
    (stale / "0123.seg").write_bytes(b"partial")
    with Store.open(path) as store:  # readers never touch it
        assert len(store) == 300
    assert stale.exists()
    Store.open(path, mode="a").close()  # a writer's garbage collection removes it
    assert not stale.exists()


# ---------------------------------------------------------------------------- search


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    x = _data(3000, 32, seed=11)
    x[100:110] = x[99]  # equal vectors: equal code and exact scores, ties by id
    store = Store.create(tmp / "s", dim=32, codec="IVF8,RB1", dense="f16")
    for lo in range(0, 3000, 500):
        store.add(x[lo:lo + 500])
    store.delete(np.arange(40, 3000, 97))
    store.close()
    return tmp / "s", x


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_sharded_search_equals_the_store_search(served, shards):
    path, x = served
    q = np.concatenate([x[95:105] + 0.01, _data(30, 32, seed=12)])
    with Store.open(path) as store, vray.ShardedStore(path, shards=shards, cpus_per_shard=0.5) as sharded:
        assert sharded.version == store.version and len(sharded) == len(store)
        assert len(sharded.groups) == min(shards, store.info()["segments"])
        for kwargs in ({"rerank": 0}, {"rerank": 50}, {"rerank": 10, "nprobe": 1}, {"nprobe": 8, "rerank": 400},
                       {"k": 5000, "rerank": 5000}):
            k = kwargs.pop("k", 10)
            a = store.search(q, k, **kwargs)
            b = sharded.search(q, k, **kwargs)
            assert np.array_equal(a.ids, b.ids), kwargs
            assert np.array_equal(a.scores, b.scores), kwargs
            assert b.stats.rows_read == a.stats.rows_read and b.stats.candidates == a.stats.candidates
            assert b.stats.lists_probed == a.stats.lists_probed
            assert b.missing_shards == ()
        with pytest.raises(InvalidInput, match="confidence"):
            sharded.search(q, 10, rerank=50, confidence=0.9)
        with pytest.raises(InvalidInput, match="k must be"):
            sharded.search(q, 0)


def test_sharded_stats_count_the_distinct_lists_probed(tmp_path):
    """A codec trained on fewer distinct rows than lists repeats centroids that no query
    probes; the driver holds no centroids, so its actors say how many lists there are (it
    counted min(nprobe, nlist))."""
    rng = np.random.default_rng(10)
    with Store.create(tmp_path / "s", dim=16, codec="IVF64,SQ8", metric="l2", dense="f16") as s:
        s.train(np.repeat(rng.standard_normal((10, 16)).astype(np.float32), 8, axis=0))
        s.add(rng.standard_normal((300, 16)).astype(np.float32))
    q = rng.standard_normal((7, 16)).astype(np.float32)
    with Store.open(tmp_path / "s") as store, vray.ShardedStore(tmp_path / "s", shards=1, cpus_per_shard=0.5) as sh:
        for nprobe, rerank in ((64, 20), (4, 20), (64, "auto")):
            a = store.search(q, 5, nprobe=nprobe, rerank=rerank)
            b = sh.search(q, 5, nprobe=nprobe, rerank=rerank)
            assert b.stats.lists_probed == a.stats.lists_probed == 7 * min(nprobe, 10), (nprobe, rerank)


def test_a_sharded_store_without_segments_starts_and_answers_empty(tmp_path):
    # a version without segments has no actor: the driver asked actor 0 for its lists (IndexError)
    with Store.create(tmp_path / "e", dim=8, codec="IVF4,SQ8") as s:
        pass
    with Store.create(tmp_path / "d", dim=8, codec="IVF4,SQ8") as s:
        s.add(_data(50, 8))
        s.delete(np.arange(50))
        s.compact()
    for name in ("e", "d"):
        with vray.ShardedStore(tmp_path / name, shards=2, cpus_per_shard=0.5) as sh:
            res = sh.search(_data(10, 8)[:3], 5, rerank=10)
            assert (res.ids == -1).all() and res.ids.shape == (3, 5)


def test_sharded_auto_search_finds_what_the_store_finds(served, tmp_path):
    """rerank="auto" over shards: each shard walks its own shortlist with the store's
    committed model and the best k exact scores of all are kept (engine/ray.py
    `merge_auto`; the adversarial layouts are in tests/test_bounds.py): the answers are at
    least as good on the whole as one walk's over the store."""
    path, x = served
    copy = tmp_path / "s"
    shutil.copytree(path, copy)
    with Store.open(copy, mode="a") as w:
        w.calibrate()  # the model every shard reads
    q = np.concatenate([x[95:105] + 0.01, _data(40, 32, seed=13)])
    with Store.open(copy) as store, vray.ShardedStore(copy, shards=2, cpus_per_shard=0.5) as sharded:
        live = store.ids()
        vecs = store.get(live)
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        truth = live[np.argsort(-(qn @ unit.T), axis=1, kind="stable")[:, :10]]
        sims = qn @ unit.T

        def recall(ids):
            return np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(ids, truth)])

        def kth(res):  # each query's k-th exact score
            return np.take_along_axis(sims, np.searchsorted(live, res.ids), axis=1)[:, -1]

        for confidence, nprobe in ((None, None), (0.9, None), (None, 8)):
            a = store.search(q, 10, rerank="auto", confidence=confidence, nprobe=nprobe)
            b = sharded.search(q, 10, rerank="auto", confidence=confidence, nprobe=nprobe)
            assert b.ids.shape == (len(q), 10) and np.isin(b.ids, live).all() and b.missing_shards == ()
            assert recall(b.ids) >= recall(a.ids), (confidence, nprobe)
            # at least as good on the whole: its shortlists hold more rows (cap rows per shard)
            assert kth(b).mean() >= kth(a).mean() - 1e-6, (confidence, nprobe)
            # scores are the exact ones, best first; the seeds alone are 2 k rows (engine/ray.py)
            exact = np.take_along_axis(sims, np.searchsorted(live, b.ids), axis=1)
            np.testing.assert_allclose(b.scores, exact, rtol=1e-3, atol=1e-3)
            assert (np.diff(b.scores, axis=1) <= 0).all()
            assert b.stats.rows_per_query.shape == (len(q),) and (b.stats.rows_per_query >= 2 * 10).all()
            assert b.stats.rows_read == int(b.stats.rows_per_query.sum())
        low = sharded.search(q, 10, rerank="auto", confidence=0.9).stats.rows_read
        assert low < sharded.search(q, 10, rerank="auto").stats.rows_read  # the knob reaches the shards


def test_a_cluster_too_small_for_the_shards_says_so(served):
    path, _ = served
    with pytest.raises(ShardUnavailable, match="did not start within 3 s"):
        vray.ShardedStore(path, shards=3, cpus_per_shard=1.5, start_timeout=3)


def _search_killing_one_shard_midway(sharded, q, call=None, switch: str = "pause-search", marker: str = "search"):
    """Run `call` (default sharded.search(q, 10, rerank=50)) while the shards pause at the
    hook `switch` (the first round by default); kill the first shard that reaches the pause
    (it touches `marker`-<pid>), let the others go on; return the victim's pid and the
    result or the error."""
    call = call or (lambda: sharded.search(q, 10, rerank=50))
    t, result = _paused(call, switch, "1.0")
    try:
        deadline = time.monotonic() + 60
        while not list(CONTROL.glob(f"{marker}-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        markers = list(CONTROL.glob(f"{marker}-*"))
        assert markers, f"no shard reached the pause {switch}"
        victim = int(markers[0].name.split("-")[1])
        os.kill(victim, signal.SIGKILL)  # mid-search: the call is in flight on that actor
        (CONTROL / switch).unlink()
    finally:
        (CONTROL / switch).unlink(missing_ok=True)
        t.join(120)
    return victim, result


def test_an_actor_killed_mid_search_is_restarted_or_named(served):
    path, x = served
    q = x[:20] + 0.02
    with Store.open(path) as store:
        want = store.search(q, 10, rerank=50)
    with vray.ShardedStore(path, shards=2, max_restarts=1, cpus_per_shard=0.5) as sharded:
        victim, result = _search_killing_one_shard_midway(sharded, q)
        assert "error" not in result, result.get("error")
        assert np.array_equal(result["out"].ids, want.ids) and np.array_equal(result["out"].scores, want.scores)
        assert victim not in sharded.pids()  # the shard's actor was restarted
    with vray.ShardedStore(path, shards=2, max_restarts=0, cpus_per_shard=0.5) as sharded:
        pids = sharded.pids()
        victim, result = _search_killing_one_shard_midway(sharded, q)
        assert isinstance(result.get("error"), ShardUnavailable), result
        assert f"shard {pids.index(victim)} of 2" in str(result["error"])


def test_an_actor_that_dies_is_restarted_or_named(served):
    path, x = served
    q = x[:20] + 0.02
    with Store.open(path) as store:
        want = store.search(q, 10, rerank=50)
    with vray.ShardedStore(path, shards=2, max_restarts=1, cpus_per_shard=0.5) as sharded:
        os.kill(sharded.pids()[1], signal.SIGKILL)
        got = sharded.search(q, 10, rerank=50)  # the actor comes back (same shard) and answers
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.scores, want.scores)
    with vray.ShardedStore(path, shards=2, max_restarts=0, cpus_per_shard=0.5) as sharded:
        os.kill(sharded.pids()[0], signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(ShardUnavailable, match=r"shard 0 of 2 \(\d+ segment\(s\), serials"):
            sharded.search(q, 10, rerank=50)
        part = sharded.search(q, 10, rerank=50, partial=True)
        assert part.missing_shards == (0,)
        mine = {r.serial for r in sharded.groups[1]}
        with Store._open_shard(path, sharded.version, mine) as half:
            alone = half.search(q, 10, rerank=50)
        assert np.array_equal(part.ids, alone.ids) and np.array_equal(part.scores, alone.scores)


def _two_segments(tmp_path) -> tuple[Path, np.ndarray, Store]:
    """A writer holding a store of two 200-row RB1 segments (no automatic merges)."""
    path = tmp_path / "s"
    x = _data(400, 16, seed=5)
    w = Store.create(path, dim=16, codec="RB1", dense="f32")
    w.auto_merge_rows = 0
    w.add(x[:200])
    w.add(x[200:])
    return path, x, w


def test_an_actor_that_dies_after_a_writer_moved_on_loads_the_pinned_version(tmp_path):
    # a writer commits past the store's `retain` versions while a ShardedStore serves an old
    # one: the served version is pinned, so an actor that dies loads it again and answers
    # as before; `close` releases the pin and the next collection prunes the version
    path, x, w = _two_segments(tmp_path)
    with w:
        with vray.ShardedStore(path, shards=2, max_restarts=1, cpus_per_shard=0.5) as sharded:
            served = sharded.version
            want = sharded.search(x[:3], 5, rerank=10)
            for i in range(w._body.retain + 1):
                w.add(x[i:i + 1] + 1)
            assert (path / mf.manifest_name(served)).exists() and w.info()["pinned"] == [served]
            os.kill(sharded.pids()[0], signal.SIGKILL)
            time.sleep(0.5)
            got = sharded.search(x[:3], 5, rerank=10)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.scores, want.scores)
        w.add(x[:1] + 2)
        assert not (path / mf.manifest_name(served)).exists()


def test_a_sharded_store_that_fails_to_start_releases_its_pin(tmp_path):
    # a shard whose actor cannot load its segment: __init__ raised ShardUnavailable but kept
    # the version pinned while anything held the exception (a review found it)
    from vecz.engine.commit import pinned_versions
    from vecz.formats.body import parse_body

    path, x, w = _two_segments(tmp_path)
    w.close()
    seg = parse_body(mf.read_manifest(path), "v").segments[1].file
    with open(path / seg, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 64)
    # and the error names what the actor's load raised (it said the actor "died", the damaged
    # file only in the worker's log)
    with pytest.raises(ShardUnavailable, match=f"could not load its segments: .*(ChecksumError|FormatError).*{seg}") \
            as raised:
        vray.ShardedStore(path, shards=2, max_restarts=0, cpus_per_shard=0.5, start_timeout=60)
    assert raised.value is not None and pinned_versions(path) == []


def test_a_version_served_unpinned_says_so_when_an_actor_cannot_reload_it(tmp_path, monkeypatch):
    # where no pin can be made (no write permission on the store), the ShardedStore warns and
    # serves unpinned; an actor that dies after the version was pruned cannot load it again,
    # and the error says why
    from vecz.errors import StorageError

    def refused(path, version):
        raise StorageError("pin version: permission denied", 13, str(path))

    monkeypatch.setattr(vray, "VersionPin", refused)
    path, x, w = _two_segments(tmp_path)
    with w:
        with pytest.warns(RuntimeWarning, match="served unpinned"):
            sharded = vray.ShardedStore(path, shards=2, max_restarts=1, cpus_per_shard=0.5)
        with sharded:
            served = sharded.version
            for i in range(w._body.retain + 1):
                w.add(x[i:i + 1] + 1)
            assert not (path / mf.manifest_name(served)).exists()
            os.kill(sharded.pids()[0], signal.SIGKILL)
            time.sleep(0.5)
            with pytest.raises(ShardUnavailable, match=f"version {served} is no longer in the store"):
                sharded.search(x[:3], 5, rerank=10)


def test_an_actor_killed_between_the_auto_rounds_seeds_again_or_gives_its_seeds(served, tmp_path):
    """rerank="auto" over 2 shards, one actor killed at the start of the second round (its
    seeded walk is lost with it): restarted, it seeds the same walk again and the answer is
    the one of a search nobody killed; not restarted, partial=True answers from the other
    shard's walk and the lost shard's seed rows, as the same two rounds computed here in
    one process give them (`shard_auto_seed`, `auto_floor`, `shard_auto_finish`)."""
    from vecz.engine.ray import auto_floor, auto_limits, merge_auto, seed_rows
    from vecz.engine.search import shard_auto_finish, shard_auto_seed

    path, x = served
    copy = tmp_path / "s"
    shutil.copytree(path, copy)
    with Store.open(copy, mode="a") as w:
        w.calibrate()
    q = x[:20] + 0.02

    def killed_in_round_2(sharded):
        victim, result = _search_killing_one_shard_midway(
            sharded, q, lambda: sharded.search(q, 10, rerank="auto:100", nprobe=8, confidence=0.999, partial=True),
            "pause-finish", "finish")
        assert "error" not in result, result.get("error")
        return victim, result["out"]

    with vray.ShardedStore(copy, shards=2, max_restarts=1, cpus_per_shard=0.5) as sharded:
        want = sharded.search(q, 10, rerank="auto:100", nprobe=8, confidence=0.999)
        victim, got = killed_in_round_2(sharded)
        assert got.missing_shards == () and victim not in sharded.pids()
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.scores, want.scores)
        assert got.stats.rows_read == want.stats.rows_read
    with vray.ShardedStore(copy, shards=2, max_restarts=0, cpus_per_shard=0.5) as sharded:
        pids = sharded.pids()
        victim, got = killed_in_round_2(sharded)
        lost = pids.index(victim)
        assert got.missing_shards == (lost,)
        shards = [Store._open_shard(copy, sharded.version, {r.serial for r in g}) for g in sharded.groups]
        try:
            seeded = [shard_auto_seed(s.codec, s.metric, s._segments, q, 10, nprobe=8, cap=100,
                                      model=s.error_model(), confidence=0.999, prefetch=None,
                                      seeds=seed_rows(10, 2)) for s in shards]
            metric = shards[0].metric
            floor = auto_floor(metric, [p[1] for p in seeded], 10)
            limits = auto_limits(metric, [(p[0].est, p[0].ids) for p in seeded], 100)
            parts = [p[1] if j == lost else shard_auto_finish(p[0], floor, len(q), 10, metric, limits[j])
                     for j, p in enumerate(seeded)]
        finally:
            for s in shards:
                s.close()
        top_s, top_i, _ = merge_auto(metric, parts, 10)
        assert np.array_equal(got.ids, top_i) and np.array_equal(got.scores, top_s)
        assert (got.ids >= 0).all()


def test_a_search_failing_between_the_auto_rounds_leaves_no_walk_behind(served, tmp_path, monkeypatch):
    """rerank="auto" over 2 shards failing after some shards seeded their walks: an error in
    the driver before round 2 is sent (here the merge of the shortlists raising
    MemoryError), then one actor dead with partial=False (ShardUnavailable after the other
    shard seeded). Every walk is dropped (review of stop 33: they stayed until 16 more
    searches pushed them out, ~14 MB each for 2,000 queries at cap 100)."""
    import ray

    path, x = served
    copy = tmp_path / "s"
    shutil.copytree(path, copy)
    with Store.open(copy, mode="a") as w:
        w.calibrate()

    def no_memory(*args, **kwargs):
        raise MemoryError("test")

    with vray.ShardedStore(copy, shards=2, max_restarts=0, cpus_per_shard=0.5) as sharded:
        def pending():
            return [ray.get(a.__ray_call__.remote(lambda self: len(self._walks))) for a in sharded.actors]

        sharded.search(x[:20], 10, rerank="auto")
        assert pending() == [0, 0]
        with monkeypatch.context() as m:
            m.setattr(vray, "auto_limits", no_memory)
            for _ in range(2):
                with pytest.raises(MemoryError):
                    sharded.search(x[:20], 10, rerank="auto")
        assert pending() == [0, 0]
        os.kill(sharded.pids()[0], signal.SIGKILL)
        time.sleep(0.5)
        for _ in range(2):
            with pytest.raises(ShardUnavailable, match="shard 0 of 2"):
                sharded.search(x[:20], 10, rerank="auto")
        assert ray.get(sharded.actors[1].__ray_call__.remote(lambda self: len(self._walks))) == 0


# ---------------------------------------------------------------------------- CLI, no Ray


def test_cli_build_and_search_with_ray(tmp_path, capsys):
    from vecz.engine.cli import main

    x = _data(900, 12, seed=2)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", x[:5] + 0.01)
    assert main(["build", str(tmp_path / "x.npy"), str(tmp_path / "s"), "--codec", "RB2", "--batch-rows", "300",
                 "--ray"]) == 0
    captured = capsys.readouterr()
    assert "900 vectors of dim 12 committed as version 3 in" in captured.out, captured.out
    assert "calibrated on pseudo-queries from the rows" in captured.err, captured.err
    with Store.open(tmp_path / "s") as store:
        assert max(store.info()["segment_rows"]) <= 300 and store.spec == "RB2"
        # the build commits auto's error model after its rows, as a one-process build does
        assert store.version == 4 and store.calibration["source"] == "rows" and store.calibration["rows"] == 900
    assert main(["search", str(tmp_path / "s"), str(tmp_path / "q.npy"), "--out", str(tmp_path / "r.npy"),
                 "--ray", "--shards", "2"]) == 0
    with Store.open(tmp_path / "s") as store:
        want = store.search(x[:5] + 0.01, 10)
    assert np.array_equal(np.load(tmp_path / "r.npy"), want.ids)
    # auto over the shards, with the model the build committed
    assert main(["search", str(tmp_path / "s"), str(tmp_path / "q.npy"), "--out", str(tmp_path / "a.npy"),
                 "--rerank", "auto", "--confidence", "0.99", "--ray", "--shards", "2"]) == 0
    assert np.load(tmp_path / "a.npy").shape == (5, 10)
    assert "rows (" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "s"), str(tmp_path / "q.npy"), "--rerank", "auto", "--calibrate",
                 str(tmp_path / "q.npy"), "--ray"]) == 2
    assert "vecz calibrate STORE --sample" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "x.npy"), str(tmp_path / "s"), "--ray"]) != 0
    assert "found an existing store" in capsys.readouterr().err


def test_vecz_works_and_says_what_to_install_without_ray(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import numpy as np, vecz\n"
        "from vecz.engine import ray as vray\n"
        f"s = vecz.Store.create({str(tmp_path / 's')!r}, dim=4, codec='RB1'); s.add(np.eye(4) + 0.1)\n"
        "assert s.search(np.eye(4), 1).ids.ravel().tolist() == [0, 1, 2, 3]\n"
        "try:\n"
        f"    vray.build({str(tmp_path / 't')!r}, np.eye(4))\n"
        "except vecz.errors.MissingDependency as exc:\n"
        "    assert \"pip install 'vecz[ray]'\" in str(exc), exc\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    assert MissingDependency is not None


def test_sharded_store_arguments_are_checked_before_any_actor(tmp_path):
    """threads_per_shard 1.5 or "2" killed the actor (ShardUnavailable naming ActorDiedError),
    0 or True were taken, cpus_per_shard -1 or "1" raised Ray's ValueError/TypeError."""
    for kw in ({"threads_per_shard": 0}, {"threads_per_shard": True}, {"threads_per_shard": 1.5},
               {"threads_per_shard": "2"}, {"cpus_per_shard": -1}, {"cpus_per_shard": "1"},
               {"cpus_per_shard": True}, {"cpus_per_shard": float("nan")}, {"shards": 0},
               # these reached Ray: its ValueError or TypeError (a negative timeout after the actors started)
               {"max_restarts": -5}, {"max_restarts": "2"}, {"start_timeout": -1}, {"start_timeout": "x"}):
        with pytest.raises(InvalidInput, match=next(iter(kw))):
            vray.ShardedStore(tmp_path / "nowhere", **kw)


def test_a_closed_sharded_store_says_so_and_partial_is_checked(tmp_path):
    # search(partial="no") was taken as true; a closed ShardedStore raised a plain VeczError
    # from search and a TypeError from pids
    from vecz.errors import StoreClosed

    x = _data(100, 8)
    with Store.create(tmp_path / "s", dim=8, codec="SQ8") as s:
        s.add(x)
    sh = vray.ShardedStore(tmp_path / "s", shards=1, cpus_per_shard=0.5)
    with pytest.raises(InvalidInput, match="partial: expected True or False, found 'no'"):
        sh.search(x[:2], 3, partial="no")
    assert len(sh.pids()) == 1
    sh.close()
    for call in (lambda: sh.search(x[:2], 3), sh.pids):
        with pytest.raises(StoreClosed, match="closed ShardedStore"):
            call()


def test_ray_build_says_a_bad_training_row_is_numbered_in_the_sample(tmp_path):
    # rows 3000-3399 NaN: the error said "nan in row 767" (a healthy data row) of a random sample
    x = _data(4000, 16, seed=3)
    x[3000:3400] = np.nan
    with pytest.raises(InvalidInput, match="drawn at random from the data to train the codec, not the data's row"):
        vray.build(tmp_path / "s", x, codec="SQ8", train_size=1000, segment_rows=1000)


def test_a_damaged_newest_manifest_names_the_version_a_sharded_store_can_serve(tmp_path):
    # Store.open named the newest version that still opens; ShardedStore raised a bare ChecksumError
    from vecz.errors import StoreCorrupted

    x = _data(300, 16)
    with Store.create(tmp_path / "s", dim=16, codec="SQ8") as s:
        s.add(x[:150])
        s.add(x[150:])
        newest = tmp_path / "s" / mf.manifest_name(s.version)
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupted, match=r"The newest version that opens is 2: ShardedStore\(.*, version=2\)"):
        vray.ShardedStore(tmp_path / "s", cpus_per_shard=0.5)
    with vray.ShardedStore(tmp_path / "s", version=2, shards=1, cpus_per_shard=0.5) as sh:
        assert len(sh) == 150


def test_ray_build_refuses_automatic_ids_past_int64(tmp_path):
    # (a raw OverflowError from a worker, wrapped in a RayTaskError)
    x = _data(10, 8)
    with Store.create(tmp_path / "s", dim=8, codec="SQ8") as s:
        s.add(x[:2], ids=[0, 2**63 - 1])
    with pytest.raises(InvalidInput, match="automatic ids 9223372036854775808.. for 5 rows exceed int64"):
        vray.build(tmp_path / "s", x[2:7])
    with Store.open(tmp_path / "s") as s:
        assert len(s) == 2


def test_sharded_queries_are_checked_as_a_stores_and_a_numpy_version_opens(tmp_path):
    """A ShardedStore answered a zero cosine query 'no neighbours' on a store without live
    rows (and with rows it came back as a RayTaskError from the actor); version=np.int64(v)
    was refused although Store.open takes it."""
    x = _data(200, 8)
    with Store.create(tmp_path / "s", dim=8, codec="SQ8") as s:
        s.add(x)
        v = s.version
        s.delete(np.arange(200))
    zero = np.zeros((2, 8), np.float32)
    for version in (v, None):  # with rows, then every row deleted
        with vray.ShardedStore(tmp_path / "s", shards=1, cpus_per_shard=0.5,
                               version=None if version is None else np.int64(version)) as sh:
            with pytest.raises(InvalidInput, match="row 0 all zeros"):
                sh.search(zero, 3)


def test_ray_build_names_a_refused_rows_id(tmp_path):
    """A row the f16 tier refuses was named by its row within a Ray batch ('row 600' for data
    row 2100); it names the row's id now."""
    x = _data(3000, 16)
    x[2100] *= 1e-6
    with pytest.raises(InvalidInput, match=r"row 600 of a batch \(id 2100\)"):
        vray.build(tmp_path / "s", x, codec="SQ8", dense="f16", segment_rows=1000, workers=1)
