"""Fork and thread safety of searches, with real processes (engine/parallel.py).

Every scenario runs in a child process that runs this file as a script (``python
tests/test_fork.py MODE ...``) with a timeout, so a child killed by its threading layer or
hung in it fails the test instead of the run. Children inherit the environment: the Numba
cache that conftest.py isolates, and any ``NUMBA_THREADING_LAYER`` the user forced.

1. vecz picks the threading layer on import (tbb when it loads, else omp, else workqueue)
   and keeps the one a user forced;
2. a store searched in a parent gives the parent's results in a forked child (``os.fork``)
   and in a ``multiprocessing`` fork pool; 4 threads searching at once give one thread's
   results; a fork while another thread searches gives a child that searches alike;
3. the guard `parallel_region` keeps its contract under each layer, on Numba kernels of
   this file: a child forked from an OpenMP process runs serially instead of dying, a fork
   waits for regions on other threads under tbb and workqueue, workqueue admits one region
   at a time and the others run serially, and results never change.

Under a layer forced by the user, the store scenarios that layer cannot run skip with the
reason; the guard tests always run all three layers (tbb when it loads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest

TIMEOUT = 60.0       # seconds a child process may take before the test fails
CHILD_WAIT = 30.0    # seconds a scenario waits for a forked grandchild or a pool
NQ = 16              # >= PARALLEL_MIN_QUERIES: searches run the parallel drivers
LAYERS = ("omp", "workqueue", "tbb")


# ---------------------------------------------------------------------------- the child


def _wait(pid: int, limit: float = CHILD_WAIT) -> int | str:
    """Exit code of a forked process, or "hang" (then it is killed) after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "hang"
        time.sleep(0.01)


def _fork(fn: Any) -> int | str:
    """Run fn() in a forked process; its exit code: 0 when fn() is truthy, 3 when not."""
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if fn() else 3
        except BaseException:
            code = 4
        os._exit(code)
    return _wait(pid)


_STORE: Any = None
_QUERIES = np.random.default_rng(1).standard_normal((NQ, 32)).astype(np.float32)


def _search(_: int = 0) -> tuple[list, list]:
    res = _STORE.search(_QUERIES, 10, nprobe=4, rerank=20)
    return res.ids.tolist(), res.scores.tolist()


def _store_child(mode: str, path: str) -> dict[str, Any]:
    global _STORE
    import multiprocessing

    from vecz import Store

    _STORE = Store.open(path)
    ref = _search()
    out: dict[str, Any] = {"layer": numba.threading_layer()}
    if mode == "fork":
        out["child"] = _fork(lambda: _search() == ref)
    elif mode == "pool":
        pool = multiprocessing.get_context("fork").Pool(2)
        try:
            out["same"] = [r == ref for r in pool.map_async(_search, range(4)).get(timeout=CHILD_WAIT)]
        except multiprocessing.TimeoutError:
            out["same"] = "hang"
        finally:
            pool.terminate()
    elif mode == "threads":
        same: list[bool] = []

        def run() -> None:
            for _ in range(10):
                same.append(_search() == ref)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["same"] = same
    elif mode == "fork_busy":
        stop, searches = threading.Event(), []

        def run() -> None:
            while not stop.is_set():
                # the engine holds parallel_region inside each search (engine/threads.py),
                # so the forks below wait for the search's regions to end
                searches.append(_search() == ref)

        from vecz.engine import parallel

        rows = np.random.default_rng(2).standard_normal((300, 32)).astype(np.float32)
        codes = _STORE.codec.encode(rows)

        def child() -> None:
            """Exit 0: searches and encodes like the parent, on the serial path where the
            layer is TBB (another thread had run TBB regions); 3: other results; 5: same
            results but the guard let the child into TBB."""
            mine = _STORE.codec.encode(rows)
            same = _search() == ref and np.array_equal(mine.codes, codes.codes)
            os._exit(3 if not same else 5 if layer == "tbb" and not parallel._serial_only else 0)

        layer = numba.threading_layer()
        t = threading.Thread(target=run)
        t.start()
        children = []
        for _ in range(3):
            while len(searches) < len(children) + 1:
                time.sleep(0.001)
            children.append(_fork(child))
        stop.set()
        t.join()
        out.update(children=children, same=all(searches))
    return out


# A parallel kernel and its serial twin for the guard tests (cached: children compile once).
@numba.njit(parallel=True, nogil=True, cache=True)
def _norms_batch(x):
    out = np.empty(x.shape[0])
    for i in numba.prange(x.shape[0]):
        out[i] = np.sqrt(np.sum(x[i] * x[i]))
    return out


@numba.njit(nogil=True, cache=True)
def _norms(x):
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = np.sqrt(np.sum(x[i] * x[i]))
    return out


def _guard_child() -> dict[str, Any]:
    """The contract of `parallel_region` under the layer of NUMBA_THREADING_LAYER."""
    from vecz.engine.parallel import parallel_region

    x = np.random.default_rng(0).standard_normal((512, 2048))
    ref = _norms(x)

    def run() -> bool:
        """One guarded call: parallel kernel when allowed, else its serial twin."""
        with parallel_region(True) as parallel:
            return bool(parallel), bool(np.array_equal((_norms_batch if parallel else _norms)(x), ref))

    def report() -> None:
        """A forked child's exit code: 10 + (allowed a parallel region), 3 on a wrong result."""
        parallel, same = run()
        os._exit(10 + parallel if same else 3)

    parent = run()
    out: dict[str, Any] = {"layer": numba.threading_layer(), "parent": parent}
    out["child"] = _fork(report)
    # fork while another thread runs regions back to back
    stop, busy = threading.Event(), []

    def loop() -> None:
        while not stop.is_set():
            busy.append(run())

    t = threading.Thread(target=loop)
    t.start()
    children = []
    for _ in range(3):
        while len(busy) < len(children) + 1:
            time.sleep(0.001)
        children.append(_fork(report))
    stop.set()
    t.join()
    out["busy_children"] = children
    out["after_join_child"] = _fork(report)
    # 4 threads at once
    calls: list[tuple[bool, bool]] = []

    def hammer() -> None:
        for _ in range(20):
            calls.append(run())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["threads_same"] = all(ok for _, ok in calls + busy) and len(calls) == 80
    out["threads_parallel"] = sum(p for p, _ in calls)
    return out


def _blas_child() -> dict[str, Any]:
    """Fork (from another thread) while this thread holds the one-thread BLAS scope of a
    small search. (The scope is entered on the main thread: OpenBLAS 0.3.31 ignored a count
    set from another thread in this test's first version.)"""
    from threadpoolctl import threadpool_info, threadpool_limits

    from vecz.engine.threads import _SerialBlas

    def blas_threads() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    def child() -> bool:
        # the holder did not come along: the lock is free, the counts are restored
        free = _SerialBlas._lock.acquire(timeout=5)
        return free and _SerialBlas._depth == 0 and blas_threads() == before

    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        codes: list[int | str] = []
        with _SerialBlas():
            inside = blas_threads()
            t = threading.Thread(target=lambda: codes.append(_fork(child)))
            t.start()
            t.join()
        return {"before": before, "inside": inside, "child": codes[0], "after": blas_threads()}


def _policy_child() -> dict[str, Any]:
    from vecz.engine import parallel

    choice = list(parallel.choice())
    _norms_batch(np.ones((2, 2)))  # starts the threading layer
    return {"choice": choice, "layer": numba.threading_layer()}


# ---------------------------------------------------------------------------- the test side


def _run(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run this file as a child with `args`; its JSON answer (the last line it prints)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env if env is not None else dict(os.environ))
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child {args} hung for {TIMEOUT} s; stdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}") from None
    assert proc.returncode == 0, f"child {args} exited {proc.returncode}; stderr:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _env(layer: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    return env


def _tbb_loads() -> bool:
    from vecz.engine import parallel

    return parallel._load_tbb()


@pytest.fixture(scope="module")
def layer() -> str:
    """The layer a child running under this test run's environment gets."""
    return _run("policy")["layer"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from vecz import Store

    path = tmp_path_factory.mktemp("fork") / "store"
    with Store.create(path, dim=32, codec="IVF16,RB1") as store:
        store.add(np.random.default_rng(0).standard_normal((5000, 32)).astype(np.float32))
        store.search(_QUERIES, 10, nprobe=4, rerank=20)  # compiles (caches) the kernels for the children
    return str(path)


OMP_FORK = ("GNU OpenMP (no TBB here, or forced by NUMBA_THREADING_LAYER) is not fork-safe: a forked child must run "
            "the serial twins, which the engine does not yet choose from engine.parallel.parallel_region")
WQ_THREADS = ("the workqueue layer (forced by NUMBA_THREADING_LAYER) aborts on concurrent parallel "
              "regions until the engine holds engine.parallel.parallel_region around them")


def test_vecz_picks_a_safe_layer_and_keeps_a_forced_one() -> None:
    try:
        from numba.np.ufunc import omppool  # noqa: F401

        fallback = "omp"
    except ImportError:
        fallback = "workqueue"
    expected = "tbb" if _tbb_loads() else fallback
    got = _run("policy", env=_env(None))
    assert got == {"choice": [expected, "vecz"], "layer": expected}
    got = _run("policy", env=_env("workqueue"))
    assert got == {"choice": ["workqueue", "user"], "layer": "workqueue"}


def test_forked_child_searches_like_parent(store_path: str, layer: str) -> None:
    if layer == "omp":
        pytest.skip(OMP_FORK)
    assert _run("fork", store_path) == {"layer": layer, "child": 0}


def test_fork_pool_searches_like_parent(store_path: str, layer: str) -> None:
    if layer == "omp":
        pytest.skip(OMP_FORK)
    assert _run("pool", store_path) == {"layer": layer, "same": [True] * 4}


def test_threads_search_like_one_thread(store_path: str, layer: str) -> None:
    if layer == "workqueue":
        pytest.skip(WQ_THREADS)
    assert _run("threads", store_path) == {"layer": layer, "same": [True] * 40}


def test_fork_while_another_thread_searches(store_path: str, layer: str) -> None:
    if layer == "omp":
        pytest.skip(OMP_FORK)
    assert _run("fork_busy", store_path) == {"layer": layer, "children": [0, 0, 0], "same": True}


@pytest.mark.parametrize("forced", LAYERS)
def test_guard_makes_each_layer_fork_and_thread_safe(forced: str) -> None:
    if forced == "tbb" and not _tbb_loads():
        pytest.skip("TBB does not load here (pip install tbb)")
    got = _run("guard", env=_env(forced))
    assert got["layer"] == forced
    assert got["parent"] == [True, True]
    # a child of an OpenMP process runs serially (10) instead of being killed; under tbb and
    # workqueue it runs in parallel (11)
    child = 10 if forced == "omp" else 11
    assert got["child"] == child
    # forked while another thread runs regions back to back: a workqueue child waits for the
    # region and runs in parallel; a tbb child runs serially (TBB cannot be shut down for the
    # fork while that thread is attached, and such children hung); an omp child serially
    assert got["busy_children"] == [11 if forced == "workqueue" else 10] * 3
    # once that thread has exited, a tbb child runs in parallel again
    assert got["after_join_child"] == child
    assert got["threads_same"]
    if forced == "workqueue":
        assert 1 <= got["threads_parallel"] <= 80  # the pool is shared, never entered twice
    else:
        assert got["threads_parallel"] == 80


def test_fork_while_another_thread_holds_serial_blas() -> None:
    got = _run("blas")
    if not got["before"]:
        pytest.skip("no BLAS library that threadpoolctl controls")
    assert got["before"] == [2] * len(got["before"])
    assert got["inside"] == [1] * len(got["before"])
    assert got["child"] == 0
    assert got["after"] == got["before"]


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "policy":
        result = _policy_child()
    elif mode == "guard":
        result = _guard_child()
    elif mode == "blas":
        result = _blas_child()
    else:
        result = _store_child(mode, sys.argv[2])
    print(json.dumps(result), flush=True)


def test_a_fork_after_opening_a_multi_segment_store_shuts_tbb_down_cleanly(tmp_path: Path) -> None:
    """A store of several segments loads them on two short-lived threads; their layout
    kernels were the process's first parallel region, so TBB took a loader thread for its
    main one and every later fork (from the real main thread) printed Numba's "fork from a
    non-main thread" warning and skipped TBB's shutdown. vecz now starts TBB on import."""
    if not _tbb_loads():
        pytest.skip("TBB does not load here")
    from vecz import Store

    x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=32, codec="IVF8,RB1") as w:  # made here: the child's first region is
        w.auto_merge_rows = 0                                             # its loaders'
        for lo in range(0, 3000, 1000):
            w.add(x[lo:lo + 1000])
    script = f"""
import os, sys
import numpy as np
from vecz import Store
x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
s = Store.open({str(tmp_path / "s")!r})
pid = os.fork()
if pid == 0:
    os._exit(0 if s.search(x[:20], 5, nprobe=8, rerank=20).ids[0, 0] == 0 else 3)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                         env=_env(None))
    assert run.returncode == 0, run.stderr
    assert "non-main thread" not in run.stderr, run.stderr


@pytest.mark.parametrize("selector", ["workqueue", "default"])
def test_workqueue_opens_a_multi_segment_store(tmp_path: Path, selector: str) -> None:
    """Segments load on two threads, whose layout kernels run outside any parallel region:
    under a forced workqueue layer the process aborted at open ("Concurrent access has been
    detected", exit 134) with no thread of the user's. It loads them on one thread there."""
    from vecz import Store

    x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=32, codec="IVF8,RB1") as w:
        w.auto_merge_rows = 0
        for lo in range(0, 3000, 500):
            w.add(x[lo:lo + 500])
    script = f"""
import numba, numpy as np
from vecz import Store
x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
for _ in range(3):
    with Store.open({str(tmp_path / "s")!r}) as s:
        assert len(s._segments) == 6 and s.search(x[:20], 5, nprobe=8, rerank=20).ids[0, 0] == 0
print(numba.threading_layer())
"""
    env = _env(selector)
    if selector == "default":  # a selector that resolves to workqueue only when the first region starts
        env["NUMBA_THREADING_LAYER_PRIORITY"] = "workqueue tbb omp"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["workqueue"]
