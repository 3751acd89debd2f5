"""Jit presets shared by every kernel module.

One place decides how kernels are compiled, so that every kernel is cached on disk
(`cache=True`: the first import compiles, later imports load machine code) and releases
the GIL (`nogil=True`: callers may run kernels from threads).

- `jit`: serial kernels. Integer, Hamming and top-k code uses this preset and never
  `fastmath`, because reassociation is only safe for float sums checked with a tolerance.
- `jit_fast`: serial float accumulation (dot products, lookup-table sums); tests compare
  these against numpy with a tolerance.
- `jit_batch`: the `*_batch` drivers that loop over queries with `prange`; each one has a
  serial twin built from the same inner kernel.
"""

from __future__ import annotations

import numba

__all__ = ["jit", "jit_fast", "jit_batch", "jit_batch_fast"]

jit = numba.njit(cache=True, nogil=True)
jit_fast = numba.njit(cache=True, nogil=True, fastmath=True)
jit_batch = numba.njit(cache=True, nogil=True, parallel=True)
jit_batch_fast = numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
