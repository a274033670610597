"""The recipe as the runtime sees it: the builder's normalized JSON, validated into the schema's
frozen models, with the paths resolved against the recipe JSON's folder. Every section a step
reads is the schema's own model: there is no second copy of the recipe's fields or defaults.

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
from typing import Any

from pydantic import ValidationError

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.image_contract import MODELS_DIR, MODELS_ENV, RECIPE_ENV, RECIPE_FILE
from gapforge_runtime.recipe_problems import schema_problems
from gapforge_runtime.recipe_schema import (
    DedupeSpec,
    EvaluateSpec,
    GptqSpec,
    LoraSpec,
    PiiSpec,
    Recipe,
    TrainSpec,
)
from gapforge_runtime.recipe_sweep import SweepSpec


def shipped_model_dir(name: str) -> Path:
    """Where the image holds the recipe's `models:` entry `name`."""
    return Path(os.environ.get(MODELS_ENV) or MODELS_DIR) / name


@dataclass(frozen=True)
class RecipeSettings:
    """A recipe read from JSON: the validated `spec`, and the settings the steps read."""

    path: Path
    name: str
    version: str
    data_format: str
    sample: Path
    """The recipe's sample data, resolved against the recipe JSON's folder."""
    lora: LoraSpec
    train: TrainSpec
    quantize: list[str]
    evaluate: EvaluateSpec
    raw: dict[str, Any]
    """The recipe JSON as read, for its digest only (`sha256`): settings are read from `spec`."""
    spec: Recipe
    """The recipe as the schema validated it: every field, defaults filled in."""
    gptq: GptqSpec = field(default_factory=GptqSpec)
    profile: str = "cpu"
    pii: PiiSpec = field(default_factory=PiiSpec)
    dedupe: DedupeSpec = field(default_factory=DedupeSpec)
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
    return RecipeSettings(
        path=path.resolve(),
        name=spec.name,
        version=spec.version,
        data_format=spec.data.format,
        sample=(path.resolve().parent / spec.data.sample).resolve(),
        lora=spec.lora,
        train=spec.train,
        quantize=list(spec.quantize),
        evaluate=spec.evaluate,
        raw=data,
        spec=spec,
        gptq=spec.gptq,
        profile=spec.profile,
        pii=spec.data.pii,
        dedupe=spec.data.dedupe,
        sweep=spec.sweep,
        replay_ratio=spec.data.replay_ratio,
    )
