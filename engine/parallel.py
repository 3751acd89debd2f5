"""Numba's threading layer for vecz, and the guard around vecz's parallel regions.

The ``*_batch`` kernels run ``prange`` loops on one of Numba's threading layers, fixed per
process at the first parallel region. Measured with vecz searches (a store searched in the
parent, then in forked children, in `multiprocessing` fork pools and from 4 threads at once):

- ``omp`` (GNU OpenMP, Numba's pick on Linux without TBB) is thread-safe but not
  fork-safe: a forked child's first parallel region kills it with SIGTERM ("fork() called
  from a process already using GNU OpenMP"), a fork pool hangs, and a grandchild hangs.
- ``workqueue`` is fork-safe but not thread-safe: two threads in parallel regions at once
  abort the process ("Concurrent access has been detected").
- ``tbb`` is both, with one gap: Numba shuts TBB's scheduler down before a fork, and cannot
  while another live thread has run a TBB region (it prints "Unable to join threads to shut
  down before fork()" on stdout). The child then inherits a half-copied scheduler and may
  hang in its first region: on a Zen 4, 6 and 14 of 200 children forked while another
  thread was inside a region, none of 500 when the fork waited for the region to end; on a
  Zen 5, 13 of 60 children hung even after that wait (the other thread kept running regions
  back to back), none of 60 when the other thread had exited, none of 60 when only the
  forking thread had run regions.

Policy, decided once, when ``import vecz`` imports this module (before any region can run):

1. If a layer is already running (the process ran a parallel Numba function before), or
   the user chose one (``NUMBA_THREADING_LAYER``, ``NUMBA_THREADING_LAYER_PRIORITY``, a
   ``.numba_config.yaml``, or ``numba.config.THREADING_LAYER`` set before importing vecz),
   vecz keeps it. It only makes a pip-installed TBB loadable when that choice may pick it.
2. Otherwise vecz selects ``tbb`` when it loads and is new enough for Numba (TBB 2021.6,
   interface 12060; the ``tbb`` wheel is a dependency of vecz), else ``omp``, else
   ``workqueue``. pip puts ``libtbb.so.12`` in ``<prefix>/lib``, which the loader does not
   search from a virtualenv (numba/numba#6108), so vecz loads it by the path the ``tbb``
   distribution recorded, and Numba's TBB layer then links against it.

`parallel_region` is the guard for the engine to hold around the parallel kernels of one
search (or one encode), asking how to run them: ``True``, the ``*_batch`` drivers on all
threads; ``False``, on the calling thread alone. The engine (`engine.threads.query_threads`,
held by every search, training and encode) then sets ``numba.set_num_threads(1)`` for the
call: TBB runs the region in an arena of one slot that wakes no worker. Measured on a Zen 5,
children forked while the parent's other thread kept searching (IVF16,RB1 store, 16
queries a search), each searching once: 9 of 450 hung when the fork only waited for the
search to end, 36 of 450 when they were marked but still ran on all threads, 0 of 900 on
one thread. Under ``omp`` that is not enough (GNU OpenMP's fork
check runs in every parallel region, also on one thread): only serial twins would do, which
the engine does not choose yet. It makes every layer safe for what it lacks:

- ``omp``: a process forked after the parent started GNU OpenMP (and its descendants) gets
  ``False`` forever: they cannot enter OpenMP again.
- ``workqueue``: one region at a time per process; a thread that finds the pool taken gets
  ``False`` and runs its query batch on its own thread instead of waiting or aborting. That
  covers the kernels a region guards (the scans), not the parallel kernels that run outside
  one (a search's tables, a segment's layout): two threads searching at once still abort
  under it (README), and a store loads its segments on one thread there.
- ``tbb`` and ``workqueue``: ``os.fork`` waits until regions running on other threads
  finish (new ones wait for the fork), so the child's pool starts clean and no search holds
  a lock (the engine's or BLAS's) at the fork; if they have not finished after
  `FORK_WAIT_S` seconds, the child gets ``False`` forever.
- ``tbb``: a process forked while another live thread has entered a region (now or before)
  gets ``False`` forever as well; a process forked when only the forking thread (or threads
  that have since exited) ran regions starts TBB afresh and runs in parallel. TBB shuts down
  for a fork only from the thread that started it, so vecz starts it on import (on the main
  thread, when vecz chose tbb): not on a thread that exits (a store's segment loaders).

Thread safety: `parallel_region` may be entered from any number of threads; its state is
guarded by one condition variable and re-created in a forked child.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from importlib import metadata
from typing import Any

import numba
from numba.core import config

__all__ = ["FORK_WAIT_S", "choice", "parallel_region", "threading_layer"]

# Numba's own minimum for its TBB layer (TBB 2021 update 6): an older library is refused
# with a NumbaWarning, which vecz must not trigger by selecting it.
_TBB_MIN_INTERFACE = 12060
_TBB_LIB = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}
_DEFAULT_PRIORITY = ["tbb", "omp", "workqueue"]
# How long a fork waits for parallel regions on other threads to finish. A region is one
# query batch (milliseconds to a few seconds); the bound keeps a fork from blocking forever
# behind a thread that waits for the forking one.
FORK_WAIT_S = 10.0
# How long a fork waits for a thread that ran TBB regions and whose Python side has ended
# to finish exiting (its TLS destructors detach it from TBB): a child forked before runs serially.
EXIT_WAIT_S = 1.0


def _load_tbb() -> bool:
    """Make TBB loadable for Numba and tell whether it is new enough: the library found by
    the loader (system, conda), else the one the ``tbb`` distribution installed."""
    name = _TBB_LIB.get(sys.platform)
    if name is None:
        return False
    try:
        lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        try:
            paths = [f for f in metadata.files("tbb") or () if f.name == name]
        except metadata.PackageNotFoundError:
            return False
        if not paths:
            return False
        try:
            # loaded by its soname: Numba's tbbpool, which needs that name, links to it
            lib = ctypes.CDLL(str(paths[0].locate()), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            return False
    try:
        version = lib.TBB_runtime_interface_version
        version.restype = ctypes.c_int
        if version() < _TBB_MIN_INTERFACE:
            return False
        from numba.np.ufunc import tbbpool  # noqa: F401  (fails if TBB cannot be linked)
    except (AttributeError, ImportError, OSError):
        return False
    return True


def _running_layer() -> str | None:
    """The layer this process runs, or None before its first parallel region."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _choose() -> tuple[str, str]:
    """Apply the policy (module docstring); return (layer or selector, who chose it)."""
    running = _running_layer()
    if running is not None:
        return running, "already running when vecz was imported"
    chosen = str(config.THREADING_LAYER).lower()
    user = ("NUMBA_THREADING_LAYER" in os.environ or "NUMBA_THREADING_LAYER_PRIORITY" in os.environ
            or chosen != "default" or list(config.THREADING_LAYER_PRIORITY) != _DEFAULT_PRIORITY)
    if user:
        if chosen in ("default", "tbb", "safe", "threadsafe"):
            _load_tbb()
        return chosen, "user"
    if _load_tbb():
        layer = "tbb"
    else:
        try:
            from numba.np.ufunc import omppool  # noqa: F401
            layer = "omp"
        except ImportError:
            layer = "workqueue"
    config.THREADING_LAYER = layer
    return layer, "vecz"


_CHOICE = _choose()

# TBB takes the thread that starts it for its main thread, and its fork handler shuts TBB
# down only for a fork from that thread: started by a thread that later exits (a store's
# segment loaders, a server's worker), every later fork printed Numba's "fork from a
# non-main thread" warning and skipped the shutdown. Started here, on the importing main
# thread (5 ms); tbb only: a child forked after OpenMP started may never enter it again.
if _CHOICE == ("tbb", "vecz") and threading.current_thread() is threading.main_thread():
    numba.get_num_threads()


def choice() -> tuple[str, str]:
    """(layer, who): the threading layer (or Numba selector such as ``"safe"``) in force
    when vecz was imported, and who chose it: ``"vecz"``, ``"user"`` or ``"already running
    when vecz was imported"``. `threading_layer` tells the layer actually running."""
    return _CHOICE


def threading_layer() -> str:
    """The layer running in this process, else the one that the first region will start
    (a selector such as ``"safe"`` or ``"default"`` when the user left it to Numba)."""
    return _running_layer() or _CHOICE[0]


# ----------------------------------------------------------------------------- the guard

_cond = threading.Condition()
_in_flight = 0          # regions entered and not left, all threads
_fork_pending = False   # a fork waits for _in_flight to drain: new regions wait
_fork_dirty = False     # the fork went ahead with regions running on other threads
_serial_only = False    # this process may not enter a parallel region again
_epoch = 0              # forks survived: a region entered before the fork is not counted after
_pool = threading.Lock()  # workqueue: the one region allowed at a time
_region_threads: set[int] = set()  # native ids of the threads that entered a region
_local = threading.local()


class parallel_region:
    """``with parallel_region(want) as parallel:``: may this call run parallel kernels?

    ``want`` is the caller's own choice (e.g. at least ``PARALLEL_MIN_QUERIES`` queries);
    when False the guard returns False at once and touches no lock. When True, it returns
    True unless this process cannot run a parallel region now or ever (module docstring):
    then the caller runs the serial twins, on its own thread, with the same results.
    Hold it around every parallel kernel of the call and no longer: a fork on another
    thread waits for it.
    """

    __slots__ = ("_want", "_epoch", "_pool_held")

    def __init__(self, want: bool = True) -> None:
        self._want = bool(want)
        self._epoch = -1
        self._pool_held = False

    def __enter__(self) -> bool:
        global _in_flight
        if not self._want or _serial_only:
            return False
        with _cond:
            while _fork_pending:
                _cond.wait()
            if threading_layer() not in ("tbb", "omp"):
                # workqueue (or not known yet): one region at a time, and a thread that
                # finds it taken runs serially rather than wait
                if not _pool.acquire(blocking=False):
                    return False
                self._pool_held = True
            _in_flight += 1
            _region_threads.add(threading.get_native_id())
            _local.depth = getattr(_local, "depth", 0) + 1
            self._epoch = _epoch
        return True

    def __exit__(self, *exc: Any) -> None:
        global _in_flight
        if self._epoch != _epoch:
            return  # not entered, or entered in the parent of this forked process
        with _cond:
            _in_flight -= 1
            _local.depth -= 1
            if self._pool_held:
                _pool.release()
            _cond.notify_all()


def _live_threads() -> set[int]:
    """Native ids of this process's threads that have not finished exiting. A joined
    Python thread may still be running its TLS destructors (where TBB lets it go), so on
    Linux the kernel's task list decides, not `threading.enumerate`."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except (OSError, ValueError):
        return {t.native_id for t in threading.enumerate() if t.native_id is not None}


def _attached_threads() -> set[int]:
    """Other live threads that have entered a region (under ``_cond``). A thread whose Python
    side has ended (joined) is given up to `EXIT_WAIT_S` to finish exiting."""
    me = threading.get_native_id()
    deadline = time.monotonic() + EXIT_WAIT_S
    while True:
        _region_threads.intersection_update(_live_threads())
        others = _region_threads - {me}
        running = {t.native_id for t in threading.enumerate()}
        if not others or others & running or time.monotonic() > deadline:
            return others
        time.sleep(0.001)


def _before_fork() -> None:
    global _fork_pending, _fork_dirty
    _fork_dirty = False
    layer = _running_layer()
    if _serial_only or layer in (None, "omp"):
        return  # nothing to protect, or a child that will not enter OpenMP anyway
    with _cond:
        _fork_pending = True
        # The wait also keeps the engine's own locks and BLAS free at the fork: a search holds
        # its region around all of its work.
        own = getattr(_local, "depth", 0)  # a fork from inside a region does not wait for itself
        _fork_dirty = not _cond.wait_for(lambda: _in_flight == own, timeout=FORK_WAIT_S)
        if layer == "tbb":
            # TBB cannot be shut down for the fork while another live thread is attached to
            # it (module docstring); waiting for its regions to end does not help
            _fork_dirty = bool(_attached_threads()) or _fork_dirty


def _after_fork_in_parent() -> None:
    global _fork_pending
    with _cond:
        _fork_pending = False
        _cond.notify_all()


def _after_fork_in_child() -> None:
    global _cond, _in_flight, _fork_pending, _serial_only, _epoch, _pool, _local
    # The other threads, their regions and the locks they held stayed in the parent; this
    # thread's own regions (a fork from inside one) are left uncounted by the new epoch.
    _cond, _pool, _local = threading.Condition(), threading.Lock(), threading.local()
    _in_flight, _fork_pending, _epoch = 0, False, _epoch + 1
    _region_threads.clear()  # a clean fork shut TBB down; a dirty child never enters it
    layer = _running_layer()
    if layer == "omp" or (_fork_dirty and layer is not None):
        _serial_only = True


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
