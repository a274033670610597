"""Checks that run before any work: the model folder, the free disk, the hardware a method needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure

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


def check_method(method: str) -> None:
    """QLoRA needs CUDA (bitsandbytes 4-bit); say so before loading anything."""
    if method != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise RuntimeFailure(
            "recipe train.method is 'qlora', which needs a CUDA GPU (4-bit bitsandbytes), but no GPU is "
            "visible. Run this image on a GPU machine (docker run --gpus all), or use a recipe with "
            "train.method 'lora'."
        )


def check_targets(targets: list[str]) -> None:
    """GPTQ and bitsandbytes targets are not built by this runtime yet (they need CUDA)."""
    unsupported = [t for t in targets if not t.startswith("gguf:")]
    if unsupported:
        raise RuntimeFailure(
            f"recipe quantize lists {', '.join(unsupported)}: these targets need CUDA and a GPU build "
            "of this runtime, which this version does not have yet. Remove them from quantize, or keep "
            "the gguf:* targets only."
        )
