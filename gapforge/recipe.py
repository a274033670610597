"""Recipes on the builder's side: load a recipe YAML, validate it, and report every problem at once.

A recipe is data (`recipes/<model>/<name>.yaml`). Its schema is defined once, in the runtime's
`gapforge_runtime.recipe_schema` (the image's runtime checks recipe.json with the same models);
this module adds what only the builder does: the YAML's line numbers, the checks across fields and
of the recipe's files, and the normalized recipe.json. Each problem is reported as
`file:line: dotted.path: message (got value)` so the user can go straight to it.
`python -m gapforge.recipe --write-schema` rewrites the published JSON Schema, recipes/schema.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from gapforge.errors import GapforgeError, RecipeError
from gapforge.profile import REPO_ROOT

try:
    from gapforge_runtime.bounded_yaml import YamlRefused, load_bounded_yaml, read_bounded_text
    from gapforge_runtime.recipe_schema import (
        GIT_COMMIT,
        GPU_ONLY_TARGETS,
        PINNED_REQUIREMENT,
        PROFILES,
        SLUG,
        DataSpec,
        EvaluateSpec,
        GatesSpec,
        GgufSource,
        GptqSpec,
        HfSource,
        LocalSource,
        LoraSpec,
        ModelSource,
        ModelSpec,
        QuantTarget,
        Recipe,
        TrainSpec,
        json_schema,
    )
except ModuleNotFoundError as missing:  # pragma: no cover - depends on the environment
    if missing.name not in (
        "gapforge_runtime",
        "gapforge_runtime.recipe_schema",
        "gapforge_runtime.bounded_yaml",
    ):
        raise
    raise GapforgeError(
        "the recipe schema lives in the runtime package (gapforge_runtime), which is not installed "
        "in this environment: run 'bash scripts/setup.sh', or 'pip install --no-deps -e runtime' "
        "from the repository root"
    ) from None

# After the schema: a missing runtime package is reported above, as one paragraph.
from gapforge.recipe_checks import _Problems, _pydantic_problems, _semantic_problems, _Values

__all__ = [
    "GIT_COMMIT",
    "GPU_ONLY_TARGETS",
    "PINNED_REQUIREMENT",
    "PROFILES",
    "SCHEMA_LINE",
    "SCHEMA_PATH",
    "SLUG",
    "DataSpec",
    "EvaluateSpec",
    "GatesSpec",
    "GgufSource",
    "GptqSpec",
    "HfSource",
    "LoadedRecipe",
    "LocalSource",
    "LoraSpec",
    "ModelSource",
    "ModelSpec",
    "QuantTarget",
    "Recipe",
    "TrainSpec",
    "display_path",
    "load_recipe",
    "recipe_json",
    "schema_text",
    "write_schema",
]

SCHEMA_PATH = REPO_ROOT / "recipes" / "schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=../schema.json"
"""The published JSON Schema; every shipped recipe names it on its second line (SCHEMA_LINE), so
editors with a YAML language server complete and check recipes."""


class LoadedRecipe(BaseModel):
    """A validated recipe with the file it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    recipe: Recipe
    raw: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def sample_data(self) -> Path:
        return (self.directory / self.recipe.data.sample).resolve()

    def local_model_path(self) -> Path | None:
        return self.local_path_of(self.recipe.model)

    def local_path_of(self, spec: ModelSpec) -> Path | None:
        """The folder of a `local` model source (the base or an entry of `models:`), else None."""
        if isinstance(spec.source, LocalSource):
            return (self.directory / spec.source.path).resolve()
        return None

    def all_models(self) -> list[tuple[str, ModelSpec]]:
        """The base model (named `model`) and every entry of `models:`, in that order."""
        return [("model", self.recipe.model), *sorted(self.recipe.models.items())]


# --- problem collection -------------------------------------------------------------------------


def display_path(path: Path) -> str:
    """A path as the user typed it where possible: relative to the working directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Load and validate a recipe; raise RecipeError listing every problem at once."""
    path = Path(path)
    shown = display_path(path)
    try:
        text = read_bounded_text(path)
    except FileNotFoundError:
        raise RecipeError(
            shown,
            ["no such recipe file: check the path (recipes live in recipes/<model>/<name>.yaml)"],
        ) from None
    except YamlRefused as exc:
        raise RecipeError(shown, [f"{exc.problem}: a recipe is a small file"]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            shown,
            [f"byte {exc.start} is not UTF-8 ({exc.reason}): save the recipe as UTF-8"],
        ) from None
    except OSError as exc:
        raise RecipeError(shown, [f"cannot read the file: {exc}"]) from None
    try:
        # Bounded: no anchors or aliases (a 1 KB "billion laughs" file would take gigabytes),
        # a depth and an integer-size limit; each refusal names its line.
        raw = load_bounded_yaml(text)
    except YamlRefused as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise RecipeError(shown, [f"{where}{exc.problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise RecipeError(
            shown, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]
        ) from None
    if not isinstance(raw, dict):
        raise RecipeError(shown, [f"a recipe must be a YAML mapping (got {type(raw).__name__})"])

    problems = _Problems(text)
    recipe: Recipe | None = None
    rejected: list[tuple[str, ...]] = []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        rejected = _pydantic_problems(problems, exc)
    _semantic_problems(problems, _Values(raw, recipe, rejected, path.resolve().parent))
    if problems.items or recipe is None:
        raise RecipeError(shown, problems.sorted())
    return LoadedRecipe(path=path.resolve(), recipe=recipe, raw=raw)


def recipe_json(loaded: LoadedRecipe) -> dict[str, Any]:
    """The normalized recipe (defaults filled in) that the runtime reads inside the image."""
    return loaded.recipe.model_dump(mode="json")


def schema_text() -> str:
    """recipes/schema.json as generated from the schema: sorted keys, indented, a trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> bool:
    """Rewrite the published JSON Schema; return whether it changed."""
    text = schema_text()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m gapforge.recipe --write-schema`: regenerate recipes/schema.json."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--write-schema"]:
        print("usage: python -m gapforge.recipe --write-schema", file=sys.stderr)
        return 2
    changed = write_schema()
    print(f"{display_path(SCHEMA_PATH)}: {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
