"""The builder and the runtime read one recipe schema: every shipped recipe, loaded by the builder
and written as the image's recipe.json, is read by the runtime with every field intact, and a field
the schema does not know is refused by both, worded the same."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from gapforge_runtime.cli import main as runtime_main
from gapforge_runtime.config import RecipeSettings, load_recipe_settings
from gapforge_runtime.errors import EXIT_USAGE, RuntimeFailure
from gapforge_runtime.recipe_schema import Recipe
from pydantic import BaseModel

from gapforge.errors import RecipeError
from gapforge.recipe import LoadedRecipe, load_recipe, recipe_json

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*/*.yaml"))
IDS = [p.relative_to(REPO).as_posix() for p in SHIPPED]

NOT_READ_BY_RUNTIME = {"description", "model", "models", "serve"}
"""Recipe fields the runtime keeps (RecipeSettings.spec; document() for the manifest) but does not act
on: the builder puts the model into the image, and the runtime takes its folder from --model; the
`models:` entries lie in the image's models/<name>/, found by the name that names them (a judge);
`serve:` is the builder's serving image (gapforge/serving/), which the training runtime never runs."""


def _image_recipe(loaded: LoadedRecipe, folder: Path) -> Path:
    """recipe.json and the sample data as the builder puts them into the image (build.recipe_files)."""
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe_json(loaded), indent=2, sort_keys=True) + "\n")
    sample = folder / loaded.recipe.data.sample
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_bytes(loaded.sample_data.read_bytes())
    return path


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field of the schema as a dotted path, down to the fields that are not sections."""
    paths = []
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            paths += _leaves(info.annotation, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


def _mirrored(settings: RecipeSettings) -> dict[str, Any]:
    """Each schema field the runtime acts on, as its settings carry it (by the field's dotted path)."""
    values: dict[str, Any] = {
        "name": settings.name,
        "version": settings.version,
        "profile": settings.profile,
        "data.format": settings.data_format,
        # resolved against recipe.json's folder, where the builder puts the sample
        "data.sample": settings.sample.relative_to(settings.path.parent).as_posix(),
        "quantize": settings.quantize,
        "evaluate.sample_answers": settings.evaluate.sample_answers,
        "evaluate.max_new_tokens": settings.evaluate.max_new_tokens,
        "evaluate.gates.require_improvement": settings.evaluate.gates.require_improvement,
        "evaluate.gates.max_perplexity_delta_pct": settings.evaluate.gates.max_perplexity_delta_pct,
        "evaluate.gates.min_win_rate_vs_base": settings.evaluate.gates.min_win_rate_vs_base,
        "evaluate.gates.max_task_f1_drop_pts": settings.evaluate.gates.max_task_f1_drop_pts,
        "evaluate.task_metrics": settings.evaluate.task_metrics,
        "sweep": settings.sweep.model_dump() if settings.sweep is not None else None,
        "evaluate.gates.max_lm_eval_drop_pts": settings.evaluate.gates.max_lm_eval_drop_pts,
        "evaluate.lm_eval": _fields(settings.evaluate.lm_eval)
        if settings.evaluate.lm_eval
        else None,
        "evaluate.gates.min_preference_accuracy": settings.evaluate.gates.min_preference_accuracy,
        "evaluate.gates.max_forgetting_pct": settings.evaluate.gates.max_forgetting_pct,
        "data.replay_ratio": settings.replay_ratio,
    }
    for section, value in (("data.pii", settings.pii), ("data.dedupe", settings.dedupe),
                           ("evaluate.judge", settings.evaluate.judge)):  # fmt: skip
        for key, item in _fields(value).items():
            values[f"{section}.{key}"] = item
    for section in ("lora", "train", "gptq"):
        for key, value in _fields(getattr(settings, section)).items():
            values[f"{section}.{key}"] = value
    for key, item in values.pop("train.dpo").items():  # a section inside train
        values[f"train.dpo.{key}"] = item
    return values


def _fields(section: Any) -> dict[str, Any]:
    """A section's fields as the runtime carries them (the schema's own models)."""
    fields: dict[str, Any] = section.model_dump()
    return fields


def _at(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_every_shipped_recipe_reaches_the_runtime_whole(path: Path, tmp_path: Path) -> None:
    loaded = load_recipe(path)
    recipe_file = _image_recipe(loaded, tmp_path)
    settings = load_recipe_settings(str(recipe_file))

    # The runtime validates with the same models: the same recipe on both sides, field for field.
    assert settings.spec.model_dump() == loaded.recipe.model_dump()
    assert settings.raw == recipe_json(loaded)
    # Every field reaches the settings the runtime acts on, unless it is listed as not read.
    builder = loaded.recipe.model_dump()
    mirrored = _mirrored(settings)
    fields = _leaves(Recipe)
    dropped = {
        f for f in fields if f not in mirrored and f.split(".")[0] not in NOT_READ_BY_RUNTIME
    }
    assert not dropped, f"schema fields the runtime's settings do not carry: {sorted(dropped)}"
    assert set(mirrored) <= set(fields), "settings carry a field the schema does not have"
    for field in mirrored:
        assert mirrored[field] == _at(builder, field), field
    assert settings.sample == (tmp_path / loaded.recipe.data.sample).resolve()
    assert settings.sample.read_bytes() == loaded.sample_data.read_bytes()


def _shipped_json(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = _image_recipe(load_recipe(REPO / "recipes/smollm2/lora-q8-q4.yaml"), tmp_path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize(
    ("where", "dotted"),
    [
        ((), "surprise"),
        (("train",), "train.surprise"),
        (("model", "source"), "model.source.surprise"),
    ],
)
def test_the_runtime_refuses_an_unknown_field_naming_it(
    tmp_path: Path, where: tuple[str, ...], dotted: str
) -> None:
    path, data = _shipped_json(tmp_path)
    (_at(data, ".".join(where)) if where else data)["surprise"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(RuntimeFailure) as caught:
        load_recipe_settings(str(path))
    assert caught.value.details == [
        f"{path}: {dotted}: unknown field: remove it or check its spelling (got 1)"
    ]


def test_a_bad_recipe_json_exits_with_status_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = _shipped_json(tmp_path)
    data["train"]["learning_rat"] = 0.1
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert runtime_main(["data", "--recipe", str(path), "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{path}: train.learning_rat: unknown field" in err and not out.exists()


def test_both_sides_word_a_problem_the_same(tmp_path: Path) -> None:
    """The builder's problem (YAML, with its line) and the runtime's (JSON) say the same thing."""
    data = yaml.safe_load((REPO / "recipes/smollm2/lora-q8-q4.yaml").read_text())
    data["lora"]["r"] = 0
    data["train"]["scheduler"] = "cosine-ish"
    data["trian"] = {"epochs": 1}
    (tmp_path / "yaml").mkdir()
    recipe = tmp_path / "yaml" / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    sample = recipe.parent / data["data"]["sample"]
    sample.parent.mkdir(parents=True)
    sample.write_text('{"text": "hello"}\n')
    with pytest.raises(RecipeError) as built:
        load_recipe(recipe)
    builder = sorted(re.sub(r"^line \d+: ", "", p) for p in built.value.problems)

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RuntimeFailure) as ran:
        load_recipe_settings(str(path))
    runtime = sorted(d.removeprefix(f"{path}: ") for d in ran.value.details)
    assert builder == runtime and len(runtime) == 3
