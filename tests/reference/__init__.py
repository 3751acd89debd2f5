"""Plain-numpy oracles for the kernels in `kernels/` (one module per kernel family).

Rules for this package: numpy only (no numba, no imports of `kernels`), written to be
obviously correct rather than fast: loops or straightforward vectorised numpy, float64
wherever the kernel may round. Tests compare each kernel against the oracle of the same
name, exactly where the maths allows and with a stated tolerance elsewhere.
"""

__all__ = ["topk", "kmeans", "pq", "binary", "scalar", "dense", "ivf"]
