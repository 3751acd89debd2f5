"""What Store.add/search accept (engine/inputs.py): numpy, pyarrow arrays and tables, pandas,
DLPack and __array__ objects — all giving the same rows as the numpy array they hold — and
the typed errors for what cannot be a batch of vectors. Also the library's manners: use
after close() is typed, a zero vector under cosine is refused, and the caller's BLAS and
Numba thread settings survive searches of every size."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info, threadpool_limits

from vecz import Codec, Store
from vecz.engine.inputs import as_matrix
from vecz.errors import DimensionMismatch, InvalidInput, StoreClosed

DIM = 12


def _x(n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _fsl(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])


class _DLPackOnly:
    """A tensor-like object that exposes only DLPack (as torch/jax do besides __array__)."""

    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr

    def __dlpack__(self, **kw):
        return self._arr.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._arr.__dlpack_device__()


class _ArrayOnly:
    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr

    def __array__(self, dtype=None, copy=None):
        return self._arr if dtype is None else self._arr.astype(dtype)


def _forms(x: np.ndarray):
    import pandas as pd

    half = len(x) // 2
    yield "numpy", x
    yield "numpy-strided", np.asfortranarray(x)
    yield "float16", x.astype(np.float16)
    yield "arrow-fixed-size-list", _fsl(x)
    yield "arrow-list", pa.array(list(x), type=pa.list_(pa.float32()))
    yield "arrow-large-list-f64", pa.array(list(x.astype(np.float64)), type=pa.large_list(pa.float64()))
    yield "arrow-chunked", pa.chunked_array([_fsl(x[:half]), _fsl(x[half:])])
    yield "arrow-sliced", _fsl(np.concatenate([x[:1], x]))[1:]
    yield "arrow-table", pa.table({"id": np.arange(len(x)), "emb": _fsl(x)})
    yield "arrow-record-batch", pa.RecordBatch.from_pydict({"emb": _fsl(x)})
    yield "pandas-series", pd.Series(list(x))
    yield "pandas-frame", pd.DataFrame({"emb": list(x), "n": np.arange(len(x))})
    yield "pandas-float-columns", pd.DataFrame(x)
    yield "pandas-arrow-dtype", pd.Series(pd.arrays.ArrowExtensionArray(pa.array(list(x), type=pa.list_(pa.float32()))))
    yield "dlpack", _DLPackOnly(x)
    yield "__array__", _ArrayOnly(x)
    yield "nested-lists", x.tolist()


@pytest.mark.parametrize("name", [n for n, _ in _forms(_x(4))])
def test_every_input_form_gives_the_same_rows(name):
    x = _x()
    value = dict(_forms(x))[name]
    got = np.asarray(as_matrix(value, DIM, "vectors"), dtype=np.float32)
    want = x.astype(np.float16).astype(np.float32) if name == "float16" else x
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["arrow-fixed-size-list", "arrow-table", "pandas-frame", "dlpack", "arrow-chunked"])
def test_store_add_and_search_take_them(tmp_path, name):
    x = _x(60)
    with Store.create(tmp_path / "s", dim=DIM, codec="PQ4x8") as store:
        ids = store.add(dict(_forms(x))[name])
        np.testing.assert_array_equal(ids, np.arange(60))
        want = store.search(x[:5], 3, rerank=20)
        got = store.search(dict(_forms(x[:5]))[name], 3, rerank=20)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.ids[:, 0], np.arange(5))
        np.testing.assert_array_equal(store.get(np.arange(60)), x)


def test_a_table_column_is_chosen_by_name(tmp_path):
    x, y = _x(10), _x(10, seed=1)
    table = pa.table({"a": _fsl(x), "b": _fsl(y)})
    with Store.create(tmp_path / "s", dim=DIM, codec="Flat", metric="l2") as store:
        with pytest.raises(InvalidInput, match="several"):
            store.add(table)
        store.add(table, column="b")
        np.testing.assert_array_equal(store.get(np.arange(10)), y)
        with pytest.raises(InvalidInput, match="column='c'"):
            store.add(table, column="c")
        with pytest.raises(InvalidInput, match="applies to"):
            store.add(x, column="a")


@pytest.mark.parametrize("bad, error, match", [
    (pa.array([[1.0] * DIM, [1.0] * (DIM - 1)], type=pa.list_(pa.float32())), InvalidInput, "row 1 has 11 values"),
    (pa.array([[1.0] * DIM, None], type=pa.list_(pa.float32())), InvalidInput, "row 1 is null"),
    (pa.array([[1.0] * (DIM - 1), [0.5] * DIM], type=pa.list_(pa.float32())), InvalidInput, "row 1 has 12 values"),
    (pa.array([[1.0] * DIM, [None] + [1.0] * (DIM - 1)], type=pa.list_(pa.float32())), InvalidInput, "null value"),
    (pa.array([[1] * DIM], type=pa.list_(pa.int32())), InvalidInput, "list of floats"),
    (pa.table({"x": [1, 2]}), InvalidInput, "found none"),
    (_fsl(np.ones((2, DIM + 1), np.float32)), DimensionMismatch, "expected width 12, found 13"),
    ([[1.0] * DIM, [1.0]], InvalidInput, "numpy cannot make one array"),
])
def test_bad_batches_are_typed_errors(tmp_path, bad, error, match):
    with Store.create(tmp_path / "s", dim=DIM, codec="Flat") as store:
        with pytest.raises(error, match=match):
            store.add(bad)
        assert len(store) == 0 and store.version == 1  # nothing was committed


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 6), dim=st.integers(1, 5), data=st.data())
def test_masked_entries_are_refused_naming_the_first(rows, dim, data):
    """What lies under a mask is not data (np.asarray would hand it over as if it were): a
    masked array passes only without masked entries, as its data."""
    x = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=rows * dim, max_size=rows * dim)),
                    dtype=bool).reshape(rows, dim)
    m = np.ma.masked_array(x, mask=mask)
    if not mask.any():
        got = as_matrix(m, dim, "queries")
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, x)
        return
    row, col = np.argwhere(mask)[0]
    with pytest.raises(InvalidInput, match=rf"queries: expected no masked entries .*, found {mask.sum()} masked, "
                                           rf"the first in row {row}, column {col}$"):
        as_matrix(m, dim, "queries")


def test_masked_queries_are_refused_by_search(tmp_path):
    x = _x(30)
    with Store.create(tmp_path / "s", dim=DIM, codec="Flat", metric="l2") as store:
        store.add(x)
        m = np.ma.masked_array(x[:3].copy(), mask=np.zeros((3, DIM), bool))
        m.mask[1, 4] = True
        with pytest.raises(InvalidInput, match=r"found 1 masked, the first in row 1, column 4"):
            store.search(m, 3)
        with pytest.raises(InvalidInput, match=r"the first in column 2"):
            store.search(np.ma.masked_array(x[0], mask=np.arange(DIM) == 2), 3)
        np.testing.assert_array_equal(store.search(np.ma.masked_array(x[:3]), 3).ids, store.search(x[:3], 3).ids)


def test_a_pandas_series_with_nan_says_nan_and_with_none_says_null(tmp_path):
    """pyarrow's from_pandas=True reads NaN as a missing value: a NaN inside a vector would be
    reported as a null. A missing row (None, NaN, pd.NA) or value (pd.NA) is still a null."""
    import pandas as pd

    x = _x(3).astype(np.float64)
    nan = [r.copy() for r in x]
    nan[1][2] = np.nan
    with Store.create(tmp_path / "s", dim=DIM, codec="Flat", metric="l2") as store:
        store.add(_x(10))
        for series in (pd.Series(nan), pd.Series([list(r) for r in nan]),
                       pd.Series([r.astype(np.float32) for r in nan])):
            with pytest.raises(InvalidInput, match=r"queries: expected finite values, found nan in row 1, column 2"):
                store.search(series, 3)
    for missing in (None, np.nan, pd.NA):
        with pytest.raises(InvalidInput, match=r"row 1 is null"):
            as_matrix(pd.Series([x[0], missing, x[2]]), DIM, "queries")
    with pytest.raises(InvalidInput, match=r"row 0 holds a null value"):
        as_matrix(pd.Series([[1.0, pd.NA] + [0.0] * (DIM - 2), list(x[1])]), DIM, "queries")


def test_zero_vectors_under_cosine_are_refused_and_nothing_is_written(tmp_path):
    x = _x(20)
    x[7] = 0
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as store:
        with pytest.raises(InvalidInput, match="row 7 all zeros"):
            store.add(x)
        assert store.version == 1 and len(store) == 0
        store.add(np.delete(x, 7, axis=0))
        with pytest.raises(InvalidInput, match="queries: cosine .* row 0 all zeros"):
            store.search(np.zeros((1, DIM), np.float32), 3)
    # a float64 row of values float32 cannot hold is not "all zeros" under cosine: it has a
    # direction, so it says so; under ip and l2 the zeros are its nearest float32 row
    tiny = x[:4].astype(np.float64)
    tiny[3] *= 1e-50
    with Store.create(tmp_path / "tiny-cosine", dim=DIM, codec="RB1") as store:
        with pytest.raises(InvalidInput, match=r"vectors: row 3 is not all zeros, but every value is below "
                                               r"float32's smallest"):
            store.add(tiny)
        assert len(store) == 0
        store.add(tiny[:3])
        with pytest.raises(InvalidInput, match=r"queries: row 0 is not all zeros"):
            store.search(tiny[3:], 3)
    for metric in ("ip", "l2"):
        with Store.create(tmp_path / f"tiny-{metric}", dim=DIM, codec="RB1", metric=metric) as store:
            store.add(tiny)
            assert len(store) == 4
            np.testing.assert_array_equal(store.search(tiny[3:], 3, rerank=4).ids,
                                          store.search(np.zeros((1, DIM)), 3, rerank=4).ids)
    # ip and l2 give zero vectors a score like any other
    with Store.create(tmp_path / "l2", dim=DIM, codec="Flat", metric="l2") as store:
        store.add(x)
        assert store.search(np.zeros((1, DIM), np.float32), 1, rerank=5).ids[0, 0] == 7
    # MRL renormalises the kept prefix for ip: a vector whose prefix is all zero is refused
    y = _x(20)
    y[3, :6] = 0
    with pytest.raises(InvalidInput, match="MRL6 keeps the first 6 dims"):
        Codec("MRL6,Flat", DIM, "ip").train(y)


def test_every_call_after_close_is_a_typed_error(tmp_path):
    store = Store.create(tmp_path / "s", dim=DIM, codec="Flat")
    store.add(_x(5))
    store.close()
    store.close()  # idempotent
    calls = {
        "search": lambda: store.search(_x(1), 1),
        "add": lambda: store.add(_x(1)),
        "delete": lambda: store.delete([0]),
        "compact": store.compact,
        "get": lambda: store.get([0]),
        "ids": store.ids,
        "info": store.info,
        "refresh": store.refresh,
        "memory_bytes": store.memory_bytes,
        "train": lambda: store.train(_x(5)),
        "contains": lambda: 0 in store,
        "len": lambda: len(store),
        "bool": lambda: bool(store),
        "n_rows": lambda: store.n_rows,
        "n_deleted": lambda: store.n_deleted,
    }
    for name, call in calls.items():
        with pytest.raises(StoreClosed, match="closed store"):
            call()
        assert issubclass(StoreClosed, ValueError), name
    assert "closed" in repr(store)


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("nq", [1, 8, 1000])
@pytest.mark.parametrize("limit", [1, 2, None])
def test_the_callers_thread_settings_survive_searches(tmp_path, nq, limit):
    if not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    x = _x(500)
    with Store.create(tmp_path / "s", dim=DIM, codec="IVF4,RB1") as store:
        store.add(x)
        q = _x(nq, seed=3)
        numba_before = numba.get_num_threads()
        if limit is None:
            before = _blas_threads()
            store.search(q, 5, nprobe=2, rerank=20)
            assert _blas_threads() == before
        else:
            with threadpool_limits(limit, user_api="blas"):
                before = _blas_threads()
                assert before == [limit] * len(before)
                store.search(q, 5, nprobe=2, rerank=20)
                assert _blas_threads() == before
        assert numba.get_num_threads() == numba_before


def test_concurrent_searches_leave_the_blas_threads_as_they_were(tmp_path):
    if not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    x = _x(500)
    with Store.create(tmp_path / "s", dim=DIM, codec="IVF4,RB1") as store:
        store.add(x)
        before = _blas_threads()
        errors: list[BaseException] = []

        def run(seed: int) -> None:
            try:
                for i in range(30):
                    store.search(_x(1 + (i * 7 + seed) % 12, seed=seed), 3, nprobe=2, rerank=10)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert _blas_threads() == before


@pytest.mark.parametrize("caller", [2, 1])
def test_overlapping_searches_leave_each_threads_openmp_blas_count(tmp_path, monkeypatch, caller):
    """faiss's OpenBLAS is an OpenMP build: its count belongs to each thread. Counted with
    numpy's (process-wide) one, the search that entered first lowered its own thread's
    count and the one that left last restored its own: the main thread's faiss count stayed
    1 (or a caller's own 1 became 2). The searches here overlap in a fixed order."""
    faiss = pytest.importorskip("faiss")
    from vecz.engine import codecs

    x = _x(500)
    with Store.create(tmp_path / "s", dim=DIM, codec="IVF4,RB1") as store:
        store.add(x)
        q = _x(12, seed=4)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(caller)
        main_in, worker_in, main_done = threading.Event(), threading.Event(), threading.Event()
        scan = codecs.CodeIndex._scan

        def ordered(self, *a, **k):
            if threading.current_thread() is threading.main_thread():  # enters first, leaves first
                main_in.set()
                worker_in.wait(10)
            else:
                worker_in.set()
                main_done.wait(10)
            return scan(self, *a, **k)

        monkeypatch.setattr(codecs.CodeIndex, "_scan", ordered)
        seen = []
        worker = threading.Thread(target=lambda: (main_in.wait(10), seen.append(faiss.omp_get_max_threads()),
                                                  store.search(q, 3, nprobe=2),
                                                  seen.append(faiss.omp_get_max_threads())))
        worker.start()
        try:
            store.search(q, 3, nprobe=2)
            assert faiss.omp_get_max_threads() == caller
        finally:
            main_done.set()
            worker.join()
            monkeypatch.undo()
        assert faiss.omp_get_max_threads() == caller
        assert seen[0] == seen[1]  # the worker's own count too
        faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("where", ["blas", "numba"])
def test_an_interrupt_inside_the_thread_policy_does_not_leave_the_counts_changed(tmp_path, monkeypatch, where):
    """Ctrl-C lands after a call returns: right after a scope set BLAS (or Numba) to one
    thread, the scope never gave the count back and every later search saved 1 as the
    caller's (a review's timer-driven SIGINTs left BLAS on one thread for good). The next
    search now gives back what the cut-short scope had set."""
    from vecz.engine import threads

    if where == "blas" and not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    x = _x(300)
    with Store.create(tmp_path / "s", dim=DIM, codec="IVF4,RB1") as store, threadpool_limits(2, user_api="blas"):
        store.add(x)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        before = (_blas_threads(), numba.get_num_threads())
        if where == "blas":
            calls = threads._SerialBlas._thread_calls()

            def interrupted(set_threads):
                def call(n):
                    set_threads(n)
                    if n == 1:
                        raise KeyboardInterrupt  # as a signal arriving when the call returns
                return call

            monkeypatch.setattr(threads._SerialBlas, "_calls", [(get, interrupted(s)) for get, s in calls])
            q = _x(8, seed=1)  # >= 2 queries: the BLAS scope
        else:
            get, set_threads = threads._numba_thread_calls()

            def numba_set(n):
                set_threads(n)
                if n == 1:
                    raise KeyboardInterrupt
            monkeypatch.setattr(threads, "_numba_calls", (get, numba_set))
            q = _x(1, seed=1)  # a lone query: Numba on one thread
        with pytest.raises(KeyboardInterrupt):
            store.search(q, 3, nprobe=2, rerank=10)
        monkeypatch.undo()
        store.search(q, 3, nprobe=2, rerank=10)
        assert (_blas_threads(), numba.get_num_threads()) == before
        assert threads._SerialBlas._depth == 0 and not threads._SerialBlas._lowered


def test_an_interrupt_inside_a_numba_call_is_a_keyboard_interrupt(tmp_path, monkeypatch):
    """A Ctrl-C landing while a Numba kernel hands its array back to Python came out as
    SystemError (caused by the KeyboardInterrupt), which `except KeyboardInterrupt` missed."""
    from vecz.engine import store as store_module

    def interrupted(*_a, **_k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<function _numba_unpickle> returned a result with an exception set") from exc

    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as store:
        store.add(_x(50))
        monkeypatch.setattr(store_module, "search_segments", interrupted)
        with pytest.raises(KeyboardInterrupt):
            store.search(_x(2), 3)
        monkeypatch.setattr(store_module, "search_segments", lambda *a, **k: (_ for _ in ()).throw(SystemError("x")))
        with pytest.raises(SystemError):  # other SystemErrors stay what they are
            store.search(_x(2), 3)


def test_a_blas_count_the_caller_sets_during_a_search_stays():
    """A search gave back the count it found on entry even when the caller had set another
    one meanwhile (from another thread): the caller's threadpool_limits(3) became 2 again
    once the search ended."""
    from vecz.engine import threads

    if not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    with threadpool_limits(2, user_api="blas"):
        scope = threads._SerialBlas()
        scope.__enter__()  # a search of another thread, BLAS on one thread
        # the libraries the scope controls: those loaded at its first use (an OpenMP one,
        # faiss's, is this thread's own: `_own_thread_calls`)
        calls = threads._SerialBlas._thread_calls() + threads._SerialBlas._own_thread_calls()
        try:
            assert {get() for get, _ in calls} == {1}
            for _, set_threads in calls:
                set_threads(3)  # the caller's own setting, while it runs
        finally:
            scope.__exit__(None, None, None)
        assert {get() for get, _ in calls} == {3}
