"""Running lm-evaluation-harness offline on a run's models: the merged model through lm-eval's `hf`
model on the local folder, each GGUF through `gapforge-gguf` (lmeval_gguf.py) in this process,
the `datasets` cache pointed into the run's output; and the scores summarized per task and metric.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.evaluation.lmeval import prepare_task_folder


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
