"""The recipe as the runtime sees it: the builder's normalized JSON, read into typed dataclasses.

The runtime never imports the builder; this mirrors the fields of `gapforge/recipe.py` that the
runtime uses. Unknown fields are ignored so an older runtime reads a newer recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure

RECIPE_ENV = "GAPFORGE_RECIPE"
DEFAULT_RECIPE = "/opt/gapforge/recipe/recipe.json"
MODEL_ENV = "GAPFORGE_MODEL_DIR"
DEFAULT_MODEL = "/opt/gapforge/model"
OUT_ENV = "GAPFORGE_OUT"
LLAMA_CPP_ENV = "GAPFORGE_LLAMA_CPP"
DEFAULT_LLAMA_CPP = "/opt/gapforge/llama.cpp"
CPU_BASELINE_ENV = "GAPFORGE_LLAMA_CPP_CPU_BASELINE"
"""The x86 features the image's llama.cpp was built for (`AVX,AVX2,F16C,FMA`), set by the builder."""
GGUF_TARGETS = ("gguf:f16", "gguf:q8_0", "gguf:q4_k_m")
HF_TARGETS = ("gptq:int4", "bnb:nf4", "bnb:int8")
"""Quantized transformers checkpoints: they need CUDA (GPTQModel's and bitsandbytes' kernels)."""


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter's shape."""

    r: int
    alpha: float
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass(frozen=True)
class TrainSettings:
    """How to train; mirrors `train:` of the recipe."""

    learning_rate: float
    method: str = "lora"
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 1
    gradient_accumulation: int = 1
    warmup_steps: int = 0
    scheduler: str = "linear"
    max_seq_length: int = 512
    seed: int = 42
    eval_every: int = 10
    early_stopping_patience: int = 0
    gradient_checkpointing: bool = False
    nproc: int = 1
    """Processes (one per GPU) for data-parallel training; the CLI's --nproc overrides it."""
    distributed: str = "auto"
    """auto | ddp | fsdp (with nproc > 1)."""

    @property
    def uses_gradient_checkpointing(self) -> bool:
        """QLoRA always recomputes activations: it is what makes 4-bit training fit."""
        return self.gradient_checkpointing or self.method == "qlora"


@dataclass(frozen=True)
class GptqSettings:
    """GPTQ INT4 settings; calibration samples come from the recipe's own training split."""

    group_size: int = 128
    desc_act: bool = False
    calibration_samples: int = 128
    damp_percent: float = 0.05
    bits: int = 4


@dataclass(frozen=True)
class EvaluateSettings:
    """What to measure and which gates decide pass/fail."""

    sample_answers: int = 3
    max_new_tokens: int = 48
    require_improvement: bool = True
    max_perplexity_delta_pct: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeSettings:
    """A recipe read from JSON, with the raw dict kept for the manifest."""

    path: Path
    name: str
    version: str
    data_format: str
    sample: Path
    """The recipe's sample data, resolved against the recipe JSON's folder."""
    lora: LoraSettings
    train: TrainSettings
    quantize: list[str]
    evaluate: EvaluateSettings
    raw: dict[str, Any]
    gptq: GptqSettings = field(default_factory=GptqSettings)
    profile: str = "cpu"

    @property
    def sha256(self) -> str:
        """A digest of the normalized recipe (key order does not matter)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()


def _section(raw: dict[str, Any], key: str, cls: Any, path: Path) -> Any:
    values = raw.get(key) or {}
    known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
    try:
        return cls(**known)
    except TypeError as exc:
        raise RuntimeFailure(
            f"{path}: '{key}' is incomplete ({exc}). Rebuild the recipe JSON with the builder."
        ) from None


def load_recipe_settings(path_arg: str | None) -> RecipeSettings:
    """Read the recipe JSON (from --recipe, $GAPFORGE_RECIPE or the image's default)."""
    path = Path(path_arg or os.environ.get(RECIPE_ENV) or DEFAULT_RECIPE)
    if not path.is_file():
        raise RuntimeFailure(
            f"recipe {path}: no such file. Pass --recipe PATH (the recipe JSON the builder wrote), "
            f"or set ${RECIPE_ENV}."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RuntimeFailure(
            f"recipe {path}: not valid JSON ({exc}). Pass the recipe JSON the builder wrote."
        ) from None
    if not isinstance(raw, dict) or "data" not in raw or "train" not in raw:
        raise RuntimeFailure(f"recipe {path}: not a gapforge recipe (no 'data'/'train' sections).")
    data = raw["data"]
    evaluate = dict(raw.get("evaluate") or {})
    gates = evaluate.pop("gates", {}) or {}
    return RecipeSettings(
        path=path.resolve(),
        name=str(raw.get("name", "model")),
        version=str(raw.get("version", "0")),
        data_format=str(data.get("format", "chat")),
        sample=(path.resolve().parent / str(data.get("sample", ""))).resolve(),
        lora=_section(raw, "lora", LoraSettings, path),
        train=_section(raw, "train", TrainSettings, path),
        quantize=list(raw.get("quantize") or ["gguf:q8_0", "gguf:q4_k_m"]),
        evaluate=EvaluateSettings(
            sample_answers=int(evaluate.get("sample_answers", 3)),
            max_new_tokens=int(evaluate.get("max_new_tokens", 48)),
            require_improvement=bool(gates.get("require_improvement", True)),
            max_perplexity_delta_pct=dict(gates.get("max_perplexity_delta_pct") or {}),
        ),
        raw=raw,
        gptq=_section(raw, "gptq", GptqSettings, path),
        profile=str(raw.get("profile", "cpu")),
    )
