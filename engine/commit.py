"""The writer's side of a store: who it is, how it commits, what it may delete.

Identity. A writer IS the directory it opened and locked, not a path string. `WriterLock`
opens the store directory, takes ``flock(LOCK_EX)`` on that directory's own descriptor
(no lock file that a cleanup script could delete and a second writer recreate: the lock
lives on the directory inode and the kernel drops it when the process dies), and records
the inode. Before every step that changes the store — writing data files, publishing a
manifest, collecting garbage — `WriterLock.check` verifies that the path still leads to
that inode; a directory renamed, replaced by a new store or removed stops the writer with
`StoreMoved`, and nothing it committed is touched. Manifests are published relative to the
directory's descriptor (`write_manifest(dir_fd=)`), so even a rename racing a commit cannot
make a manifest land in another store.

Commit protocol (formats/FORMAT.md "Commit protocol"): new data files under fresh names,
each fsynced; the directory fsynced; manifest v+1 linked into place. `publish` removes the
new files again if the manifest cannot be published, and turns operating-system errors
into `StorageError` naming the operation and the path.

Retention (formats/FORMAT.md "Retention"): after each commit, and when a writer opens the
store, `collect_garbage` keeps the newest ``retain`` manifests (the number each manifest
records, default 8), deletes older manifests, then every data file no kept manifest names
and every temporary manifest. A reader pinned to a pruned version keeps working: its codes
are in RAM and its dense files stay mapped after they are unlinked (POSIX). Pruned files
are deleted oldest version first, so a crash in the middle leaves only kept versions whose
files all exist.

Pins (formats/FORMAT.md "Pins"): a process that must be able to load a version again later
(a `ShardedStore`, whose actors reload their shard when they restart) holds a `VersionPin`:
the version's manifest open with ``flock(LOCK_SH)``. Before deleting a manifest, garbage
collection takes ``flock(LOCK_EX | LOCK_NB)`` on it: a manifest it cannot lock is pinned and
kept with its files, whatever its age; one it locks it deletes while holding the lock. A pin
that waited for that lock finds its manifest's name gone and is refused. No file marks a pin:
the kernel drops the lock when the holder's process dies, so nothing is left to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator

from ..formats import manifest as mf
from ..formats._header import open_regular
from ..formats.body import DATA_FILE_RE, STAGING_RE, body_files, parse_body
from .errors import (CommitConflict, CommitIncomplete, InvalidInput, StorageError, StoreCorrupted, StoreLocked, StoreMoved,
                     StoreNotFound, VeczError)

__all__ = ["WriterLock", "VersionPin", "storage_errors", "collect_garbage", "lock_holder", "pinned_versions"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def storage_errors(operation: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised inside the block into `StorageError` naming `operation`
    and the path (vecz's own errors pass through)."""
    try:
        yield
    except VeczError:
        raise
    except OSError as exc:
        where = exc.filename if exc.filename else path
        reason = exc.strerror or str(exc)
        hint = {errno.ENOSPC: " (disk full)", errno.EDQUOT: " (disk quota exceeded)",
                errno.EROFS: " (read-only file system)", errno.EACCES: " (permission denied)",
                errno.EMFILE: " (too many open files in this process)"}.get(exc.errno, "")
        raise StorageError(f"{operation}: {where}: {reason}{hint}; nothing of this operation is committed",
                           exc.errno, str(where)) from exc


def _flocks() -> list[tuple[str, str, str]] | None:
    """(type READ/WRITE, pid, "maj:min:inode") of every flock in /proc/locks, None when it
    cannot be read (not Linux)."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK":
            out.append((parts[3], parts[4], parts[5]))
    return out


def _inode_key(dev: int, ino: int) -> str:
    """An inode as /proc/locks names it."""
    return f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"


def lock_holder(dev: int, ino: int) -> str:
    """'pid N' of the process holding an flock on the inode (from /proc/locks), or 'unknown'."""
    want = _inode_key(dev, ino)
    for _, pid, key in _flocks() or []:
        if key == want:
            return f"pid {pid}"
    return "unknown"


class WriterLock:
    """The store directory, open and locked by this process (see the module docstring).

    Parameters
    ----------
    path : the store directory (must exist)

    Raises
    ------
    StoreLocked
        Another process (or another writer object of this process) holds the lock.
    StoreNotFound
        `path` is not a directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise StoreNotFound(f"{self.path}: no store directory here") from exc
        st = os.fstat(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLocked(f"{self.path}: another writer holds the store ({lock_holder(st.st_dev, st.st_ino)}); "
                                  f"expected no writer, found one") from None
            raise
        self.fd: int | None = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.linked: int | None = None  # a version `publish` linked but then failed (CommitIncomplete)
        self._kept: set[str] = set()
        self._forked_from: int | None = None  # set in a forked child (`_forget_writers_in_child`)
        self._owner = id(self)  # a copy made around __init__ has another id: its __del__ leaves the lock
        _WRITERS.add(self)

    def __reduce__(self) -> Any:
        raise TypeError(f"{self.path}: a writer's lock cannot be copied or pickled (a copy would hold the "
                        f"same locked descriptor); open the store again where it is needed")

    def check(self, what: str) -> None:
        """Refuse `what` (with `StoreMoved`) unless the path still leads to the locked directory
        (with `StoreLocked` in a forked child: the lock is the parent's)."""
        if self._forked_from is not None:
            raise StoreLocked(f"{self.path}: {what} refused: this writer's lock belongs to process "
                              f"{self._forked_from}, which this process was forked from; expected the process that "
                              f"opened the store (open it in this one once that writer is closed)")
        if self.fd is None:
            raise StoreMoved(f"{self.path}: {what} refused: this writer has released the store")
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (self.dev, self.ino) or os.fstat(self.fd).st_nlink == 0:
            found = "nothing" if st is None else "another directory" if os.fstat(self.fd).st_nlink else "it removed"
            raise StoreMoved(f"{self.path}: {what} refused: the store directory this writer opened was moved, "
                             f"replaced or removed (expected the directory it locked at that path, found {found}); "
                             f"nothing was written. Open the store again where it now is")

    def publish(self, version: int, body: dict, new_files: list[str], operation: str) -> None:
        """Publish manifest `version` naming `new_files` (already written and fsynced); on
        failure remove them and re-raise (OSError as `StorageError`). A failure after the
        manifest's link made the version visible (the directory fsync failed, or an
        interrupt arrived) keeps them (`remove` refuses them from then on) and raises
        `CommitIncomplete` (an interrupt is re-raised as it is); `linked` is then `version`."""
        try:
            self.check(f"{operation} (publish version {version})")
            try:  # what no reader would accept is never published (the store would not open again)
                parse_body(body, f"{self.path} version {version}")
            except StoreCorrupted as exc:
                raise InvalidInput(f"{operation}: version {version} would not read back, so nothing is committed: "
                                   f"{exc}") from exc
            with storage_errors(f"{operation}: publish version {version}", self.path):
                os.fsync(self.fd)  # the new names are durable before anything refers to them
                mf.write_manifest(self.path, version, body, dir_fd=self.fd)
        except BaseException as exc:
            # under this lock no other writer publishes: a manifest of `version` that exists
            # after anything but a conflict is this one's
            if isinstance(exc, CommitConflict) or not self._exists(mf.manifest_name(version)):
                self.remove(new_files)
                raise
            self.linked = version
            self._kept.update(new_files)
            if not isinstance(exc, OSError):
                raise
            cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
            raise CommitIncomplete(f"{operation}: version {version} is published and its files kept, but syncing "
                                   f"the directory after it failed ({cause}): it may not survive a power loss; its "
                                   f"rows are committed, do not repeat the operation", version,
                                   getattr(exc, "errno", None)) from exc

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd)
        except OSError:
            return False
        return True

    def remove(self, names: list[str]) -> None:
        """Delete data files of this directory by name (missing ones are fine), but never one
        a published manifest names (`publish` keeps those of a version it linked)."""
        if self.fd is None:  # released: the names would resolve against the working directory
            return
        for name in names:
            if name in self._kept:
                continue
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __del__(self) -> None:
        # a writer dropped without close(): nothing can write through it any more, so its
        # lock goes with it (the descriptor kept the store locked, to this process too,
        # until the process exited). A forked child's copy has no descriptor (fd None).
        if getattr(self, "_owner", None) == id(self):
            with contextlib.suppress(Exception):
                self.release()


def _lock_unpinned(name: str, dir_fd: int) -> int | None:
    """Manifest `name` open and flocked exclusively, or None when a `VersionPin` holds it
    (or it is gone; or, where /proc/locks cannot be read, `pinned_versions` probes it this
    instant: the collector then keeps the version one more commit). The caller deletes it
    (or not) and closes the descriptor."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC, dir_fd=dir_fd)  # a FIFO must not block
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def pinned_versions(path: str | os.PathLike) -> list[int]:
    """The committed versions of the store at `path` that a live `VersionPin` holds (in
    any process), ascending: the manifests with a shared flock in /proc/locks (which takes
    no lock, so two callers never see each other). Where /proc/locks cannot be read, each
    manifest is probed with an exclusive lock, which counts a version another caller probes
    at that instant."""
    path = Path(path)
    flocks = _flocks()
    if flocks is not None:
        shared = {key for kind, _, key in flocks if kind == "READ"}
        pinned = []
        for v in mf.list_versions(path):
            try:
                st = os.stat(path / mf.manifest_name(v))
            except FileNotFoundError:
                continue
            if _inode_key(st.st_dev, st.st_ino) in shared:
                pinned.append(v)
        return pinned
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        pinned = []
        for v in mf.list_versions(path):
            probe = _lock_unpinned(mf.manifest_name(v), fd)
            if probe is None:
                if (path / mf.manifest_name(v)).exists():
                    pinned.append(v)
            else:
                os.close(probe)
        return pinned
    finally:
        os.close(fd)


# Pins held by this process, until `release` (so a pin whose object the caller dropped is
# still held: the documented lifetime is until `release` or the process's end).
_HELD: dict[int, "VersionPin"] = {}
_HELD_LOCK = threading.Lock()


# Writer locks of this process: a forked child drops its copies (`_forget_writers_in_child`).
_WRITERS: "weakref.WeakSet[WriterLock]" = weakref.WeakSet()


def _forget_writers_in_child() -> None:
    """After fork: the child closes its copies of the writer locks' descriptors without
    unlocking (an unlock would release the parent's lock: another writer could then open
    the store beside the parent; a copy kept would hold the lock after the parent closes)
    and refuses writes through them (`WriterLock.check`)."""
    parent = os.getppid()
    for lock in list(_WRITERS):
        fd, lock.fd = lock.fd, None
        if fd is not None:
            lock._forked_from = parent
            with contextlib.suppress(OSError):
                os.close(fd)


def _forget_pins_in_child() -> None:
    """After fork: the child closes its copies of the pins' descriptors, so that the locks
    end with the parent's `release` (an inherited descriptor shares the parent's lock and
    would keep it while the child lives). No unlock: that would release the parent's pin."""
    for pin in list(_HELD.values()):
        fd, pin._fd = pin._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pins_in_child)
    os.register_at_fork(after_in_child=_forget_writers_in_child)


def _hold_shared(path: Path) -> int | None:
    """`path` open with ``flock(LOCK_SH)``, or None when, once the lock is held, the name no
    longer leads to the file locked (the lock waits while a collector deletes it)."""
    try:
        fd = open_regular(path, "manifest")  # (a FIFO in its place made a plain open wait for a writer)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.path.samestat(os.stat(path), os.fstat(fd)):
            return fd
    except FileNotFoundError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


class VersionPin:
    """Keep committed `version` of the store at `path` from garbage collection until
    `release` or the process's end (dropping the object does not release it): its manifest
    and files stay, so it can be opened again (``Store.open(path, version=v)``) whatever a
    writer commits meanwhile. A child made by fork does not hold its parent's pins.

    The pin is a shared flock on the version's manifest (module docstring): no file is
    written, and read permission on the manifest is all it needs.

    Raises
    ------
    StoreNotFound
        `path` is not a directory, or the version is not (or no longer) in the store.
    StoreCorrupted
        Something other than a manifest file holds the version's name.
    """

    def __init__(self, path: str | os.PathLike, version: int) -> None:
        self.path = Path(path)
        self.version = int(version)
        if not self.path.is_dir():
            raise StoreNotFound(f"{self.path}: no store directory here")
        where = self.path / mf.manifest_name(self.version)
        with storage_errors(f"pin version {self.version}", where):
            fd = _hold_shared(where)
        if fd is None:  # (pruned by a writer's garbage collection: not damage, as open(version=) says)
            raise StoreNotFound(f"{self.path}: version {self.version} is not in the store (versions "
                                f"{mf.list_versions(self.path)}; garbage collection removes versions beyond the "
                                f"newest `retain` unless pinned); expected a committed version to pin")
        self._fd: int | None = fd
        with _HELD_LOCK:
            _HELD[id(self)] = self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the pin (idempotent): the next garbage collection may prune the version."""
        with _HELD_LOCK:
            fd, self._fd = self._fd, None
            _HELD.pop(id(self), None)
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "VersionPin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"VersionPin({str(self.path)!r}, version={self.version}, held={self.held})"


def collect_garbage(lock: WriterLock, *, keep_files: set[str] = frozenset()) -> dict[str, int]:
    """Writer only: apply the retention rule of the newest manifest (module docstring).

    Deletes temporary manifests, manifests older than the newest ``retain`` that no live
    `VersionPin` holds, then data files that no kept manifest names (and that are not in
    `keep_files`). If a kept manifest cannot be read, no data file is deleted (what it
    names is unknown). Returns counts of what was removed."""
    lock.check("garbage collection")
    fd = lock.fd
    names = os.listdir(fd)
    removed = {"tmp": 0, "manifests": 0, "files": 0, "staging": 0}
    for name in names:
        if mf.TMP_RE.fullmatch(name):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
                removed["tmp"] += 1
    versions = sorted(int(m.group(1)) for n in names if (m := mf.MANIFEST_RE.fullmatch(n)) and int(m.group(1)) >= 1)
    if not versions:
        return removed
    try:
        newest = parse_body(mf.read_manifest(lock.path, versions[-1]), f"{lock.path} version {versions[-1]}")
    except VeczError:
        return removed  # a damaged newest manifest: delete nothing
    # the manifests to prune, each locked until it is deleted (a pin then waits and finds
    # it gone); one a pin holds is kept with its files (module docstring)
    doomed: dict[int, int] = {}
    try:
        for v in versions[:-newest.retain]:
            locked = _lock_unpinned(mf.manifest_name(v), fd)
            if locked is not None:
                doomed[v] = locked
        referenced: set[str] | None = set(keep_files) | body_files(newest)
        for v in versions[:-1]:
            if v in doomed:
                continue
            try:
                referenced |= body_files(parse_body(mf.read_manifest(lock.path, v), f"{lock.path} version {v}"))
            except VeczError:
                referenced = None  # what it names is unknown: no data file is deleted this pass
                break
        for v, locked in doomed.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(mf.manifest_name(v), dir_fd=fd)
                removed["manifests"] += 1
    finally:
        for locked in doomed.values():
            os.close(locked)
    if removed["manifests"]:
        os.fsync(fd)
    if referenced is None:
        return removed
    for name in names:
        if DATA_FILE_RE.fullmatch(name) and name not in referenced:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
                removed["files"] += 1
    for name in names:
        # a staging directory outlives only a build that died before adopting its files
        # (formats/FORMAT.md): the lock holder is the only one who adopts, so any it is
        # not using now is stale
        if STAGING_RE.fullmatch(name) and name not in keep_files:
            shutil.rmtree(lock.path / name, ignore_errors=True)
            removed["staging"] += 1
    return removed
