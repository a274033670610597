"""The runtime refuses, with a clear message, a CPU older than the one llama.cpp was built for."""

from __future__ import annotations

import pytest
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.preflight import check_cpu_features, host_cpu_flags, llama_cpp_cpu_features


def test_older_cpu_is_refused_naming_the_missing_features() -> None:
    with pytest.raises(RuntimeFailure) as caught:
        check_cpu_features(built={"AVX", "AVX2", "FMA", "F16C"}, host={"sse2", "avx", "f16c"})
    message = str(caught.value)
    assert "lacks AVX2, FMA" in message and "x86-64-v3" in message


def test_matching_cpu_passes() -> None:
    check_cpu_features(built={"AVX2", "FMA"}, host={"avx2", "fma", "sse2"})


def test_llama_cpp_is_built_for_the_profile_baseline_not_plain_sse2(llama_cpp_binding: object) -> None:
    # images/cpu/profile.toml builds llama.cpp for x86-64-v3; without those flags it is ~10x slower.
    assert {"AVX", "AVX2", "FMA", "F16C"} <= llama_cpp_cpu_features()


def test_this_host_runs_the_built_library(llama_cpp_binding: object) -> None:
    if host_cpu_flags() is None:
        pytest.skip("no /proc/cpuinfo flags here")
    check_cpu_features()
