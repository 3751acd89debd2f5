"""vecz on-disk formats: segment files, dense-vector files, manifests and importers.

Every byte is specified in formats/FORMAT.md. Imports flow engine -> formats -> kernels;
formats never computes distances. Readers bounds-check every length and offset before they
allocate and raise only `vecz.formats.errors.FormatError` subclasses on hostile bytes.
"""

__all__ = ["dense", "errors", "importers", "manifest", "segment"]
