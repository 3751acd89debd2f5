"""Typed errors of vecz, rooted in `VeczError`.

Each error also inherits the builtin it refines, so `except ValueError` keeps working for
callers that do not know vecz. Messages say what was expected and what was found.
"""

from __future__ import annotations

__all__ = [
    "VeczError",
    "CodecSpecError",
    "DimensionMismatch",
    "InvalidInput",
    "NotTrained",
]


class VeczError(Exception):
    """Root of every error vecz raises on purpose."""


class CodecSpecError(VeczError, ValueError):
    """A codec spec string (or config) is malformed, or does not fit the dimension."""


class DimensionMismatch(VeczError, ValueError):
    """An array's width differs from the dimension the codec or store was made for."""


class InvalidInput(VeczError, ValueError):
    """Vectors or arguments that cannot be used: NaN or inf, wrong dtype, k <= 0, ..."""


class NotTrained(VeczError, RuntimeError):
    """A codec was asked to encode or search before it was trained."""
