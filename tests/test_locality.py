"""The dense files' row order (kernels/locality.py) and the stores that write it."""

from __future__ import annotations

import errno
import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.engine import Store, check_store
from vecz.errors import StorageError
from vecz.engine.segments import LOCALITY_MIN_ROWS
from vecz.formats.dense import row_pages
from vecz.kernels.locality import locality_order


def page_runs(positions, offset: int, row_bytes: int, page: int = 4096) -> int:
    """Runs of contiguous pages holding the rows at `positions` (`row_pages` joins touching
    ranges): the storage requests reading them takes."""
    p = np.asarray(positions, dtype=np.int64)
    return int(row_pages(offset, row_bytes, int(p.max(initial=-1)) + 1, p, page)[0].size)


def _clusters(n_clusters: int, size: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight, well-separated clusters, rows shuffled: (x, cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32) * 10
    label = np.repeat(np.arange(n_clusters), size)
    x = centres[label] + 0.01 * rng.standard_normal((label.size, dim)).astype(np.float32)
    perm = rng.permutation(label.size)
    return x[perm], label[perm]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), dim=st.integers(1, 9), n_groups=st.integers(1, 5), seed=st.integers(0, 3),
       dup=st.booleans(), f16=st.booleans())
def test_order_is_a_permutation_grouped_and_deterministic(n, dim, n_groups, seed, dup, f16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float16 if f16 else np.float32)
    if dup and n:
        x[:] = x[0]  # every row alike: no direction to split along
    groups = rng.integers(0, n_groups, n)
    order = locality_order(x, groups, seed=seed)
    assert order.dtype == np.int64 and np.array_equal(np.sort(order), np.arange(n))
    assert (np.diff(groups[order]) >= 0).all()  # each group one stretch, ascending
    np.testing.assert_array_equal(order, locality_order(x, groups, seed=seed))
    # a strided view orders like its copy (rows are gathered into contiguous copies)
    wide = np.zeros((n, 2 * dim), dtype=x.dtype)
    wide[:, ::2] = x
    np.testing.assert_array_equal(locality_order(wide[:, ::2], groups, seed=seed), order)


def test_tiny_groups_keep_their_row_order():
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_array_equal(locality_order(x, np.array([2, 0, 1, 0, 2, 1])), [1, 3, 2, 5, 0, 4])


def _runs_per_cluster(order: np.ndarray, label: np.ndarray) -> float:
    pos = np.empty(label.size, dtype=np.int64)
    pos[order] = np.arange(label.size)
    return float(np.mean([1 + np.count_nonzero(np.diff(np.sort(pos[label == c])) > 1) for c in np.unique(label)]))


@pytest.mark.parametrize("n_clusters,size,most", [(64, 16, 1.5), (40, 150, 4.0)])
def test_near_rows_end_up_together(n_clusters, size, most):
    # shuffled clusters (the second case: groups past the direction's sample of 1,024 rows;
    # a median split through a cluster of 150 leaves it in two stretches): each cluster ends
    # up in a stretch or a few, where the shuffled order gives about `size` runs
    x, label = _clusters(n_clusters, size, 12)
    assert _runs_per_cluster(locality_order(x, None), label) <= most


def test_cosine_orders_by_direction():
    # clusters of directions with norms from 0.01 to 100: by direction (row_scale = 1 / norm)
    # each stays together; by the raw rows the norms would decide
    x, label = _clusters(32, 20, 12, seed=3)
    norms = np.random.default_rng(4).uniform(0.01, 100.0, len(x))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True) * norms[:, None]).astype(np.float32)
    by_direction = locality_order(x, None, row_scale=1.0 / norms)
    assert _runs_per_cluster(by_direction, label) <= 1.5
    assert _runs_per_cluster(locality_order(x, None), label) > 3


def test_large_values_neither_overflow_nor_change_the_order():
    x, _ = _clusters(20, 30, 16, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in float32 would warn
        big = locality_order(x * np.float32(2.0**100), None)
    np.testing.assert_array_equal(big, locality_order(x, None))  # a power of two scales exactly


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        locality_order(np.zeros(5), None)
    with pytest.raises(ValueError, match="groups"):
        locality_order(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="row_scale"):
        locality_order(np.zeros((5, 2)), None, row_scale=np.ones(3))


def test_page_runs_counts_runs_of_contiguous_pages():
    # rows of 1000 bytes from byte 96: row r covers bytes [96 + 1000 r, 1096 + 1000 r)
    assert page_runs(np.array([], dtype=np.int64), 96, 1000) == 0
    assert page_runs([0], 96, 1000) == 1
    assert page_runs([0, 1, 2, 3], 96, 1000) == 1  # pages 0 and 1, touching
    assert page_runs([0, 9], 96, 1000) == 2        # pages 0 and 2: page 1 between
    assert page_runs([4, 3], 96, 1000) == 1        # row 3 spans pages 0-1, row 4 page 1
    assert page_runs([0, 40], 96, 1000, page=4096) == 2


def _dense_table(path) -> pa.Table:
    [name] = [p for p in path.iterdir() if p.name.startswith("dense-")]
    return pa.ipc.open_file(pa.memory_map(str(name))).read_all()


@pytest.mark.parametrize("spec,dense", [("IVF8,PQ8x8", "f32"), ("RB1", "f16")])
def test_store_writes_near_rows_together_and_reads_them_back(tmp_path, spec, dense):
    x, label = _clusters(40, 10, 256, seed=1)
    ids = np.arange(1000, 1000 + len(x)) * 3
    with Store.create(tmp_path / "s", dim=256, metric="l2", codec=spec, dense=dense) as s:
        s.add(x, ids=ids)
        seg = s._segments[0]
        # the segment keeps its rows by id; its dense file holds them in locality order
        assert seg.rec.dense_map == "sections" and seg.dense_file is None and seg.dense_row.dtype == np.uint32
        file_ids = _dense_table(tmp_path / "s").column("id").to_numpy()
        assert not (np.diff(file_ids) > 0).all() and np.array_equal(np.sort(file_ids), ids)
        np.testing.assert_array_equal(file_ids[seg.dense_row], seg.ids)
        # ... and each cluster's rows (10 of 1 KiB or 512 B) sit on few runs of pages: in
        # id order (the rows shuffled) they would take about 10
        info = seg.dense[0].info
        runs = [page_runs(seg.dense_row[label == c], info.offset, info.row_bytes) for c in range(40)]
        assert np.mean(runs) <= 2.5, np.mean(runs)
        shuffled = [page_runs(np.flatnonzero(label == c), info.offset, info.row_bytes) for c in range(40)]
        assert np.mean(shuffled) >= 6, np.mean(shuffled)
        want = x.astype(np.float16).astype(np.float32) if dense == "f16" else x
        np.testing.assert_array_equal(s.get(ids[::7]), want[::7])
        q = x[::50] + 0.001
        res = s.search(q, 5, rerank=len(x))
        d = ((q[:, None, :].astype(np.float64) - want[None].astype(np.float64)) ** 2).sum(-1)
        np.testing.assert_array_equal(res.ids[:, 0], ids[d.argmin(axis=1)])
        np.testing.assert_allclose(res.scores[:, 0], d.min(axis=1), rtol=1e-5, atol=1e-5)
    with Store.open(tmp_path / "s") as s:  # the same, read back
        np.testing.assert_array_equal(s.search(q, 5, rerank=len(x)).ids, res.ids)
        np.testing.assert_array_equal(s.get(ids[::7]), want[::7])
    assert check_store(tmp_path / "s") == []


def test_merges_keep_vectors_and_write_locality_order(tmp_path):
    x, label = _clusters(30, 10, 256, seed=2)
    with Store.create(tmp_path / "s", dim=256, metric="l2", codec="IVF4,PQ8x8", dense="f32") as s:
        a = s.add(x[:150])
        b = s.add(x[150:])
        s.delete(a[::4])
        s.compact()
        assert s.info()["segments"] == 1
        seg = s._segments[0]
        assert seg.rec.dense_map == "sections" and len(seg.rec.dense) == 1 and seg.dense_file is None
        kept = np.concatenate([np.delete(np.arange(150), np.arange(0, 150, 4)), np.arange(150, 300)])
        np.testing.assert_array_equal(s.get(np.concatenate([np.delete(a, np.arange(0, a.size, 4)), b])), x[kept])
        # the copied file is in locality order: each cluster's rows (1 KiB each) on few runs of pages
        info = seg.dense[0].info
        runs = [page_runs(seg.dense_row[label[kept] == c], info.offset, info.row_bytes) for c in range(30)]
        assert np.mean(runs) <= 2.5, np.mean(runs)
    assert check_store(tmp_path / "s") == []


def test_a_codes_file_that_cannot_be_written_leaves_nothing(tmp_path, monkeypatch):
    # the dense file is written first; when the codes file then fails, both are gone and
    # nothing is committed
    import vecz.engine.writes as writes

    x, _ = _clusters(10, 10, 24, seed=6)
    with Store.create(tmp_path / "s", dim=24, codec="RB1") as s:
        s.add(x[:50])
        before = sorted(p.name for p in (tmp_path / "s").iterdir())
        real = writes.sg.write_segment

        def full(path, *args, **kw):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(writes.sg, "write_segment", full)
        with pytest.raises(StorageError, match="write the codes segment"):
            s.add(x[50:])
        monkeypatch.setattr(writes.sg, "write_segment", real)
        assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before and len(s) == 50
        s.add(x[50:])
        np.testing.assert_array_equal(s.get(np.arange(100)), x)
    assert check_store(tmp_path / "s") == []


def test_small_segments_stay_one_to_one(tmp_path):
    with Store.create(tmp_path / "s", dim=24, codec="RB1") as s:
        s.add(np.random.default_rng(0).standard_normal((LOCALITY_MIN_ROWS - 1, 24)).astype(np.float32))
        seg = s._segments[0]
        assert seg.rec.dense_map == "identity" and seg.dense_row is None
