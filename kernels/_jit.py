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

`target_has(feature)` tells whether the code Numba generates may use an x86 feature: Numba
compiles for the host unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise, and a
kernel that emits a target-specific intrinsic (the AVX2 byte shuffle of the fast scan)
must follow what Numba targets, not what the host has, or LLVM aborts the process.
"""

from __future__ import annotations

import numba
from llvmlite import binding as llvm_binding
from numba.core import config

__all__ = ["jit", "jit_fast", "jit_batch", "jit_batch_fast", "jit_inline", "target_has"]

jit = numba.njit(cache=True, nogil=True)
jit_fast = numba.njit(cache=True, nogil=True, fastmath=True)
jit_batch = numba.njit(cache=True, nogil=True, parallel=True)
jit_batch_fast = numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
# inlined into its callers in Numba's IR: a helper in a hot loop that LLVM left as a call
# (pq._sums4: the PQ8 scan ran 0.90-0.95x as a plain call, 0.99-1.02x inlined)
jit_inline = numba.njit(cache=True, nogil=True, inline="always")


# LLVM x86 CPU names lacking a feature the kernels test for (used for NUMBA_CPU_NAME with an
# empty NUMBA_CPU_FEATURES, where LLVM takes the named CPU's own features).
_OLD_X86 = {
    "generic", "x86-64", "x86-64-v2", "i386", "i486", "i586", "i686", "pentium", "pentium-m", "pentium2",
    "pentium3", "pentium4", "prescott", "nocona", "core2", "penryn", "nehalem", "corei7", "westmere",
    "sandybridge", "corei7-avx", "bonnell", "atom", "silvermont", "slm", "goldmont", "goldmont-plus", "tremont",
    "k8", "opteron", "athlon64", "athlon-fx", "k8-sse3", "amdfam10", "barcelona", "btver1", "bdver1",
}
_LACKING = {
    "avx2": _OLD_X86 | {"ivybridge", "core-avx-i", "btver2", "bdver2", "bdver3"},
    "f16c": _OLD_X86,
}
# ... and the LLVM x86 CPU names that have a feature few CPUs have (AVX-512 byte shuffles:
# Intel server cores since Skylake-SP, Ice/Tiger/Rocket Lake clients, AMD Zen 4 and 5).
_HAVING = {
    "avx512bw": {
        "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
        "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
        "diamondrapids", "znver4", "znver5", "x86-64-v4",
    },
}


def target_has(feature: str) -> bool:
    """Whether Numba's target CPU has the x86 `feature` ("avx2", "f16c" or "avx512bw", or any
    feature NUMBA_CPU_FEATURES names).

    NUMBA_CPU_FEATURES, when set, is the feature list Numba passes to LLVM ("+avx2,..."; an
    empty string means the named CPU's own features); unset, Numba uses the host's features
    whatever NUMBA_CPU_NAME says.
    """
    features = config.CPU_FEATURES
    if features is None:
        return bool(llvm_binding.get_host_cpu_features().get(feature, False))
    flags = {f.strip() for f in features.split(",") if f.strip()}
    if f"+{feature}" in flags or f"-{feature}" in flags:
        return f"+{feature}" in flags
    if feature not in _LACKING and feature not in _HAVING:
        raise ValueError(f"target_has: expected one of {sorted(_LACKING) + sorted(_HAVING)} or a feature "
                         f"named in NUMBA_CPU_FEATURES, found {feature!r}")
    name = (config.CPU_NAME or llvm_binding.get_host_cpu_name()).lower()
    if feature in _HAVING:
        return name in _HAVING[feature]
    return name not in _LACKING[feature]
