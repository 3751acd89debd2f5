"""vecz engine: the store (`Store`), codecs (`Codec`) and the CLI."""

from .codecs import Codec, CodeIndex, SearchResult, code_size, format_spec, parse_spec
from .errors import (
    ChecksumError,
    CodecSpecError,
    DimensionMismatch,
    FormatError,
    FormatVersionError,
    IdNotFound,
    InvalidInput,
    NotTrained,
    ReadOnlyStore,
    StoreCorrupted,
    StoreLocked,
    StoreNotFound,
    VeczError,
)
from .store import Store, check_store

__all__ = [
    "Store",
    "check_store",
    "Codec",
    "CodeIndex",
    "SearchResult",
    "code_size",
    "format_spec",
    "parse_spec",
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
]
