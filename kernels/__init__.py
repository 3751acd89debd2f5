"""vecz kernels: Numba-jitted, pure array code (numpy and numba only, no I/O).

Modules: `topk`, `kmeans`, `pq`, `fastscan`, `binary`, `scalar`, `dense`, `ivf`,
`transform`, `locality` (plain numpy: the dense files' row order). Import them by module
(`from kernels import pq`); importing the package does not compile anything.
"""

__all__ = ["topk", "kmeans", "pq", "fastscan", "binary", "scalar", "dense", "ivf", "transform", "locality"]
