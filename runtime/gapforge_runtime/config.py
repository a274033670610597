"""The recipe as the runtime sees it: the builder's normalized JSON, read into typed dataclasses.

The JSON is validated with the same schema the builder validated the recipe YAML with
(`gapforge_runtime.recipe_schema`, which the builder imports; the runtime never imports the
builder): an unknown or invalid field is refused, worded as the builder words it, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.image_contract import MODELS_DIR, MODELS_ENV, RECIPE_ENV, RECIPE_FILE
from gapforge_runtime.recipe_problems import schema_problems
from gapforge_runtime.recipe_schema import Recipe
from gapforge_runtime.recipe_sweep import SweepSpec


def shipped_model_dir(name: str) -> Path:
    """Where the image holds the recipe's `models:` entry `name`."""
    return Path(os.environ.get(MODELS_ENV) or MODELS_DIR) / name


_T = TypeVar("_T")


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter's shape."""

    r: int
    alpha: float
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass(frozen=True)
class DpoSettings:
    """`train.dpo`: DPO's settings."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    qlora: bool = False


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
    nnodes: int = 1
    """Nodes the training spans; the CLI's --nnodes overrides it (gapforge_runtime.launch.nodes)."""
    distributed: str = "auto"
    """auto | ddp | fsdp (with nproc > 1)."""
    packing: bool = True
    """Padding-free (flattened) batches, see packing.py."""
    pack_tokens: int | None = None
    """Token budget of a packed batch; None: `batch_size` examples a batch."""
    packed_attention: str = "auto"
    """auto | sdpa | eager | flex_attention (packed batches)."""
    liger: bool | str = "auto"
    """Liger kernels: auto | True | False."""
    distill: dict[str, Any] | None = None
    """`train.distill` (teacher, mode, filters) for method distill; read by distill.py."""
    dpo: DpoSettings = field(default_factory=DpoSettings)

    def __post_init__(self) -> None:
        if isinstance(self.dpo, dict):  # from the validated section's model_dump()
            object.__setattr__(self, "dpo", DpoSettings(**self.dpo))

    @property
    def uses_gradient_checkpointing(self) -> bool:
        """QLoRA always recomputes activations: it is what makes 4-bit training fit."""
        return self.gradient_checkpointing or self.adapter_method == "qlora"

    @property
    def adapter_method(self) -> str:
        """How the adapter is trained on the model: `qlora` (a 4-bit base) or `lora`."""
        quantized = self.method == "qlora" or (self.method == "dpo" and self.dpo.qlora)
        return "qlora" if quantized else "lora"


@dataclass(frozen=True)
class GptqSettings:
    """GPTQ INT4 settings; calibration samples come from the recipe's own training split."""

    group_size: int = 128
    desc_act: bool = False
    calibration_samples: int = 128
    damp_percent: float = 0.05
    bits: int = 4


@dataclass(frozen=True)
class PiiSettings:
    """`data.pii`: personal data found, then redacted, dropped or failed per type."""

    enabled: bool = True
    policy: dict[str, str] = field(default_factory=dict)
    presidio: bool = True
    ner_model: str | None = None


@dataclass(frozen=True)
class DedupeSettings:
    """`data.dedupe`: near-duplicates (MinHash LSH) within training and from test into training."""

    enabled: bool = True
    threshold: float = 0.8
    shingle_words: int = 5
    num_perm: int = 128


@dataclass(frozen=True)
class JudgeSettings:
    """`evaluate.judge`: the pairwise A/B by a local LLM judge."""

    enabled: bool = True
    model: str = "base"
    prompts: int = 8
    bootstrap: int = 1000
    force: bool = False


@dataclass(frozen=True)
class LmEvalSettings:
    """`evaluate.lm_eval`: lm-evaluation-harness custom tasks over local JSONL, offline."""

    tasks: str
    """The task folder, relative to the recipe JSON's folder (the builder ships it there)."""
    limit: int | None = None
    targets: list[str] | None = None
    """None: merged plus the recipe's GGUF targets."""
    num_fewshot: int | None = None


@dataclass(frozen=True)
class EvaluateSettings:
    """What to measure and which gates decide pass/fail."""

    sample_answers: int = 3
    max_new_tokens: int = 48
    require_improvement: bool = True
    max_perplexity_delta_pct: dict[str, float] = field(default_factory=dict)
    min_win_rate_vs_base: float | None = None
    max_task_f1_drop_pts: dict[str, float] = field(default_factory=dict)
    min_preference_accuracy: float | None = None
    max_forgetting_pct: float | None = None
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    task_metrics: bool = True
    lm_eval: LmEvalSettings | None = None
    max_lm_eval_drop_pts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeSettings:
    """A recipe read from JSON: the validated `spec`, and the settings the steps read."""

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
    """The recipe JSON as read, for its digest only (`sha256`): settings are read from `spec`."""
    spec: Recipe
    """The recipe as the schema validated it: every field, defaults filled in."""
    gptq: GptqSettings = field(default_factory=GptqSettings)
    profile: str = "cpu"
    pii: PiiSettings = field(default_factory=PiiSettings)
    dedupe: DedupeSettings = field(default_factory=DedupeSettings)
    sweep: SweepSpec | None = None
    """`sweep:` as validated (None: the recipe defines no sweep)."""
    replay_ratio: float = 0.0
    """`data.replay_ratio`: the parent run's share of the training set (continual runs)."""

    def document(self) -> dict[str, Any]:
        """The recipe as JSON data, as validated, with only the fields it sets: the manifest
        records it, and a sweep trial's recipe is made from it."""
        return self.spec.model_dump(mode="json", exclude_unset=True)

    @property
    def sha256(self) -> str:
        """A digest of the normalized recipe (key order does not matter)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()


def _settings(cls: type[_T], section: BaseModel) -> _T:
    """A settings dataclass from a validated section: each of its fields, none left out.

    A schema field the dataclass lacks raises TypeError: the contract test loads every shipped
    recipe through here, so a field cannot be added to the schema and dropped by the runtime.
    """
    return cls(**section.model_dump())


def validate_recipe(data: dict[str, Any], shown: str) -> Recipe:
    """The recipe JSON validated with the builder's schema; RuntimeFailure lists every problem."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = schema_problems(exc)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise RuntimeFailure(
            f"recipe {shown}: {count} against the recipe schema of this runtime. Pass the recipe "
            "JSON the builder wrote for this image (the builder checks a recipe with the same "
            "schema: run 'gapforge validate' on the recipe YAML).",
            [f"{shown}: {item.text}" for item in problems],
        ) from None


def check_method_format(method: str, data_format: str, shown: str) -> None:
    """DPO trains on preference pairs, and preference pairs only train DPO."""
    if (method == "dpo") != (data_format == "preference"):
        raise RuntimeFailure(
            f"recipe {shown}: train.method {method!r} with data.format {data_format!r}: DPO trains "
            "on preference pairs (prompt, chosen, rejected). Use train.method 'dpo' with "
            "data.format 'preference', or another method with alpaca, chat or completion data."
        )


def load_recipe_settings(path_arg: str | None) -> RecipeSettings:
    """Read the recipe JSON (from --recipe, $GAPFORGE_RECIPE or the image's default)."""
    path = Path(path_arg or os.environ.get(RECIPE_ENV) or RECIPE_FILE)
    if not path.is_file():
        raise RuntimeFailure(
            f"recipe {path}: no such file. Pass --recipe PATH (the recipe JSON the builder wrote), "
            f"or set ${RECIPE_ENV}."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RuntimeFailure(
            f"recipe {path}: not valid JSON ({exc}). Pass the recipe JSON the builder wrote."
        ) from None
    if not isinstance(data, dict) or "data" not in data or "train" not in data:
        raise RuntimeFailure(f"recipe {path}: not a gapforge recipe (no 'data'/'train' sections).")
    spec = validate_recipe(data, str(path))
    check_method_format(spec.train.method, spec.data.format, str(path))
    gates = spec.evaluate.gates
    return RecipeSettings(
        path=path.resolve(),
        name=spec.name,
        version=spec.version,
        data_format=spec.data.format,
        sample=(path.resolve().parent / spec.data.sample).resolve(),
        lora=_settings(LoraSettings, spec.lora),
        train=_settings(TrainSettings, spec.train),
        quantize=list(spec.quantize),
        evaluate=EvaluateSettings(
            sample_answers=spec.evaluate.sample_answers,
            max_new_tokens=spec.evaluate.max_new_tokens,
            require_improvement=gates.require_improvement,
            max_perplexity_delta_pct={t: pct for t, pct in gates.max_perplexity_delta_pct.items()},
            min_win_rate_vs_base=gates.min_win_rate_vs_base,
            max_task_f1_drop_pts={t: pts for t, pts in gates.max_task_f1_drop_pts.items()},
            min_preference_accuracy=gates.min_preference_accuracy,
            max_forgetting_pct=gates.max_forgetting_pct,
            judge=_settings(JudgeSettings, spec.evaluate.judge),
            task_metrics=spec.evaluate.task_metrics,
            lm_eval=_settings(LmEvalSettings, spec.evaluate.lm_eval)
            if spec.evaluate.lm_eval is not None
            else None,
            max_lm_eval_drop_pts={t: pts for t, pts in gates.max_lm_eval_drop_pts.items()},
        ),
        raw=data,
        spec=spec,
        gptq=_settings(GptqSettings, spec.gptq),
        profile=spec.profile,
        pii=_settings(PiiSettings, spec.data.pii),
        dedupe=_settings(DedupeSettings, spec.data.dedupe),
        sweep=spec.sweep,
        replay_ratio=spec.data.replay_ratio,
    )
