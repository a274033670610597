"""The builder's checks of a recipe beyond its schema: line numbers of the YAML, the checks across
fields, and the recipe's own files (they must stay inside its folder). `gapforge.recipe` runs them
together with the schema, so every problem is reported in one pass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from gapforge_runtime.bounded_yaml import BoundedSafeLoader
from gapforge_runtime.recipe_problems import LineMap, Problem, problem, schema_problems
from gapforge_runtime.recipe_schema import GPU_ONLY_TARGETS, Recipe
from pydantic import BaseModel, ValidationError

from gapforge.names import links_out_of


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each YAML path (as a tuple of keys/indices) to the 1-based line where it starts."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=BoundedSafeLoader)  # the loader that loaded it
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
        self.recipe = recipe
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
        _check_preference,
        _check_distributed,
        _check_quantize,
        _check_gates,
        _check_sample,
        _check_local_model,
        _check_lm_eval,
        _check_models,
        _check_distill,
        _check_features,
    )
    for check in checks:
        try:
            check(problems, values)
        except _Rejected:
            continue


def _check_features(problems: _Problems, get: _Values) -> None:
    """Every feature set the recipe's fields ask for must be one its profile's lock offers."""
    from gapforge.lock.features import lacking_features
    from gapforge.profile import load_profile

    if get.recipe is None:
        return
    profile = load_profile(get.recipe.profile)
    for feature, field in lacking_features(get.recipe, profile.features):
        problems.add(tuple(field.split(":")[0].split(".")),
                     f"needs the feature set '{feature}', which images/{profile.name}/profile.toml "
                     "[features] does not offer", show=False,
                     fix=f"remove the field, or add '{feature}' to that table and run 'nox -s lock'")  # fmt: skip


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


def _check_preference(problems: _Problems, get: _Values) -> None:
    method, data_format = get("train", "method"), get("data", "format")
    if (method == "dpo") != (data_format == "preference"):
        problems.add(
            ("data", "format") if method == "dpo" else ("train", "method"),
            "DPO trains on preference pairs: use train.method 'dpo' with data.format 'preference', "
            "or another method with alpaca, chat or completion data",
            data_format if method == "dpo" else method,
        )
    if method == "dpo" and get("train", "dpo", "qlora") and get("profile") == "cpu":
        problems.add(
            ("train", "dpo", "qlora"),
            "QLoRA needs a CUDA GPU: use profile 'cuda', or qlora: false on 'cpu'",
            True,
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


def _check_models(problems: _Problems, get: _Values) -> None:
    """`models:` entries (local ones inside the recipe's folder) and the judge that names one."""
    models = get("models")
    ids = {get("model", "id"): "model"}
    for name, spec in models.items():
        where = f"models.{name}"
        if spec["id"] in ids:
            problems.add(("models", name, "id"), f"the id is already used by {ids[spec['id']]}: each "
                         "model has its own lock (lockfiles/models/<id>.json), so give this one its own id",
                         spec["id"])  # fmt: skip
        ids[spec["id"]] = where
        if spec["source"]["type"] == "local":
            local = _inside_folder(problems, get, "models", name, "source", "path")
            if local is not None and not local.is_dir():
                problems.add(
                    ("models", name, "source", "path"), f"no such directory {local}", str(local)
                )
    judge = get("evaluate", "judge", "model")
    if not get("evaluate", "judge", "enabled") or judge == "base":
        return
    source = _named_model(problems, get, ("evaluate", "judge", "model"), judge,
                          "use 'base', or add the judge under models: with a gguf source "
                          "(or a local folder holding one .gguf file)")  # fmt: skip
    if source is not None and _gguf_files(get, source) != 1:
        problems.add(("models", judge, "source"),
                     "the judge runs through llama.cpp, so it must be a GGUF: a gguf source, or a local "
                     "folder holding exactly one .gguf file", source["type"])  # fmt: skip


def _check_distill(problems: _Problems, get: _Values) -> None:
    """train.distill's teacher: a models: entry (the builder ships only those), a GGUF not for GKD."""
    if get("train", "method") != "distill":
        return
    teacher = get("train", "distill", "teacher")
    source = _named_model(problems, get, ("train", "distill", "teacher"), teacher,
                          "add the teacher under models: (the builder locks it and ships it in the "
                          "image beside the base)")  # fmt: skip
    if source is None:
        return
    if get("train", "distill", "mode") == "gkd" and _gguf_files(get, source) > 0:
        problems.add(("train", "distill", "mode"),
                     "gkd compares the teacher's logits through transformers: its teacher must be a "
                     "Hugging Face model (an hf source, or a local folder of safetensors), not a GGUF; "
                     "or use mode: sequence", "gkd")  # fmt: skip


def _named_model(
    problems: _Problems, get: _Values, path: tuple[str, ...], name: str, fix: str
) -> dict[str, Any] | None:
    """The source of the models: entry `name`; None, with a problem at `path`, where none has it."""
    models = get("models")
    if name in models:
        source: dict[str, Any] = models[name]["source"]
        return source
    names = ", ".join(sorted(models)) or "none yet"
    problems.add(path, f"names no entry of models: ({names}): {fix}", name)
    return None


def _gguf_files(get: _Values, source: dict[str, Any]) -> int:
    """How many GGUF files a model source holds: a gguf source one, an hf source none."""
    if source["type"] != "local":
        return 1 if source["type"] == "gguf" else 0
    folder = (get.directory / source["path"]).resolve()
    return len(list(folder.glob("*.gguf"))) if folder.is_dir() else 0


def _check_lm_eval(problems: _Problems, get: _Values) -> None:
    """evaluate.lm_eval: a task folder inside the recipe's that runs offline, targets it builds."""
    from gapforge_runtime.evaluation.lmeval import check_task_folder

    lm_eval = get("evaluate", "lm_eval")
    gates = get("evaluate", "gates", "max_lm_eval_drop_pts")
    for target in gates:
        if lm_eval is None:
            problems.add(("evaluate", "gates", "max_lm_eval_drop_pts", target),
                         "a gate on lm-eval scores without evaluate.lm_eval", target, fix="add evaluate.lm_eval or drop the gate")  # fmt: skip
        elif not target.startswith("gguf:") or target not in get("quantize"):
            problems.add(("evaluate", "gates", "max_lm_eval_drop_pts", target),
                         "lm-eval gates are for the GGUF targets this recipe builds", target, fix="add it to quantize or drop the gate")  # fmt: skip
    if lm_eval is None:
        return
    built = {"base", "merged", "gguf:f16", *get("quantize")}
    for index, target in enumerate(lm_eval.get("targets") or []):
        if target not in built:
            problems.add(("evaluate", "lm_eval", "targets", index),
                         "a target this recipe does not build", target, fix="add it to quantize or drop it here")  # fmt: skip
    folder = _inside_folder(problems, get, "evaluate", "lm_eval", "tasks")
    if folder is None:
        return
    for link, target in links_out_of(folder, get.directory):
        problems.add(
            ("evaluate", "lm_eval", "tasks"),
            f"{link.relative_to(get.directory)} is a symbolic link that leads out of the recipe's "
            f"folder, to {target}: the task folder is shipped whole, so the build would copy that "
            "file of this machine into the image; copy the file into the folder instead",
            show=False,
        )
    for found in check_task_folder(folder):
        # one problem per task YAML's fault: its file (under the recipe's folder), field, value, fix
        problems.add(("evaluate", "lm_eval", "tasks"), found.text(get.directory), show=False)
