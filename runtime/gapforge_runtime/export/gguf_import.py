"""`import-gguf`: dequantize a GGUF model into a normal Hugging Face folder (safetensors).

transformers reads GGUF (`from_pretrained(dir, gguf_file=...)`, dequantizing every tensor) but
refuses `save_pretrained` on such a model, because its config carries a `quantization_config`.
So the model is rebuilt from a clean copy of that config, the dequantized state dict is loaded
into it, and the plain model is saved. The output is byte-for-byte deterministic: same GGUF and
same library versions give the same files.

The stored dtype follows the GGUF (`--dtype auto`): F32 matrices stay float32 (exact); BF16 ones
bfloat16; quantized (Q4_1, Q8_0, K-quants…) and F16 ones float16, whose 11-bit mantissa holds a
dequantized 4- or 8-bit value to within 2^-11 of itself (the runtime converts to GGUF f16 before
quantizing anyway). That halves the model against float32, in the image and in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import atomic_dir, sha256_file


@dataclass(frozen=True)
class ImportResult:
    """What `import_gguf` wrote."""

    out_dir: Path
    files: dict[str, str]
    """Relative file name → sha256."""
    seconds: float


def _progress(message: str) -> None:
    print(f"[import-gguf] {message}", flush=True)


DTYPES = ("auto", "float32", "float16", "bfloat16")
F16_MAX = 65504.0


def gguf_storage_dtype(gguf_file: Path) -> tuple[str, str]:
    """The dtype that holds this GGUF's weight matrices without losing what they carry, and why."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(gguf_file)
    types = sorted({t.tensor_type.name for t in reader.tensors if len(t.shape) > 1})
    if GGMLQuantizationType.F32.name in types:
        return "float32", "its weight matrices include F32 ones"
    if types == [GGMLQuantizationType.BF16.name]:
        return "bfloat16", "its weight matrices are BF16"
    return "float16", f"its weight matrices are {', '.join(types)}"


def _check_inputs(gguf_file: Path, out_dir: Path, force: bool) -> None:
    """A GGUF file to read and a folder free to write, before anything heavy is imported."""
    if not gguf_file.is_file():
        raise RuntimeFailure(
            f"--gguf {gguf_file}: no such file. Pass the path of a .gguf model file."
        )
    with gguf_file.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise RuntimeFailure(
            f"--gguf {gguf_file}: not a GGUF file (its first bytes are {magic!r}, not b'GGUF'). "
            "Pass a llama.cpp GGUF model file."
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise RuntimeFailure(
            f"--out {out_dir}: the folder exists and is not empty. Choose a new folder, or pass "
            "--force to replace it."
        )


def _stored(state: dict[str, Any], dtype: str, gguf_file: Path) -> tuple[Any, dict[str, Any]]:
    """The dtype to store (`auto`: the GGUF's own; float32 where float16 would overflow) and the
    state dict in it."""
    import torch

    if dtype == "auto":
        dtype, why = gguf_storage_dtype(gguf_file)
        _progress(f"storing {dtype}: {why}")
    if dtype == "float16":
        too_big = [k for k, v in state.items() if v.is_floating_point() and v.abs().max() > F16_MAX]
        if too_big:
            _progress(f"{too_big[0]} holds values beyond float16's range: storing float32 instead")
            dtype = "float32"
    target = getattr(torch, dtype)
    return target, {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}


def import_gguf(
    gguf_file: Path, out_dir: Path, *, force: bool = False, dtype: str = "auto"
) -> ImportResult:
    """Dequantize `gguf_file` into `out_dir` (config.json, tokenizer files, model.safetensors)."""
    _check_inputs(gguf_file, out_dir, force)

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    source_dir, name = str(gguf_file.parent.resolve()), gguf_file.name
    _progress(f"reading {gguf_file} ({gguf_file.stat().st_size / 1e6:.1f} MB)")
    config = AutoConfig.from_pretrained(source_dir, gguf_file=name, trust_remote_code=False)
    _progress(f"architecture {config.model_type}; dequantizing tensors (this takes a while)")
    loaded = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=name, trust_remote_code=False, dtype=torch.float32
    )
    state = {k: v.detach().clone().contiguous() for k, v in loaded.state_dict().items()}
    generation_config = loaded.generation_config
    del loaded
    _progress(f"dequantized {len(state)} tensors in {time.monotonic() - started:.1f}s")

    target, state = _stored(state, dtype, gguf_file)

    # A config without quantization_config describes a plain model that save_pretrained accepts.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = target
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False, dtype=target)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings are legitimately absent from the state dict.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeFailure(
            f"--gguf {gguf_file}: its tensors do not fit a {config.model_type} model built from "
            f"its own metadata (missing {missing[:5]}, unexpected {unexpected[:5]}). This GGUF "
            f"architecture is not supported by transformers {transformers.__version__}."
        )
    model.generation_config = generation_config
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name, trust_remote_code=False)
    if not getattr(tokenizer, "chat_template", None):
        _progress("warning: the GGUF holds no chat template; chat data will need one")

    with atomic_dir(out_dir) as tmp:
        _progress(f"writing safetensors to {out_dir}")
        model.save_pretrained(tmp, max_shard_size="100GB")
        tokenizer.save_pretrained(tmp)
    files = {
        str(p.relative_to(out_dir)): sha256_file(p)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file()
    }
    seconds = time.monotonic() - started
    for rel, digest in files.items():
        _progress(f"  {digest[:16]}  {rel}")
    _progress(f"done in {seconds:.1f}s")
    return ImportResult(out_dir=out_dir, files=files, seconds=seconds)
