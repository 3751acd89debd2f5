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
