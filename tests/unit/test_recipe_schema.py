"""recipes/schema.json: generated from the one schema, fresh, named by every shipped recipe, and
checking recipes the way the builder does (for editors, through the YAML language server)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from gapforge.recipe import SCHEMA_LINE, SCHEMA_PATH, load_recipe, recipe_json, schema_text

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*/*.yaml"))
IDS = [p.relative_to(REPO).as_posix() for p in SHIPPED]
# yaml-language-server validates with draft 7; the schema is pydantic's draft 2020-12.
VALIDATORS = [jsonschema.Draft7Validator, jsonschema.Draft202012Validator]


def test_the_published_schema_is_fresh() -> None:
    assert SCHEMA_PATH == REPO / "recipes" / "schema.json"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "recipes/schema.json is stale: run 'python -m gapforge.recipe --write-schema' and commit it"
    )


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_every_shipped_recipe_names_the_schema_on_its_second_line(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# Build: nox -s build -- ")
    assert lines[1] == SCHEMA_LINE
    named = SCHEMA_LINE.split("$schema=", 1)[1]
    assert (path.parent / named).resolve() == SCHEMA_PATH


@pytest.mark.parametrize("validator", VALIDATORS, ids=lambda v: v.__name__)
def test_the_published_schema_accepts_every_shipped_recipe(validator: type) -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator.check_schema(schema)
    for path in SHIPPED:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert not list(validator(schema).iter_errors(data)), path
        assert not list(validator(schema).iter_errors(recipe_json(load_recipe(path)))), path


@pytest.mark.parametrize("validator", VALIDATORS, ids=lambda v: v.__name__)
def test_the_published_schema_refuses_what_the_builder_refuses(validator: type) -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    good = yaml.safe_load((REPO / "recipes/smollm2/lora-q8-q4.yaml").read_text(encoding="utf-8"))
    mistakes = {
        "trian: an unknown field": lambda d: d.update(trian={"epochs": 1}),
        "an unknown field of a section": lambda d: d["train"].update(learning_rat=0.1),
        "an unknown field of a model source": lambda d: d["model"]["source"].update(rev="x"),
        "a model source of another type's shape": lambda d: d["model"].update(
            source={"type": "hf", "path": "model"}
        ),
        "an unknown quantize target": lambda d: d["quantize"].append("gguf:q3_k"),
        "an out-of-range value": lambda d: d["lora"].update(r=0),
        "a missing required field": lambda d: d.pop("lora"),
        "a gate for an unknown target": lambda d: d["evaluate"]["gates"].update(
            max_perplexity_delta_pct={"gguf:q3_k": 5.0}
        ),
    }
    for name, mistake in mistakes.items():
        data = yaml.safe_load(yaml.safe_dump(good))
        mistake(data)
        assert list(validator(schema).iter_errors(data)), name
