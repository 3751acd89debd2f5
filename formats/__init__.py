"""vecz on-disk formats (segment, dense, manifest, importers): see formats/FORMAT.md.

Not yet written: the store issue builds it. Imports flow engine -> formats -> kernels.
"""

__all__: list[str] = []
