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
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from gapforge.errors import GapforgeError, RecipeError
from gapforge.profile import REPO_ROOT

try:
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
        LineMap,
        LocalSource,
        LoraSpec,
        ModelSource,
        ModelSpec,
        Problem,
        QuantTarget,
        Recipe,
        TrainSpec,
        json_schema,
        problem,
        schema_problems,
    )
except ModuleNotFoundError as missing:  # pragma: no cover - depends on the environment
    if missing.name not in ("gapforge_runtime", "gapforge_runtime.recipe_schema"):
        raise
    raise GapforgeError(
        "the recipe schema lives in the runtime package (gapforge_runtime), which is not installed "
        "in this environment: run 'bash scripts/setup.sh', or 'pip install --no-deps -e runtime' "
        "from the repository root"
    ) from None

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
        source = self.recipe.model.source
        if isinstance(source, LocalSource):
            return (self.directory / source.path).resolve()
        return None


# --- problem collection -------------------------------------------------------------------------


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each YAML path (as a tuple of keys/indices) to the 1-based line where it starts."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, str(index))
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        walk(root, ())
    return lines


class _Problems:
    def __init__(self, text: str) -> None:
        self.lines: LineMap = _line_index(text)
        self.items: list[Problem] = []

    def add(
        self,
        path: tuple[str | int, ...],
        message: str,
        value: Any = None,
        show: bool = True,
        fix: str = "",
    ) -> None:
        self.items.append(problem(path, message, value, show=show, fix=fix, lines=self.lines))

    def sorted(self) -> list[str]:
        return [item.text for item in sorted(self.items, key=lambda item: item.line)]


def _pydantic_problems(problems: _Problems, error: ValidationError) -> list[tuple[str, ...]]:
    """Add every schema error; return their locations, so the semantic checks skip those values."""
    found = schema_problems(error, problems.lines)
    problems.items.extend(found)
    return [tuple(str(p) for p in item.loc) for item in found]


class _Rejected(Exception):
    """A semantic check needs a value the schema refused; that value's own error is already listed."""


def _schema_default(path: tuple[str, ...]) -> Any:
    """The default the schema gives a field the recipe leaves out (only optional fields are read)."""
    model: type[BaseModel] = Recipe
    for key in path[:-1]:
        annotation = model.model_fields[key].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), path
        model = annotation
    return model.model_fields[path[-1]].get_default(call_default_factory=True)


class _Values:
    """The recipe's values for the semantic checks: the validated ones, or where the schema refused
    some, the raw ones it accepted, so both kinds of problem are reported in one pass."""

    def __init__(
        self,
        raw: dict[str, Any],
        recipe: Recipe | None,
        rejected: list[tuple[str, ...]],
        directory: Path,
    ) -> None:
        self.raw = raw
        self.data = recipe.model_dump() if recipe is not None else raw
        self.rejected = rejected
        self.directory = directory
        """The recipe's folder: relative paths in the recipe start here."""

    def __call__(self, *path: str) -> Any:
        """The value at `path`, or the schema's default; raise _Rejected if the schema refused it."""
        for loc in self.rejected:
            depth = min(len(loc), len(path))
            if loc[:depth] == path[:depth]:
                raise _Rejected(".".join(path))
        node: Any = self.data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return _schema_default(path)
            node = node[key]
        return node


def _semantic_problems(problems: _Problems, values: _Values) -> None:
    """The checks across fields; each runs only when the values it reads passed the schema."""
    checks = (
        _check_steps,
        _check_method,
        _check_distributed,
        _check_quantize,
        _check_gates,
        _check_sample,
        _check_local_model,
    )
    for check in checks:
        try:
            check(problems, values)
        except _Rejected:
            continue


def _check_steps(problems: _Problems, get: _Values) -> None:
    epochs, max_steps = get("train", "epochs"), get("train", "max_steps")
    if (epochs is None) == (max_steps is None):
        problems.add(
            ("train",),
            "set exactly one of train.epochs and train.max_steps",
            {"epochs": epochs, "max_steps": max_steps},
        )


def _check_method(problems: _Problems, get: _Values) -> None:
    method = get("train", "method")
    if get("profile") == "cpu" and method == "qlora":
        problems.add(
            ("train", "method"),
            "QLoRA needs a CUDA GPU: use profile 'cuda', or method 'lora' on 'cpu'",
            method,
        )


def _check_distributed(problems: _Problems, get: _Values) -> None:
    distributed = get("train", "distributed")
    if get("profile") == "cpu" and distributed == "fsdp":
        problems.add(
            ("train", "distributed"),
            "FSDP is for sharding a model over several GPUs: use profile 'cuda', or 'ddp' on 'cpu'",
            distributed,
        )


def _check_quantize(problems: _Problems, get: _Values) -> None:
    quantize = get("quantize")
    if "gptq" in get.raw and "gptq:int4" not in quantize:
        problems.add(
            ("gptq",),
            "GPTQ settings for a recipe that does not build gptq:int4: add it to quantize or drop gptq",
            show=False,
        )
    profile = get("profile")
    seen: set[str] = set()
    for index, target in enumerate(quantize):
        if target in seen:
            problems.add(("quantize", index), "listed twice: remove the duplicate", target)
        seen.add(target)
        if profile == "cpu" and target in GPU_ONLY_TARGETS:
            problems.add(
                ("quantize", index),
                "this target is only buildable on the 'cuda' profile: remove it or use profile 'cuda'",
                target,
            )


def _check_gates(problems: _Problems, get: _Values) -> None:
    quantize = get("quantize")
    for target in get("evaluate", "gates", "max_perplexity_delta_pct"):
        if target not in quantize:
            problems.add(
                ("evaluate", "gates", "max_perplexity_delta_pct", target),
                "a gate for a target this recipe does not build: add it to quantize or drop the gate",
                target,
            )


def _inside_folder(problems: _Problems, get: _Values, *field: str) -> Path | None:
    """The resolved path a recipe field names, or None (a problem added) where it leaves the folder.

    A recipe is built on the connected side and its files go into the image: a path out of its
    folder would copy any file the builder can read (../../.ssh/id_rsa) into a shipped image.
    """
    value: str = get(*field)
    folder = get.directory  # resolved, like the path compared with it below
    shown = f"must stay inside the recipe's folder {folder}"
    fix = "copy the files into that folder and give their path relative to the recipe"
    if Path(value).is_absolute():
        problems.add(field, shown, value, fix=f"a path here is never absolute; {fix}")
        return None
    if os.path.normpath(value).split(os.sep)[0] == os.pardir:
        problems.add(field, shown, value, fix=f"'..' leads out of it; {fix}")
        return None
    if "\0" in value:  # no file name holds one; resolve() would raise
        problems.add(field, "a path cannot contain a NUL character: remove it", value)
        return None
    resolved = (folder / value).resolve()
    if not resolved.is_relative_to(folder):
        problems.add(
            field, shown, value, fix=f"a symbolic link leads out of it, to {resolved}; {fix}"
        )
        return None
    return resolved


def _check_sample(problems: _Problems, get: _Values) -> None:
    sample = _inside_folder(problems, get, "data", "sample")
    if sample is None:
        return
    if not sample.is_file():
        problems.add(
            ("data", "sample"),
            f"no such file {sample}: ship the sample beside the recipe",
            get("data", "sample"),
        )
    elif sample.stat().st_size == 0:
        problems.add(("data", "sample"), "the sample data file is empty", get("data", "sample"))


def _check_local_model(problems: _Problems, get: _Values) -> None:
    if get("model", "source", "type") != "local":
        return
    local = _inside_folder(problems, get, "model", "source", "path")
    if local is not None and not local.is_dir():
        problems.add(("model", "source", "path"), f"no such directory {local}", str(local))


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(
            shown,
            ["no such recipe file: check the path (recipes live in recipes/<model>/<name>.yaml)"],
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(shown, [f"cannot read the file: {exc}"]) from None
    try:
        raw = yaml.safe_load(text)
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
