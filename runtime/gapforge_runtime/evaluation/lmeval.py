"""lm-evaluation-harness, offline: a recipe's custom task folder, checked and made ready to run
(lmeval_run.py runs it against the merged model and each GGUF file).

Nothing is fetched: a task's data must be `dataset_path: json` (or csv, parquet, text, arrow) with
`dataset_kwargs: {data_files: ...}` naming files of the task folder, relative to the YAML. Before a
run the folder is copied to a work folder with those paths made absolute and the `datasets` cache
pointed into the run's output, so neither the task folder (read-only in the image) nor $HOME is
written. `check_task_folder` is pure and torch-free: the builder calls it to validate a recipe.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gapforge_runtime.bounded_yaml import BoundedSafeLoader, read_bounded_yaml
from gapforge_runtime.errors import RuntimeFailure

LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
"""`datasets`' packaged loaders, which read the files they are given and fetch nothing."""
TASK_SUFFIXES = (".yaml",)  # what lm-eval indexes
FIX_REMOTE = (
    "the image runs offline: ship the data as JSONL in the task folder and set "
    "`dataset_path: json` and `dataset_kwargs: {data_files: {test: <file>.jsonl}}` (relative to "
    "the YAML)"
)


class _Tagged:
    """A YAML value under a custom tag (`!function utils.f`), kept so it is written back as it was."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


class _TaskLoader(BoundedSafeLoader):
    """Bounded safe YAML (no aliases, capped size and depth: the recipe author wrote it) that keeps
    lm-eval's `!function` (and any other) tags instead of failing on them."""


class _TaskDumper(yaml.SafeDumper):
    """Writes `_Tagged` values back under their tag."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return _Tagged("!" + suffix, value)


def _represent_tagged(dumper: yaml.SafeDumper, data: _Tagged) -> yaml.Node:
    if isinstance(data.value, list):
        return dumper.represent_sequence(data.tag, data.value)
    if isinstance(data.value, dict):
        return dumper.represent_mapping(data.tag, data.value)
    return dumper.represent_scalar(data.tag, str(data.value))


_TaskLoader.add_multi_constructor("!", _construct_tagged)
_TaskDumper.add_representer(_Tagged, _represent_tagged)


def read_task_yaml(path: Path) -> Any:
    """A task YAML as data (custom tags kept as `_Tagged`)."""
    return read_bounded_yaml(path, _TaskLoader)


@dataclass(frozen=True)
class TaskProblem:
    """One problem with a task folder: the file, the YAML field, the bad value and the fix."""

    file: Path
    field: str
    value: Any
    message: str

    def text(self, root: Path) -> str:
        """`desk_qa.yaml: dataset_path: ... (got 'x'): fix`."""
        try:
            shown = self.file.relative_to(root).as_posix()
        except ValueError:
            shown = str(self.file)
        where = f"{shown}: {self.field}: " if self.field else f"{shown}: "
        value = "" if self.value is None else f" (got {self.value!r})"
        # house style: what is wrong (got value): the fix
        wrong, _, fix = self.message.partition("; ")
        return f"{where}{wrong}{value}" + (f": {fix}" if fix else "")


def task_files(folder: Path) -> list[Path]:
    """The task YAMLs of a folder, at any depth, and the files of the folder they `include:`
    (lm-eval's templates, often named without a .yaml suffix, can hold the data settings); sorted."""
    root = folder.resolve()
    found = {p for p in folder.rglob("*") if p.suffix in TASK_SUFFIXES and p.is_file()}
    queue = sorted(found)
    while queue:
        path = queue.pop()
        try:
            config = read_task_yaml(path)
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue  # the check reports it
        include = config.get("include") if isinstance(config, dict) else None
        if not isinstance(include, str):
            continue
        target = path.parent / include
        if target.resolve().is_relative_to(root) and target.is_file() and target not in found:
            found.add(target)
            queue.append(target)
    return sorted(found)


def _data_file_names(data_files: Any) -> list[Any] | None:
    """Every file name of `data_files` (a name, a list, or split → name(s)); None if malformed."""
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list):
        return list(data_files)
    if isinstance(data_files, dict):
        names: list[Any] = []
        for value in data_files.values():
            names += value if isinstance(value, list) else [value]
        return names
    return None


def check_task_folder(folder: Path) -> list[TaskProblem]:
    """Every reason the task folder cannot run offline; empty when it can."""
    if not folder.is_dir():
        return [
            TaskProblem(
                folder,
                "",
                None,
                "no such folder of lm-eval task YAMLs; create it beside the recipe, or drop evaluate.lm_eval",
            )
        ]
    root = folder.resolve()
    problems: list[TaskProblem] = []
    with_data = 0
    files = task_files(folder)
    if not files:
        return [
            TaskProblem(
                folder, "", None, "holds no task YAML (*.yaml); add one, or drop evaluate.lm_eval"
            )
        ]
    for path in files:
        try:
            config = read_task_yaml(path)
        except yaml.YAMLError as exc:
            problems.append(
                TaskProblem(path, "", None, f"not valid YAML: {exc}".replace("\n", " "))
            )
            continue
        if not isinstance(config, dict):
            problems.append(TaskProblem(path, "", None, "a task YAML must be a mapping"))
            continue
        source = config.get("dataset_path")
        if source is None:
            continue  # a group, or a task that includes its data settings from another YAML
        if isinstance(source, _Tagged) or source not in LOCAL_BUILDERS:
            shown = source.value if isinstance(source, _Tagged) else source
            problems.append(
                TaskProblem(
                    path, "dataset_path", shown, f"names a data set to download; {FIX_REMOTE}"
                )
            )
            continue
        with_data += 1
        kwargs = config.get("dataset_kwargs") or {}
        data_files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
        names = _data_file_names(data_files)
        if not names:
            problems.append(TaskProblem(path, "dataset_kwargs.data_files", data_files,
                                        f"must name the task's data files; {FIX_REMOTE}"))  # fmt: skip
            continue
        for name in names:
            if not isinstance(name, str) or not name or "://" in name or "::" in name:
                problems.append(TaskProblem(path, "dataset_kwargs.data_files", name,
                                            f"must be a file of the task folder, not a URL; {FIX_REMOTE}"))  # fmt: skip
                continue
            if Path(name).is_absolute() or any(c in name for c in "*?["):
                problems.append(TaskProblem(path, "dataset_kwargs.data_files", name,
                                            "must be a plain file name relative to the YAML (no absolute path, "
                                            "no wildcard): the folder moves into the image"))  # fmt: skip
                continue
            resolved = (path.parent / name).resolve()
            if not resolved.is_relative_to(root):
                problems.append(TaskProblem(path, "dataset_kwargs.data_files", name,
                                            f"leads out of the task folder {root}; copy the file into it"))  # fmt: skip
            elif not resolved.is_file():
                problems.append(TaskProblem(path, "dataset_kwargs.data_files", name,
                                            f"no such file {resolved}; ship it in the task folder"))  # fmt: skip
    if not problems and with_data == 0:
        problems.append(
            TaskProblem(
                folder, "", None, "no task YAML names its data (dataset_path: json); add one"
            )
        )
    return problems


def prepare_task_folder(folder: Path, work: Path) -> Path:
    """A copy of the task folder in `work` whose data paths are absolute and whose `datasets` cache
    is in `work`; returns the copy. Refuses a folder `check_task_folder` finds fault with."""
    problems = check_task_folder(folder)
    if problems:
        raise RuntimeFailure(
            f"evaluate.lm_eval.tasks: the task folder {folder} cannot run offline. Fix each task "
            "YAML as listed (the builder checks the same), then run again.",
            [p.text(folder) for p in problems],
        )
    copy = work / "tasks"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy, symlinks=False)
    cache = work / "datasets-cache"
    cache.mkdir(parents=True, exist_ok=True)
    for path in task_files(copy):
        config = read_task_yaml(path)
        if not isinstance(config, dict) or config.get("dataset_path") not in LOCAL_BUILDERS:
            continue
        kwargs = dict(config.get("dataset_kwargs") or {})

        def absolute(name: str, base: Path = path.parent) -> str:
            return str((base / name).resolve())

        files = kwargs["data_files"]
        if isinstance(files, str):
            kwargs["data_files"] = absolute(files)
        elif isinstance(files, list):
            kwargs["data_files"] = [absolute(f) for f in files]
        else:
            kwargs["data_files"] = {
                k: [absolute(f) for f in v] if isinstance(v, list) else absolute(v)
                for k, v in files.items()
            }
        kwargs["cache_dir"] = str(cache)
        config["dataset_kwargs"] = kwargs
        path.write_text(yaml.dump(config, Dumper=_TaskDumper, sort_keys=False), encoding="utf-8")
    return copy
