"""The CPU baseline of llama.cpp: read from the profile's cmake_args, recorded as a label and a variable."""

from __future__ import annotations

import dataclasses

import pytest

from gapforge.errors import GapforgeError
from gapforge.lock.python import parse_python_lock
from gapforge.profile import (
    CPU_BASELINE_ENV,
    CPU_BASELINE_LABEL,
    REPO_ROOT,
    SdistBuild,
    cpu_baseline,
    llama_cpp_cpu_baseline,
    load_profile,
    profile_env,
    profile_labels,
)

WHERE = "images/x/profile.toml: cmake_args"


def test_the_switched_on_features_sorted() -> None:
    args = ["-DGGML_NATIVE=OFF", "-DGGML_FMA=ON", "-DGGML_AVX2=ON", "-DGGML_F16C=ON", "-DGGML_AVX=ON",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAVA_BUILD=OFF"]  # fmt: skip
    assert cpu_baseline(args, WHERE) == ["AVX", "AVX2", "F16C", "FMA"]
    assert cpu_baseline(list(reversed(args)), WHERE) == ["AVX", "AVX2", "F16C", "FMA"]


def test_cmake_spellings_and_the_last_setting_wins() -> None:
    args = [
        "-DGGML_AVX512=ON", "-DGGML_AVX512=OFF",  # switched off again: not needed
        "-DGGML_BMI2:BOOL=TRUE", "-D GGML_AVX_VNNI=1", "-DGGML_AVX512_VNNI=yes",
        "-DGGML_FMA=0", "-DGGML_F16C=NO", "-DGGML_SSE42=ON",
        "-DGGML_CUDA=ON", "-DCMAKE_BUILD_TYPE=Release",  # not x86 features
    ]  # fmt: skip
    assert cpu_baseline(args, WHERE) == ["AVX512_VNNI", "AVX_VNNI", "BMI2", "SSE42"]
    assert cpu_baseline([], WHERE) == []


def test_a_native_build_is_refused_naming_the_file_and_the_fix() -> None:
    with pytest.raises(GapforgeError) as caught:
        cpu_baseline(["-DGGML_AVX2=ON", "-DGGML_NATIVE=ON"], WHERE)
    message = str(caught.value)
    assert message.startswith(WHERE) and "-DGGML_NATIVE=OFF" in message
    cpu_baseline(["-DGGML_NATIVE=ON", "-DGGML_NATIVE=OFF"], WHERE)  # the last one counts


def test_the_shipped_profiles_record_the_same_baseline_in_label_and_env() -> None:
    for name in ("cpu", "cuda"):
        profile = load_profile(name)
        lock = parse_python_lock(REPO_ROOT / "lockfiles" / f"{name}.txt")
        assert profile_labels(profile, lock)[CPU_BASELINE_LABEL] == "AVX,AVX2,F16C,FMA"
        assert profile_env(profile, lock)[CPU_BASELINE_ENV] == "AVX,AVX2,F16C,FMA"
    assert CPU_BASELINE_LABEL == "io.gapforge.llama_cpp.cpu_baseline"
    assert CPU_BASELINE_ENV == "GAPFORGE_LLAMA_CPP_CPU_BASELINE"


def test_no_llama_cpp_build_records_nothing_and_the_package_name_is_normalized() -> None:
    cpu = load_profile("cpu")
    lock = parse_python_lock(REPO_ROOT / "lockfiles" / "cpu.txt")
    bare = dataclasses.replace(cpu, sdist_builds={})
    assert llama_cpp_cpu_baseline(bare) is None
    assert CPU_BASELINE_LABEL not in profile_labels(bare, lock)
    assert CPU_BASELINE_ENV not in profile_env(bare, lock)
    spelled = dataclasses.replace(
        cpu, sdist_builds={"Llama_CPP.python": SdistBuild("Llama_CPP.python", ("-DGGML_AVX=ON",))}
    )
    assert llama_cpp_cpu_baseline(spelled) == "AVX"


def test_every_baseline_name_the_builder_records_is_one_the_runtime_can_check() -> None:
    """The builder writes ggml's feature names into the image; the runtime maps each to a
    /proc/cpuinfo flag. A name the runtime does not know would never be checked."""
    from gapforge_runtime.preflight import _CPUINFO_FLAG

    from gapforge.profile import GGML_CPU_FEATURES

    assert set(GGML_CPU_FEATURES.values()) <= set(_CPUINFO_FLAG)
