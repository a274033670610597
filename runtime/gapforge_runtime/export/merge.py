"""Merge the LoRA adapter into the base model in full precision and save a plain HF folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import atomic_dir
from gapforge_runtime.modelio import load_causal_lm, load_tokenizer

# Saved beside the weights so the merged folder is self-contained (tokenizer + chat template).
COPIED_FILES = ("generation_config.json", "chat_template.jinja", "chat_template.json")


def _stored_dtype(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def merge_adapter(
    model_dir: Path, adapter_dir: Path, merged_dir: Path, method: str = "lora"
) -> dict[str, str]:
    """Merge into full-precision base weights, save in the base model's stored dtype.

    LoRA merges in float32. A QLoRA adapter was trained against the 4-bit base, but it is merged into
    the base reloaded in bf16, never into the 4-bit weights (that would quantize the merge itself).
    """
    import torch
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise RuntimeFailure(
            f"{adapter_dir}: no trained adapter (adapter_config.json is missing). Run "
            "`gapforge-runtime train` first (or `gapforge-runtime run`)."
        )
    merge_dtype = torch.bfloat16 if method == "qlora" else torch.float32
    base = load_causal_lm(model_dir, dtype=merge_dtype)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
    merged = model.merge_and_unload()
    stored = _stored_dtype(model_dir)
    target = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(stored, torch.float32)
    merged = merged.to(target)
    tokenizer = load_tokenizer(model_dir)
    with atomic_dir(merged_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in COPIED_FILES:
            if (model_dir / name).is_file() and not (tmp / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
    return {
        "dtype": str(target).removeprefix("torch."),
        "merged_in": str(merge_dtype).removeprefix("torch."),
    }
