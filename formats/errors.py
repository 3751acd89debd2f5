"""The root of vecz's typed errors, and the ones raised while reading bytes from disk.

They live in formats/ because imports flow engine -> formats -> kernels: readers here must
raise them, and engine/errors.py (the public home, DESIGN.md) re-exports every one. Each
error also inherits the builtin it refines; messages say what was expected and what was found.
"""

from __future__ import annotations

__all__ = [
    "VeczError",
    "InvalidInput",
    "DimensionMismatch",
    "FormatError",
    "FormatVersionError",
    "ChecksumError",
    "StoreCorrupted",
    "DatasetNotFound",
    "StoreNotFound",
    "CommitConflict",
    "StorageError",
    "refused",
]


class VeczError(Exception):
    """Root of every error vecz raises on purpose."""


class InvalidInput(VeczError, ValueError):
    """Vectors or arguments that cannot be used: NaN or inf, wrong dtype, k <= 0, ..."""


class DimensionMismatch(VeczError, ValueError):
    """An array's width differs from the dimension the codec or store was made for."""


class FormatError(VeczError, ValueError):
    """A file's bytes do not follow its format (truncated, inconsistent headers, bad dtype)."""


class DatasetNotFound(VeczError, FileNotFoundError):
    """A named dataset or an input file does not exist where it was looked for."""


class FormatVersionError(FormatError):
    """A file written by a newer major version of its format, or with a required feature
    flag this reader does not know: it is refused rather than guessed at."""


class StoreCorrupted(FormatError):
    """A store's files are damaged or inconsistent: truncated, missing, or contradicting the
    manifest that names them."""


class ChecksumError(StoreCorrupted):
    """Bytes whose CRC32 differs from the checksum recorded beside them."""


class StoreNotFound(VeczError, FileNotFoundError):
    """A store directory that does not exist, or holds no manifest (no committed version)."""


class CommitConflict(VeczError, RuntimeError):
    """Another writer published the same store version first; nothing of this commit is visible."""


class StorageError(VeczError, OSError):
    """The operating system refused a write or a read the store needed (disk full,
    read-only file system, permission denied, too many open files...). The message names
    the operation and the path; ``errno`` is the system's. Nothing of a failed commit is
    visible, no partial file is left behind, and the same writer may retry once the cause
    is gone."""

    def __init__(self, message: str, errno_: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno_
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def refused(exc: OSError, operation: str, path: object) -> StorageError:
    """`StorageError` for an OSError the system raised while reading a store's file (the
    reader's own message; engine.commit.storage_errors words a writer's)."""
    reason = exc.strerror or str(exc)
    return StorageError(f"{operation}: {path}: {reason}", exc.errno, str(path))
