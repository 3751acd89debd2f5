"""Typed errors of vecz, rooted in `VeczError`.

The root and the errors raised while reading files are defined in formats/errors.py (imports
flow engine -> formats) and re-exported here. Each error also inherits the builtin it
refines, so `except ValueError` keeps working for callers that do not know vecz. Messages
say what was expected and what was found.
"""

from __future__ import annotations

from ..formats.errors import (
    ChecksumError,
    CommitConflict,
    DatasetNotFound,
    DimensionMismatch,
    FormatError,
    FormatVersionError,
    InvalidInput,
    StorageError,
    StoreCorrupted,
    StoreNotFound,
    VeczError,
)

__all__ = [
    "VeczError",
    "CodecSpecError",
    "DimensionMismatch",
    "InvalidInput",
    "NotTrained",
    "IdNotFound",
    "FormatError",
    "FormatVersionError",
    "ChecksumError",
    "StoreCorrupted",
    "StoreNotFound",
    "StoreLocked",
    "ReadOnlyStore",
    "CommitConflict",
    "DatasetNotFound",
    "MissingDependency",
    "StoreClosed",
    "StorageError",
    "CommitIncomplete",
    "StoreMoved",
    "TooLarge",
    "ShardUnavailable",
    "QueriesUnlikeModel",
]


class QueriesUnlikeModel(RuntimeWarning):
    """A warning, not an error: in a ``rerank="auto"`` search far more of the rows read scored
    above their upper bound than the error model's confidence allows. The queries differ
    from those the model was measured on, and answers may miss true neighbours: measure it
    on a sample of them (`Store.calibrate(sample)`). `SearchStats.bound_exceeded` counts
    those rows."""


class CodecSpecError(VeczError, ValueError):
    """A codec spec string (or config) is malformed, or does not fit the dimension."""


class NotTrained(VeczError, RuntimeError):
    """A codec was asked to encode or search before it was trained."""


class IdNotFound(VeczError, KeyError):
    """Ids asked for (`Store.get`) that are not live in the store."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class StoreLocked(VeczError, RuntimeError):
    """Another process holds the store's writer lock (one writer at a time)."""


class ReadOnlyStore(VeczError, PermissionError):
    """A write (add, delete, train, compact) on a store opened read-only."""


class MissingDependency(VeczError, ImportError):
    """An optional extra is needed for this call (faiss-cpu, matplotlib, ray): the message
    names the pip command that installs it."""


class StoreClosed(VeczError, ValueError):
    """A store used after `close()` (like a closed file, it raises ValueError's subclass)."""


class CommitIncomplete(VeczError, OSError):
    """An operation's new version was published (opening the store shows it; its files
    stay) but a step after the publish failed: the directory fsync that makes the publish
    durable, or loading what it wrote into this writer. Its rows are committed, so do not
    repeat the operation; the writer goes on from that version where it could load it, and
    is closed otherwise (open the store again). ``version`` is the published version,
    ``errno`` the system's when the cause was an OSError."""

    def __init__(self, message: str, version: int, errno_: int | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.errno = errno_

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreMoved(VeczError, RuntimeError):
    """The directory a writer opened is no longer at its path (moved, replaced or removed)
    or lost its lock: the writer stops before writing, collecting garbage or publishing,
    and everything it committed stays as it was."""


class TooLarge(VeczError, ValueError):
    """A request whose memory cannot be allocated: a codec whose trained state or scratch
    would exceed the limit, or a dimension too wide; the message says the size."""


class ShardUnavailable(VeczError, RuntimeError):
    """A distributed search (engine/ray.py) lost a shard: its actor died and could not be
    restarted. The message names the shard and its segments; no partial answer is returned
    unless the caller asked for one."""
