"""Quantized transformers checkpoints: GPTQ INT4 (GPTQModel) and bitsandbytes NF4 / INT8.

Each is written from the merged model into its own folder (safetensors, tokenizer, the
quantization config in config.json), reloaded with transformers for evaluation, and scored on the
same token ids as the merged model and the GGUF files.

Nothing is compiled at run time: GPTQModel's JIT kernels are switched off (its torch paths quantize,
pack and run the model) and bitsandbytes ships its CUDA kernels in its wheel.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import atomic_dir
from gapforge_runtime.recipe_schema import GptqSpec

# GPTQModel would otherwise JIT-compile CUDA/C++ kernels on first use, which a sealed image cannot.
GPTQ_BITS = 4
"""GPTQ here is always INT4 (the recipe's `gptq:int4` target)."""
NO_JIT = {"GPTQMODEL_DISABLE_GPTQ_CUDA": "1", "GPTQMODEL_DISABLE_PACK_EXT": "1"}
GPTQ_BACKEND = "gptq_torch"
"""The GPTQ kernel used after quantization and at reload: plain torch, nothing compiled."""
COPIED_FILES = ("chat_template.jinja", "generation_config.json")


def folder_name(target: str) -> str:
    """`gptq:int4` → `gptq-int4` (the folder under quantized/)."""
    return target.replace(":", "-")


def _copy_extras(source: Path, dest: Path) -> None:
    for name in COPIED_FILES:
        if (source / name).is_file() and not (dest / name).is_file():
            shutil.copy2(source / name, dest / name)


def calibration_examples(items: list[Any], count: int) -> list[dict[str, list[int]]]:
    """The first `count` encoded training examples (token ids), the calibration set of GPTQ."""
    chosen = [i for i in items if len(i.input_ids) >= 2][:count]
    if not chosen:
        raise RuntimeFailure(
            "GPTQ needs calibration samples from the training split, but it is empty. Give more data."
        )
    return [
        {"input_ids": list(i.input_ids), "attention_mask": [1] * len(i.input_ids)} for i in chosen
    ]


def quantize_gptq(
    merged_dir: Path, out_dir: Path, settings: GptqSpec, calibration: list[dict[str, list[int]]]
) -> dict[str, Any]:
    """GPTQ INT4 of the merged model with GPTQModel; saved in the GPTQ format transformers loads."""
    for key, value in NO_JIT.items():
        os.environ.setdefault(key, value)
    # GPTQModel sizes its thread pools from this; it needs at least 2 workers for its loader pool.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(4, os.cpu_count() or 2))))
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    config = QuantizeConfig(
        bits=GPTQ_BITS,
        group_size=settings.group_size,
        desc_act=settings.desc_act,
        damp_percent=settings.damp_percent,
        offload_to_disk=False,
    )
    started = time.monotonic()
    model = GPTQModel.load(str(merged_dir), config, trust_remote_code=False)
    model.quantize(calibration, batch_size=1, backend=BACKEND(GPTQ_BACKEND))
    seconds = time.monotonic() - started
    with atomic_dir(out_dir) as tmp:
        model.save(str(tmp))
        _copy_extras(merged_dir, tmp)
    del model
    return {
        "bits": GPTQ_BITS,
        "group_size": settings.group_size,
        "desc_act": settings.desc_act,
        "damp_percent": settings.damp_percent,
        "calibration_samples": len(calibration),
        "calibration_tokens": sum(len(c["input_ids"]) for c in calibration),
        "quantize_seconds": round(seconds, 2),
        "backend": GPTQ_BACKEND,
    }


def bnb_config(target: str) -> Any:
    """bitsandbytes settings of a target: NF4 with double quantization and bf16 compute, or INT8."""
    import torch
    from transformers import BitsAndBytesConfig

    if target == "bnb:nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def quantize_bnb(merged_dir: Path, out_dir: Path, target: str) -> dict[str, Any]:
    """Load the merged model through bitsandbytes and save the serialized quantized checkpoint."""
    import torch

    from gapforge_runtime.modelio import load_causal_lm, load_tokenizer

    started = time.monotonic()
    model = load_causal_lm(
        merged_dir, dtype=torch.bfloat16, quantization_config=bnb_config(target), device_map={"": 0}
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(merged_dir).save_pretrained(tmp)
        _copy_extras(merged_dir, tmp)
    del model
    return {"quantize_seconds": round(time.monotonic() - started, 2)}


def load_quantized(folder: Path, target: str) -> Any:
    """A quantized checkpoint reloaded by transformers on the first GPU (GPTQ through its torch kernel)."""
    from gapforge_runtime.modelio import load_causal_lm

    kwargs: dict[str, Any] = {"device_map": {"": 0}}
    if target == "gptq:int4":
        for key, value in NO_JIT.items():
            os.environ.setdefault(key, value)
        import torch
        from transformers import GPTQConfig

        kwargs["quantization_config"] = GPTQConfig(bits=4, backend=GPTQ_BACKEND)
        return load_causal_lm(folder, dtype=torch.float16, **kwargs)
    return load_causal_lm(folder, dtype=None, **kwargs)


def size_bytes(folder: Path) -> int:
    """Bytes of the checkpoint's weights."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
