"""Loading models and tokenizers the only way this runtime allows: local, safetensors, no remote code."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def device_and_dtype() -> tuple[str, Any]:
    """CUDA with bf16 where available, else CPU with float32."""
    import torch

    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return "cuda", dtype
    return "cpu", torch.float32


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer; a missing pad token falls back to EOS (padding is masked anyway)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, trust_remote_code=False, local_files_only=True
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_dir: Path, dtype: Any = None, **kwargs: Any) -> Any:
    """A causal LM from safetensors only (pickled weights are refused by preflight and here)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=dtype or torch.float32,
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
        **kwargs,
    )
