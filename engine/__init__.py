"""vecz engine: codecs (and, in later work, the store and CLI)."""

from .codecs import Codec, CodeIndex, SearchResult, code_size, format_spec, parse_spec
from .errors import CodecSpecError, DimensionMismatch, InvalidInput, NotTrained, VeczError

__all__ = [
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
]
