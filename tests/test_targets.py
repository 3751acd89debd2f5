"""Numba compiles for the host unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise; the
kernels that emit target-specific code (the AVX2 byte shuffle of the fast scan, F16C half
widening) must follow the target Numba compiles for, or LLVM aborts the process. CI runs
the kernel tests for NUMBA_CPU_NAME=haswell and x86-64 (.ci/run); this file checks the
decision itself and that the running configuration is the one the kernels chose."""

from __future__ import annotations

import os

import pytest
from llvmlite import binding as llvm_binding
from numba.core import config

from vecz.kernels import _jit, dense, fastscan


@pytest.mark.parametrize("name, features, feature, expected", [
    ("haswell", "", "avx2", True),
    ("haswell", "", "f16c", True),
    ("x86-64", "", "avx2", False),
    ("x86-64", "", "f16c", False),
    ("ivybridge", "", "avx2", False),
    ("ivybridge", "", "f16c", True),
    ("znver4", "", "avx2", True),
    ("sapphirerapids", "", "avx2", True),
    ("x86-64", "+avx2,+f16c", "avx2", True),
    ("skylake", "-avx2", "avx2", False),
    ("generic", "+sse2", "f16c", False),
    ("znver5", "", "avx512bw", True),
    ("sapphirerapids", "", "avx512bw", True),
    ("skylake-avx512", "", "avx512bw", True),
    ("skylake", "", "avx512bw", False),
    ("haswell", "", "avx512bw", False),
    ("znver3", "", "avx512bw", False),
    ("x86-64", "+avx2,+avx512bw", "avx512bw", True),
    ("znver4", "-avx512bw", "avx512bw", False),
])
def test_target_has_follows_numba_cpu_name_and_features(monkeypatch, name, features, feature, expected):
    monkeypatch.setattr(config, "CPU_NAME", name)
    monkeypatch.setattr(config, "CPU_FEATURES", features)
    assert _jit.target_has(feature) is expected


def test_without_numba_cpu_features_the_host_decides(monkeypatch):
    monkeypatch.setattr(config, "CPU_NAME", "x86-64")  # the name alone does not change Numba's features
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    host = llvm_binding.get_host_cpu_features()
    assert _jit.target_has("avx2") is bool(host.get("avx2", False))


def test_unknown_feature_without_a_feature_list_is_refused(monkeypatch):
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    with pytest.raises(ValueError, match="avx512vnni"):
        _jit.target_has("avx512vnni")


def test_the_kernels_follow_this_process_target():
    """Under CI's NUMBA_CPU_NAME=x86-64 run this proves the scalar twins were chosen."""
    assert fastscan.HAS_SHUFFLE is _jit.target_has("avx2")
    assert fastscan.HAS_SHUFFLE_512 is (fastscan.HAS_SHUFFLE and _jit.target_has("avx512bw"))
    assert dense._HAS_F16C is _jit.target_has("f16c")
    if os.environ.get("NUMBA_CPU_NAME") == "x86-64" and os.environ.get("NUMBA_CPU_FEATURES") == "":
        assert not fastscan.HAS_SHUFFLE and not fastscan.HAS_SHUFFLE_512 and not dense._HAS_F16C
    if os.environ.get("NUMBA_CPU_NAME") == "haswell" and os.environ.get("NUMBA_CPU_FEATURES") == "":
        assert fastscan.HAS_SHUFFLE and not fastscan.HAS_SHUFFLE_512
