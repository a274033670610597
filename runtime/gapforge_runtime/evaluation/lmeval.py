"""lm-evaluation-harness, offline: a recipe's custom task YAMLs over local JSONL, run against the
merged model (lm-eval's `hf` model on the local folder) and each GGUF file (`gapforge-gguf`, the
llama.cpp LM of `lmeval_gguf`, in this process: lm-eval's own `gguf` model needs an HTTP server).

Nothing is fetched: a task's data must be `dataset_path: json` (or csv, parquet, text, arrow) with
`dataset_kwargs: {data_files: ...}` naming files of the task folder, relative to the YAML. Before a
run the folder is copied to a work folder with those paths made absolute and the `datasets` cache
pointed into the run's output, so neither the task folder (read-only in the image) nor $HOME is
written. `check_task_folder` is pure and torch-free: the builder calls it to validate a recipe.
"""

from __future__ import annotations

import math
import shutil
import time
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


# --- running --------------------------------------------------------------------------------------


def _metric_name(key: str) -> str:
    """lm-eval's `acc,none` as `acc`; `exact_match,strict-match` as `exact_match (strict-match)`."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric} ({filt})"


def summarize_results(results: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's results as {task: {metrics, stderr, higher_is_better, n}}: numbers only, no samples."""
    tasks: dict[str, Any] = {}
    for task, values in sorted(results.get("results", {}).items()):
        metrics: dict[str, float] = {}
        stderr: dict[str, float] = {}
        for key, value in values.items():
            if (
                key in ("alias", "sample_len")
                or not isinstance(value, int | float)
                or isinstance(value, bool)
            ):
                continue
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr"):
                number = float(value)
                stderr[_metric_name(metric.removesuffix("_stderr") + "," + filt)] = number
            else:
                metrics[_metric_name(key)] = float(value)
        better = results.get("higher_is_better", {}).get(task, {})
        n = results.get("n-samples", {}).get(task, {})
        tasks[task] = {
            "metrics": metrics,
            "stderr": {k: v for k, v in stderr.items() if math.isfinite(v)},
            "higher_is_better": {k: bool(v) for k, v in better.items() if v is not None},
            "n": n.get("effective"),
            "n_total": n.get("original"),
        }
    return tasks


def _run_one(
    lm: Any, tasks_dir: Path, limit: int | None, num_fewshot: int | None
) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    names = manager.all_subtasks
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=1000,
    )
    if results is None:  # only on ranks other than 0, which a run here never has
        raise RuntimeFailure("lm-eval returned no results (not on rank 0)")
    return summarize_results(results)


def local_hf_lm(folder: Path, batch_size: int = 1) -> Any:
    """lm-eval's `hf` model on a local folder: no remote code, no hub look-up for its 'sha'."""
    import torch
    from lm_eval.models.huggingface import HFLM

    class LocalHFLM(HFLM):  # type: ignore[misc]
        def get_model_info(self) -> dict[str, Any]:
            # HFLM asks the hub for the model's commit here; a local folder has none to ask for.
            return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                    "model_dtype": str(self.model.dtype), "model_sha": ""}  # fmt: skip

    on_gpu = torch.cuda.is_available()
    return LocalHFLM(
        pretrained=str(folder),
        trust_remote_code=False,
        device="cuda:0" if on_gpu else "cpu",
        dtype="bfloat16" if on_gpu else "float32",
        batch_size=batch_size if not on_gpu else max(batch_size, 8),
    )


def run_lm_eval(
    tasks_folder: Path,
    work: Path,
    models: dict[str, Path],
    tokenizer_dir: Path | None,
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """Every task of the folder against every model (`base`/`merged`: a folder; `gguf:*`: a file).

    GGUF models tokenize with `tokenizer_dir`'s tokenizer (the one they were converted from), so
    they see the same token ids as the transformers models and differences are the weights' own.
    """
    from gapforge_runtime.evaluation.lmeval_gguf import GapforgeGGUFLM

    started = time.monotonic()
    force_datasets_offline()
    tasks_dir = prepare_task_folder(tasks_folder, work)
    targets: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for label, path in models.items():
        print(f"[eval] lm-eval: {label} on the tasks of {tasks_folder.name}/", flush=True)
        began = time.monotonic()
        if label.startswith("gguf:"):
            lm = GapforgeGGUFLM(
                model_path=str(path), tokenizer=str(tokenizer_dir) if tokenizer_dir else None
            )
        else:
            lm = local_hf_lm(path)
        try:
            targets[label] = _run_one(lm, tasks_dir, limit, num_fewshot)
        finally:
            close = getattr(lm, "close", None)
            if close is not None:
                close()
            del lm
            _free_memory()  # the next model loads into what this one held (a GPU's, too)
        seconds[label] = round(time.monotonic() - began, 2)
        for task, found in targets[label].items():
            shown = "  ".join(f"{k} {v:.4f}" for k, v in found["metrics"].items())
            print(f"[eval] lm-eval {label:<12} {task}: {shown}  (n={found['n']})", flush=True)
    names = sorted({t for found in targets.values() for t in found})
    return {
        "enabled": True,
        "note": "",
        "tasks_folder": tasks_folder.name,
        "tasks": names,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "targets": targets,
        "seconds": seconds,
        "total_seconds": round(time.monotonic() - started, 2),
        "lm_eval_version": _lm_eval_version(),
    }


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def worst_drop_pts(
    lm_eval: dict[str, Any], target: str, reference: str = "merged"
) -> tuple[float, str]:
    """The largest loss in points (x100) of any higher-is-better metric of `target` against
    `reference`, and which task/metric it is; NaN when either was not evaluated."""
    targets = lm_eval.get("targets", {})
    if target not in targets or reference not in targets:
        return float("nan"), ""
    worst, where = -math.inf, ""
    for task, ref in targets[reference].items():
        mine = targets[target].get(task)
        if mine is None:
            continue
        for metric, value in ref["metrics"].items():
            if not ref["higher_is_better"].get(metric.split(" (")[0], True):
                continue
            if metric in mine["metrics"]:
                drop = (value - mine["metrics"][metric]) * 100.0
                if drop > worst:
                    worst, where = drop, f"{task} {metric}"
    return (worst, where) if where else (float("nan"), "")


def force_datasets_offline() -> None:
    """The offline switches on, in the environment and in `datasets`, which reads them once at
    import: whoever imported it first (TRL does, for training), this evaluation fetches nothing."""
    import datasets.config

    from gapforge_runtime.offline import force_offline

    force_offline()
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
