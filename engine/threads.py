"""Thread policy of searches: BLAS on one thread (`_SerialBlas`) and Numba on the calling
thread only for small batches (`query_threads`).

On 2 cores, OpenBLAS's worker threads and Numba's OpenMP workers each spin for a while
after their work; a parallel region that needs the core a spinning thread holds waits for a
scheduler tick. So `Codec.plan`, `CodeIndex.scan` and `CodeIndex.search` each run under
`query_threads(nq, ...)`: every batch of 2 or more queries runs its BLAS products on one
thread (a lone query makes its large products without BLAS), and fewer than the index's
``PARALLEL_MIN_QUERIES`` their Numba batch drivers on the calling thread. Both
scopes give the caller back exactly the settings it had. The outermost scope also holds
`parallel_region`, so an ``os.fork`` on another thread waits until the call's parallel
regions are done (a fork inside a TBB region can leave the child hung), and where that
guard says no (a process forked while another thread was attached to TBB) the call runs
its Numba kernels on the calling thread alone. `Codec` holds one scope around training and
each encoded chunk (``query_threads(n, 1)``: all threads unless the guard says no).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

import numba
from numba.np.ufunc import parallel as _numba_parallel

from .parallel import parallel_region

__all__ = ["query_threads", "plain_interrupts", "blas_setter"]


@contextlib.contextmanager
def plain_interrupts() -> Iterator[None]:
    """Ctrl-C as `KeyboardInterrupt`: one that lands while a Numba kernel hands an array back
    to Python (its unpickling call) comes out as ``SystemError`` caused by the interrupt (a
    review saw 321 of 1,499 interrupted searches end so), which ``except KeyboardInterrupt``
    misses."""
    try:
        yield
    except SystemError as exc:
        cause, hops = exc.__cause__ or exc.__context__, 0
        while cause is not None and not isinstance(cause, KeyboardInterrupt) and hops < 8:
            cause, hops = cause.__cause__ or cause.__context__, hops + 1
        if not isinstance(cause, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt from None


def blas_setter(lib: Any) -> Any:
    """The function that sets a threadpoolctl BLAS controller's thread count: its
    `_real_set_num_threads` where it has one (threadpoolctl 3.8's public `set_num_threads`
    does nothing when called from a thread other than the first that set OpenBLAS's count)."""
    return getattr(lib, "_real_set_num_threads", lib.set_num_threads)


def _lower(calls: list, saved: list[int]) -> None:
    """Set each (get, set) of `calls` to one thread where its `saved` count is not 1."""
    for (_, set_threads), n in zip(calls, saved):
        if n != 1:
            set_threads(1)


def _give_back(calls: list, saved: list[int]) -> None:
    """Give each of `calls` its `saved` count back where it is still the 1 a scope set (a
    count another thread of the caller set meanwhile stays, unless it set 1)."""
    for (get, set_threads), n in zip(calls, saved):
        if n != 1 and get() == 1:
            set_threads(n)


class _SerialBlas:
    """Run a few queries' BLAS products (rotations, IVF probes, tables) on one thread, and
    give the caller back exactly the BLAS thread counts it had.

    On 2 cores, OpenBLAS's worker threads and Numba's OpenMP workers each spin for a while
    after their work; a parallel region that needs the core a spinning thread holds waits
    for a scheduler tick. A search of 8-64 queries then took 16 ms instead of 0.6-2 ms
    (wordnet-gemma, IVF256,RB1). Large batches lose the same way: OpenBLAS spins on a core
    through the scan that follows its products (the list-major scan of 2,000 gemma
    IVF256,PQ192x4 queries took 30 ms on 2 threads, as on one, against 14-17 ms with BLAS on
    one thread). So every search of 2 or more queries runs BLAS on one thread (a lone query
    calls no BLAS product that BLAS would thread: `query_threads`): IVF batches of 2,000 and
    10,000 queries 1.11-1.43x the QPS, flat ones level (docs/results/scans.md, stop 48).

    BLAS thread counts are process-wide, so the scope is counted: the first search to enter
    saves the counts it finds (whatever the caller set, e.g. inside its own
    ``threadpool_limits(1)``), the last one to leave restores them; searches running
    concurrently from several Python threads therefore cannot leave the count at one.
    While a search of 2 or more queries runs, BLAS calls made by other threads of the
    process also run on one thread.
    """

    _libs: list | None = None
    _calls: list | None = None  # (get, set) of each process-wide BLAS library's thread count
    _local_calls: list = []  # (get, set) of each BLAS library whose count is per thread (OpenMP)
    _lock = threading.Lock()
    _depth = 0
    _saved: list[int] = []
    _lowered = False  # the counts are set to 1 and not yet given back
    _held = threading.local()  # .n: scopes this thread holds

    @classmethod
    def _controllers(cls) -> list:
        if cls._libs is None:
            from threadpoolctl import ThreadpoolController

            cls._libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        return cls._libs

    @classmethod
    def _thread_calls(cls) -> list:
        """Each library's (get, set) of its thread count, looked up once (a search enters
        and leaves this scope every time: 4.5 us a search through the properties). For
        OpenBLAS the set is `blas_setter`'s: with threadpoolctl's public one, a search from
        a server's worker thread ran its BLAS on every thread; this scope counts its users
        under its own lock instead."""
        if cls._calls is None:
            calls = [(lib.get_num_threads, blas_setter(lib), getattr(lib, "threading_layer", None) == "openmp")
                     for lib in cls._controllers()]
            cls._local_calls = [(get, put) for get, put, openmp in calls if openmp]
            cls._calls = [(get, put) for get, put, openmp in calls if not openmp]
        return cls._calls

    @classmethod
    def _own_thread_calls(cls) -> list:
        """(get, set) of the BLAS libraries whose count belongs to the calling thread: an
        OpenMP build (faiss's OpenBLAS) sets the caller's own OpenMP count. Counted with the
        others, a search whose scope another thread opened left its caller's count at 1 (or
        put back the 2 a caller had lowered to 1), so each scope sets and restores these on
        its own thread."""
        cls._thread_calls()
        return cls._local_calls

    # An interrupt (Ctrl-C) arrives after a call returns: the counts are recorded before any
    # call that changes them, and `_lowered` stays True until they are given back, so a
    # scope an interrupt cut short is mended by the next first scope (a review saw BLAS left
    # on one thread for good).
    def __enter__(self) -> None:
        cls = type(self)
        held = cls._held
        with cls._lock:
            if cls._depth == 0 and cls._lowered:
                cls._restore()  # what an interrupted scope did not give back
            first, mine = cls._depth == 0, getattr(held, "n", 0)
            cls._depth += 1  # the two counts change with no call between them (a signal waits for one)
            held.n = mine + 1
            if first:
                try:
                    calls = cls._thread_calls()
                    cls._saved = [get() for get, _ in calls]
                    cls._lowered = True
                    _lower(calls, cls._saved)
                except BaseException:
                    cls._depth -= 1
                    held.n -= 1
                    cls._restore()
                    raise
        if mine == 0:  # this thread's own counts: no lock, no other thread sees them
            try:
                own = cls._own_thread_calls()
                held.saved = [get() for get, _ in own]
                _lower(own, held.saved)
            except BaseException:
                self.__exit__(None, None, None)
                raise

    def __exit__(self, *exc: Any) -> None:
        cls = type(self)
        with cls._lock:
            cls._depth -= 1
            cls._held.n -= 1
            if cls._depth == 0:
                cls._restore()
        if cls._held.n == 0:
            cls._restore_own()

    @classmethod
    def _restore_own(cls) -> None:
        """Give the calling thread's own (OpenMP) BLAS counts back, where still the scope's 1."""
        saved, cls._held.saved = getattr(cls._held, "saved", None), None
        if saved:
            _give_back(cls._own_thread_calls(), saved)

    @classmethod
    def _mend_thread(cls) -> None:
        """Forget the scopes this thread entered and never left (an interrupt at the entry of
        `__exit__`, or between `query_threads`' steps), giving the counts back when no other
        thread holds one."""
        with cls._lock:
            mine = getattr(cls._held, "n", 0)
            cls._depth = max(0, cls._depth - mine)
            cls._held.n = 0
            if cls._depth == 0:
                cls._restore()
        cls._restore_own()

    @classmethod
    def _restore(cls) -> None:
        """Give BLAS back the thread counts the first scope found, where the count is still
        the 1 the scope set (a count another thread of the caller set meanwhile stays, unless
        it set 1: that looks like the scope's own)."""
        if cls._lowered:
            _give_back(cls._thread_calls(), cls._saved)
            cls._lowered = False

    @classmethod
    def _after_fork_in_child(cls) -> None:
        """The scopes of the parent's other threads did not come along: only this thread's
        count, under a fresh lock (the parent's may have been taken at the fork); with none
        left, the saved BLAS thread counts are restored."""
        cls._lock = threading.Lock()
        own = getattr(cls._held, "n", 0)
        if cls._depth > 0 and own == 0:
            cls._restore()
        cls._depth = own


os.register_at_fork(after_in_child=_SerialBlas._after_fork_in_child)

_local = threading.local()
_numba_calls: tuple | None = None


def _numba_thread_calls() -> tuple:
    """(get, set) of Numba's thread count for the calling thread. ``numba.get_num_threads``
    and ``set_num_threads`` make sure the threading layer runs and check their argument on
    every call (4.7 us a search for a get and two sets); once the layer runs, the
    functions they end in are called directly (1.0 us), with the public ones as the
    fallback where this Numba has no such names. Only 1 and counts read back are set."""
    global _numba_calls
    if _numba_calls is None:
        numba.get_num_threads()  # starts the threading layer: the functions below exist
        get = getattr(_numba_parallel, "_get_num_threads", None)
        set_threads = getattr(_numba_parallel, "_set_num_threads", None)
        _numba_calls = ((get, set_threads) if callable(get) and callable(set_threads)
                        else (numba.get_num_threads, numba.set_num_threads))
    return _numba_calls


class query_threads:
    """Context manager: the thread policy of one call over `nq` queries.

    2 or more queries: BLAS on one thread (`_SerialBlas`, counted and process-wide). A lone
    query gets no BLAS scope: its rotation and IVF probe are compiled loops instead of BLAS
    products (`quantizers._rotate`, `ivf._similarity`), and setting OpenBLAS's thread count
    and giving it back cost 11-13 us of its search (Zen 4, BLAS on 2 threads); its other
    BLAS calls are too small for BLAS to thread. Fewer than
    `parallel_min` queries: ``numba.set_num_threads(1)`` for the calling thread (Numba's
    setting is thread-local, so concurrent callers do not see it); the batch drivers
    parallelise over queries, and for a handful of queries waking the pool costs more than
    it saves (p99 4-8 ms instead of 0.15 ms per query on a busy
    2-core machine). Both are restored on exit, exceptions included.

    Scopes nest, and the outermost one on a thread decides: a caller that plans once and
    scans many layouts may hold one scope (for its batch size) around all of it, and the
    scopes `Codec.plan` and `CodeIndex.scan` open inside it cost next to nothing.
    """

    __slots__ = ("_blas", "_threads", "_serial", "_outer", "_region", "_serial_blas")

    def __init__(self, nq: int, parallel_min: int, serial_blas: bool | None = None) -> None:
        self._serial = nq < parallel_min
        self._outer = False
        # None: the search policy (BLAS on one thread from 2 queries); a codec's training and
        # encoding say themselves (`codecs._encode_scope`)
        self._serial_blas = nq >= 2 if serial_blas is None else serial_blas

    def __enter__(self) -> "query_threads":
        if getattr(_local, "active", False):
            return self  # inside another scope on this thread: it holds the policy
        if getattr(_local, "numba_saved", None) is not None:  # an interrupted scope's count
            _numba_thread_calls()[1](_local.numba_saved)
            _local.numba_saved = None
        if getattr(_SerialBlas._held, "n", 0):  # BLAS scopes of this thread an interrupt left open
            _SerialBlas._mend_thread()
        # made here, by the outermost scope only (a search nests three or four)
        # a lone query makes its products without BLAS (`quantizers._rotate`,
        # `ivf._similarity`): no BLAS count to set and give back (11-13 us a search)
        self._blas = _SerialBlas() if self._serial_blas else None
        self._threads = 0
        self._region = parallel_region(True)
        # a fork on another thread waits for this call's parallel regions (engine/parallel.py);
        # where the guard says no, the call's kernels run on this thread alone
        if not self._region.__enter__():
            self._serial = True
        if self._blas is not None:
            try:
                self._blas.__enter__()
            except BaseException:
                self._region.__exit__(None, None, None)
                raise
        if self._serial:
            try:
                get, set_threads = _numba_thread_calls()
                self._threads = _local.numba_saved = get()  # recorded before the change
                set_threads(1)
            except BaseException:
                if _local.numba_saved is not None:
                    set_threads(_local.numba_saved)
                    _local.numba_saved = None
                if self._blas is not None:
                    self._blas.__exit__(None, None, None)
                self._region.__exit__(None, None, None)
                raise
        self._outer = _local.active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._outer:
            return
        self._outer = _local.active = False
        try:
            if self._serial:
                _numba_thread_calls()[1](self._threads)
                _local.numba_saved = None
        finally:
            try:
                if self._blas is not None:
                    self._blas.__exit__(*exc)
            finally:
                self._region.__exit__(*exc)
