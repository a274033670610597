"""Checks that run before any work: the model folder, the free disk, the hardware a method needs."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.image_contract import CPU_BASELINE_ENV

UNSAFE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
MiB = 1 << 20


def check_model_dir(model_dir: Path, label: str = "--model") -> None:
    """A folder in HF layout: config.json, a tokenizer, safetensors weights, no pickled weights."""
    if not model_dir.is_dir():
        raise RuntimeFailure(
            f"{label} {model_dir}: no such folder. Pass the base model folder (HF layout: config.json, "
            "tokenizer files, *.safetensors), or set $GAPFORGE_MODEL_DIR."
        )
    problems = []
    if not (model_dir / "config.json").is_file():
        problems.append("config.json is missing (the model's architecture)")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        problems.append("no tokenizer (tokenizer.json or tokenizer.model) is present")
    if not list(model_dir.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in UNSAFE_WEIGHTS for p in model_dir.glob(pattern))
        if pickled:
            problems.append(
                f"its weights are pickled ({', '.join(pickled[:3])}), which this runtime refuses to load: "
                "convert them to safetensors on the connected side"
            )
        else:
            problems.append("no *.safetensors weights are present")
    if problems:
        raise RuntimeFailure(
            f"{label} {model_dir}: not a usable model folder: {'; '.join(problems)}. Copy the complete "
            "model folder (as `gapforge-runtime import-gguf` or `save_pretrained` writes it)."
        )


def weights_bytes(model_dir: Path) -> int:
    """Total size of the model's safetensors files."""
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def parameter_count(model_dir: Path) -> int:
    """Number of parameters, read from the safetensors headers (no weights loaded)."""
    total = 0
    for path in model_dir.glob("*.safetensors"):
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header: dict[str, Any] = json.loads(handle.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for dim in meta["shape"]:
                    count *= dim
                total += count
    return total


def estimate_output_bytes(model_dir: Path, targets: list[str]) -> int:
    """A generous estimate of what a full run writes: merged copy, GGUFs, checkpoints, margin."""
    params = parameter_count(model_dir)
    per_target = {"gguf:f16": 2.0, "gguf:q8_0": 1.07, "gguf:q4_k_m": 0.7}
    gguf = 2.0 * params + sum(per_target.get(t, 0.0) * params for t in targets if t != "gguf:f16")
    merged = weights_bytes(model_dir)
    checkpoints = 0.1 * merged  # adapters and optimizer states are small next to the base
    return int(merged + gguf + checkpoints + 64 * MiB)


def check_free_space(out_dir: Path, needed: int) -> None:
    """Fail early when the output folder's disk cannot hold the run's outputs."""
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise RuntimeFailure(
            f"--out {out_dir}: the disk has {free / MiB:.0f} MiB free but this run needs about "
            f"{needed / MiB:.0f} MiB (merged model, GGUF files, checkpoints). Free some space or "
            "choose an --out folder on a larger disk."
        )


GPU_TARGETS = {
    "gptq:int4": "GPTQ INT4 (GPTQModel)",
    "bnb:nf4": "bitsandbytes NF4",
    "bnb:int8": "bitsandbytes INT8",
}
HF_QUANT_LIBRARIES = {"gptq:int4": ("gptqmodel", "optimum")}


def gpu_needs(method: str, targets: list[str], steps: tuple[str, ...]) -> list[str]:
    """What in this run needs a CUDA GPU: QLoRA when training, GPU-only targets when quantizing."""
    needs = []
    if method == "qlora" and "train" in steps:
        needs.append("train.method 'qlora' (4-bit NF4 base through bitsandbytes)")
    if "quantize" in steps:
        needs += [f"quantize target {t} ({GPU_TARGETS[t]})" for t in targets if t in GPU_TARGETS]
    return needs


def cuda_devices() -> int:
    """How many CUDA GPUs torch sees (0 without a GPU or without a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_hardware(method: str, targets: list[str], steps: tuple[str, ...], nproc: int = 1) -> None:
    """Fail before any work when the run needs a GPU (or a library) this machine does not have."""
    import importlib.util

    needs = gpu_needs(method, targets, steps)
    gpus = cuda_devices() if needs or nproc > 1 else 0
    if needs and gpus == 0:
        raise RuntimeFailure(
            f"this run needs a CUDA GPU for {'; '.join(needs)}, but no GPU is visible. Run the image "
            "on a GPU machine (`gapforge run … --gpus`, or `docker run --gpus all`), or use a recipe "
            "with train.method 'lora' and only gguf:* quantize targets."
        )
    wanted = []
    if "train" in steps and method == "qlora":
        wanted.append(("bitsandbytes", "train.method 'qlora'"))
    if "quantize" in steps:
        for target in targets:
            if target.startswith("bnb:"):
                wanted.append(("bitsandbytes", f"quantize target {target}"))
            for module in HF_QUANT_LIBRARIES.get(target, ()):
                wanted.append((module, f"quantize target {target}"))
    missing = sorted({(m, why) for m, why in wanted if importlib.util.find_spec(m) is None})
    if missing:
        raise RuntimeFailure(
            f"{', '.join(why + ' needs the Python package ' + m for m, why in missing)}, which is not "
            "installed. Use an image of the 'cuda' profile (its lock has them), or drop those targets."
        )
    if nproc > 1 and gpus and nproc > gpus:
        raise RuntimeFailure(
            f"--nproc {nproc}: only {gpus} GPU(s) are visible. Pass --nproc {gpus} or fewer, or run on "
            f"a machine with {nproc} GPUs (`gapforge run … --gpus all`)."
        )


def check_method(method: str) -> None:
    """QLoRA needs CUDA (bitsandbytes 4-bit); say so before loading anything."""
    check_hardware(method, [], ("train",))


def check_targets(targets: list[str]) -> None:
    """Every quantize target is one this runtime builds; GPU-only ones need a GPU (checked by check_hardware)."""
    known = {"gguf:f16", "gguf:q8_0", "gguf:q4_k_m", *GPU_TARGETS}
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise RuntimeFailure(
            f"recipe quantize lists {', '.join(unknown)}, which this runtime does not build. Use "
            f"{', '.join(sorted(known))}."
        )


# ggml's names for the x86 features it was compiled with → /proc/cpuinfo's flag names. The builder
# (gapforge/profile.py GGML_CPU_FEATURES) records the same names in the image; a unit test holds the two together.
_CPUINFO_FLAG = {"SSE3": "pni", "SSSE3": "ssse3", "SSE42": "sse4_2", "AVX": "avx", "AVX2": "avx2",
                 "F16C": "f16c", "FMA": "fma", "BMI2": "bmi2", "AVX_VNNI": "avx_vnni",
                 "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
                 "AVX512_BF16": "avx512_bf16", "AMX_TILE": "amx_tile", "AMX_INT8": "amx_int8",
                 "AMX_BF16": "amx_bf16"}  # fmt: skip
CPUINFO = Path("/proc/cpuinfo")


def llama_cpp_cpu_features() -> set[str]:
    """The x86 features llama.cpp was compiled to use (ggml reports its build flags).

    This loads the library, whose code may already use an instruction the CPU lacks: only for
    a runtime outside the image, where the builder's record of the baseline is absent.
    """
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    return {
        name
        for name, value in re.findall(r"([A-Z0-9_]+) = (\d)", info)
        if value == "1" and name in _CPUINFO_FLAG
    }


def recorded_cpu_features() -> set[str] | None:
    """The baseline the builder recorded in the image ($GAPFORGE_LLAMA_CPP_CPU_BASELINE), or None."""
    recorded = os.environ.get(CPU_BASELINE_ENV)
    if recorded is None:
        return None
    names = {name.strip() for name in recorded.split(",") if name.strip()}
    unknown = sorted(names - _CPUINFO_FLAG.keys())
    if unknown:
        raise RuntimeFailure(
            f"${CPU_BASELINE_ENV}={recorded!r} names {', '.join(unknown)}, which this runtime cannot "
            f"check against /proc/cpuinfo. Use names from {', '.join(sorted(_CPUINFO_FLAG))}, or unset "
            "it to ask the llama.cpp library itself."
        )
    return names


def host_cpu_flags(cpuinfo: Path | None = None) -> set[str] | None:
    """The host CPU's feature flags, or None where /proc/cpuinfo has none (not x86 Linux)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else None


def check_cpu_features(built: set[str] | None = None, host: set[str] | None = None) -> None:
    """Stop with a clear message, instead of a crash on an illegal instruction, on an older CPU.

    The image's llama.cpp is built for a fixed baseline (images/<profile>/profile.toml), so a CPU
    older than that baseline would die with SIGILL at the first quantization or evaluation. The
    baseline comes from the image ($GAPFORGE_LLAMA_CPP_CPU_BASELINE), so this runs before
    llama_cpp is imported; only outside the image is the library asked.
    """
    host = host_cpu_flags() if host is None else host
    if host is None:
        return
    source = "its build"
    if built is None:
        built, source = recorded_cpu_features(), f"${CPU_BASELINE_ENV}"
    if built is None:
        built, source = llama_cpp_cpu_features(), "the llama.cpp library"
    missing = sorted(name for name in built if _CPUINFO_FLAG[name] not in host)
    if missing:
        raise RuntimeFailure(
            f"this CPU lacks {', '.join(missing)}, which the image's llama.cpp was built to use "
            f"(it needs {', '.join(sorted(built))}, says {source}; /proc/cpuinfo has no "
            f"{', '.join(_CPUINFO_FLAG[name] for name in missing)} flag). "
            "Run the image on an x86-64-v3 CPU (Intel Haswell / AMD Zen or newer), or rebuild the "
            "image with a profile whose llama-cpp-python cmake_args target this CPU."
        )
