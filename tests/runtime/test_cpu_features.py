"""The runtime refuses, with a clear message, a CPU older than the one llama.cpp was built for.

The baseline comes from the image's $GAPFORGE_LLAMA_CPP_CPU_BASELINE, so the check runs before
llama_cpp is imported (the library's own code may use the instructions the CPU lacks). These tests
need no torch: they import the runtime's preflight and pipeline modules only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gapforge_runtime import pipeline, preflight
from gapforge_runtime.config import load_recipe_settings
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.image_contract import CPU_BASELINE_ENV
from gapforge_runtime.outputs import Layout
from gapforge_runtime.preflight import check_cpu_features, host_cpu_flags, llama_cpp_cpu_features

# A Sandy Bridge: AVX but no AVX2, FMA or F16C... (flags as Linux lists them)
OLD_CPU_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov sse sse2 ssse3 pni sse4_1 sse4_2 popcnt avx"
HASWELL_FLAGS = OLD_CPU_FLAGS + " f16c fma avx2 bmi2"


def fake_cpuinfo(folder: Path, flags: str) -> Path:
    path = folder / "cpuinfo"
    path.write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return path


@pytest.fixture
def no_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama_cpp not imported yet, as at the start of a run (restored afterwards if it was)."""
    for name in [m for m in sys.modules if m == "llama_cpp" or m.startswith("llama_cpp.")]:
        monkeypatch.delitem(sys.modules, name)


def test_older_cpu_is_refused_naming_the_missing_features() -> None:
    with pytest.raises(RuntimeFailure) as caught:
        check_cpu_features(built={"AVX", "AVX2", "FMA", "F16C"}, host={"sse2", "avx", "f16c"})
    message = str(caught.value)
    assert "lacks AVX2, FMA" in message and "x86-64-v3" in message


def test_matching_cpu_passes() -> None:
    check_cpu_features(built={"AVX2", "FMA"}, host={"avx2", "fma", "sse2"})


def test_recorded_baseline_is_checked_without_importing_llama_cpp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_llama_cpp: None
) -> None:
    monkeypatch.setenv(CPU_BASELINE_ENV, "AVX,AVX2,F16C,FMA")
    host = host_cpu_flags(fake_cpuinfo(tmp_path, OLD_CPU_FLAGS))
    assert host is not None and "avx" in host and "avx2" not in host
    with pytest.raises(RuntimeFailure) as caught:
        check_cpu_features(host=host)
    message = str(caught.value)
    assert "this CPU lacks AVX2, F16C, FMA" in message
    assert f"it needs AVX, AVX2, F16C, FMA, says ${CPU_BASELINE_ENV}" in message
    assert "no avx2, f16c, fma flag" in message
    assert "llama_cpp" not in sys.modules
    check_cpu_features(host=host_cpu_flags(fake_cpuinfo(tmp_path, HASWELL_FLAGS)))
    assert "llama_cpp" not in sys.modules


def test_an_empty_baseline_needs_nothing_and_an_unknown_name_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_llama_cpp: None
) -> None:
    host = host_cpu_flags(fake_cpuinfo(tmp_path, "fpu sse sse2"))
    monkeypatch.setenv(CPU_BASELINE_ENV, "")
    check_cpu_features(host=host)
    monkeypatch.setenv(CPU_BASELINE_ENV, "AVX2,AVX10")
    with pytest.raises(RuntimeFailure, match=f"\\${CPU_BASELINE_ENV}='AVX2,AVX10' names AVX10"):
        check_cpu_features(host=host)
    assert "llama_cpp" not in sys.modules


def test_no_cpu_flags_means_no_check_and_no_library_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_llama_cpp: None
) -> None:
    arm = tmp_path / "arm-cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm\n")
    assert host_cpu_flags(arm) is None and host_cpu_flags(tmp_path / "absent") is None
    monkeypatch.setattr(preflight, "CPUINFO", arm)
    monkeypatch.delenv(CPU_BASELINE_ENV, raising=False)
    check_cpu_features()  # nothing to compare with: the library is not even asked
    assert "llama_cpp" not in sys.modules


def _recipe(folder: Path) -> Path:
    path = folder / "recipe.json"
    path.write_text(json.dumps({
        "name": "tiny", "version": "0.1.0", "profile": "cpu",
        "model": {"id": "tiny", "source": {"type": "local", "path": "model"}},
        "data": {"format": "chat", "sample": "sample.jsonl"},
        "lora": {"r": 8, "alpha": 16}, "train": {"learning_rate": 0.01, "max_steps": 2},
        "quantize": ["gguf:q8_0"], "evaluate": {"gates": {"max_perplexity_delta_pct": {"gguf:q8_0": 5.0}}},
    }))  # fmt: skip
    return path


@pytest.mark.parametrize("step", ["quantize", "eval"])
def test_quantize_and_eval_check_the_cpu_before_llama_cpp_is_imported(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_llama_cpp: None
) -> None:
    monkeypatch.setenv(CPU_BASELINE_ENV, "AVX,AVX2,F16C,FMA")
    monkeypatch.setattr(preflight, "CPUINFO", fake_cpuinfo(tmp_path, OLD_CPU_FLAGS))
    out = Layout(tmp_path / "out")
    ctx = pipeline.RunContext(
        recipe=load_recipe_settings(str(_recipe(tmp_path))), model_dir=tmp_path / "model",
        data_file=tmp_path / "sample.jsonl", out=out, llama_cpp=tmp_path / "llama.cpp",
    )  # fmt: skip
    # what eval finds of the earlier steps: a merged model and a GGUF to score with llama.cpp
    out.merged.mkdir(parents=True)
    (out.merged / "config.json").write_text("{}")
    out.gguf_file("tiny", "gguf:q8_0").parent.mkdir(parents=True)
    out.gguf_file("tiny", "gguf:q8_0").write_bytes(b"GGUF")
    with pytest.raises(RuntimeFailure, match="this CPU lacks AVX2, F16C, FMA"):
        {"quantize": pipeline.step_quantize, "eval": pipeline.step_eval}[step](ctx)
    assert "llama_cpp" not in sys.modules


def test_the_step_modules_do_not_import_llama_cpp_when_imported() -> None:
    probe = (
        "import sys, gapforge_runtime.cli, gapforge_runtime.pipeline, gapforge_runtime.export.quantize, "
        "gapforge_runtime.evaluation.metrics, gapforge_runtime.preflight; print('llama_cpp' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "False"


def test_llama_cpp_is_built_for_the_profile_baseline_not_plain_sse2(llama_cpp_binding: object) -> None:
    # images/cpu/profile.toml builds llama.cpp for x86-64-v3; without those flags it is ~10x slower.
    assert {"AVX", "AVX2", "FMA", "F16C"} <= llama_cpp_cpu_features()


def test_this_host_runs_the_built_library(llama_cpp_binding: object, monkeypatch: pytest.MonkeyPatch) -> None:
    if host_cpu_flags() is None:
        pytest.skip("no /proc/cpuinfo flags here")
    monkeypatch.delenv(CPU_BASELINE_ENV, raising=False)  # ask the library itself
    check_cpu_features()
