"""The root of vecz's typed errors, and the ones raised while reading bytes from disk.

They live in formats/ because imports flow engine -> formats -> kernels: readers here must
raise them, and engine/errors.py (the public home, DESIGN.md) re-exports every one. Each
error also inherits the builtin it refines; messages say what was expected and what was found.
"""

from __future__ import annotations

__all__ = ["VeczError", "InvalidInput", "DimensionMismatch", "FormatError", "DatasetNotFound"]


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
