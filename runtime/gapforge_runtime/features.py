"""Feature sets: which optional parts of the locked environment a recipe uses, decided here once.

An image holds the `base` set (torch, transformers, peft, llama.cpp, the default data hygiene,
tracking) plus only the named features its recipe's fields ask for, so a recipe that uses none of
DPO, sweeps or lm-eval does not carry them. The builder asks `recipe_features` which wheels to
install (the profile's `[features]` table names each feature's root requirements); the runtime asks
`require_image_features`, before a run starts, whether this image can run the recipe at all, so a
missing feature stops the run at once with the field to change instead of an ImportError hours in.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.image_contract import FEATURES_ENV
from gapforge_runtime.recipe_schema import Recipe

BASE = "base"
FEATURES: dict[str, str] = {
    "preference": "preference alignment (DPO) through TRL",
    "distill": "logit distillation (GKD) through TRL",
    "sweep": "hyper-parameter sweeps through Optuna",
    "lm_eval": "lm-evaluation-harness tasks",
    "ner": "presidio-analyzer and spaCy in the PII check (presidio recognizers, a NER pipeline)",
}
"""Every named feature and what it brings; `base` is always in an image."""

FEATURE_MODULES: dict[str, tuple[str, ...]] = {
    "preference": ("trl", "datasets"),
    "distill": ("trl", "datasets"),
    "sweep": ("optuna",),
    "lm_eval": ("lm_eval",),
    "ner": ("presidio_analyzer", "spacy"),
}
"""The modules each feature's code imports: how a plain venv (no image record) is checked."""


def recipe_features(recipe: Recipe) -> dict[str, str]:
    """Each named feature the recipe uses, with the recipe field (and value) that asks for it."""
    found: dict[str, str] = {}
    if recipe.train.method == "dpo":
        found["preference"] = "train.method: dpo"
    distill = recipe.train.distill
    if recipe.train.method == "distill" and distill is not None and distill.mode == "gkd":
        found["distill"] = "train.distill.mode: gkd"
    if recipe.sweep is not None:
        found["sweep"] = "sweep"
    if recipe.evaluate.lm_eval is not None:
        found["lm_eval"] = "evaluate.lm_eval"
    pii = recipe.data.pii
    if pii.enabled and pii.ner_model:
        found["ner"] = "data.pii.ner_model"
    elif pii.enabled and pii.presidio:
        found["ner"] = (
            "data.pii.presidio: true (the default; set it to false to leave presidio out)"
        )
    return found


def read_image_features(path: Path) -> frozenset[str]:
    """The feature sets an image's record lists; a record that cannot be read refuses the run."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        features = record["features"]
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise TypeError("'features' is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeFailure(
            f"{path}: the image's feature record cannot be read ({exc}), so nothing can say "
            f"whether this image can run the recipe. ${FEATURES_ENV} names it; the builder writes "
            "it into every image: rebuild the image, or unset the variable outside an image."
        ) from None
    return frozenset(features)


def installed_features() -> frozenset[str]:
    """Outside an image: the features whose modules this Python can import."""
    present = {
        name
        for name, modules in FEATURE_MODULES.items()
        if all(importlib.util.find_spec(module) is not None for module in modules)
    }
    return frozenset({BASE, *present})


def available_features() -> tuple[frozenset[str], str]:
    """The features this environment has, and where that was read (for the error message)."""
    record = os.environ.get(FEATURES_ENV)
    if record:
        return read_image_features(Path(record)), f"this image (its record {record})"
    return installed_features(), "this Python environment (no image record: the modules installed)"


def require_image_features(recipe: Recipe, recipe_path: str) -> None:
    """Stop before any work when the recipe uses a feature this image (or venv) lacks."""
    available, where = available_features()
    missing = {f: field for f, field in recipe_features(recipe).items() if f not in available}
    if not missing:
        return
    details = [
        f"feature '{feature}' ({FEATURES[feature]}): asked for by {field}"
        for feature, field in sorted(missing.items())
    ]
    raise RuntimeFailure(
        f"recipe {recipe_path}: it needs the feature set(s) {', '.join(sorted(missing))}, which "
        f"{where} does not hold (it has: {', '.join(sorted(available))}). Build an image from this "
        "recipe ('gapforge build RECIPE' puts every feature the recipe's fields ask for into it), "
        "or remove the field named below from the recipe.",
        details,
    )
