"""The train step: the LoRA adapter (resumable), in this process or in torchrun's."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gapforge_runtime.config import RecipeSettings
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import describe_path, sha256_file
from gapforge_runtime.outputs import StepRecord, run_step
from gapforge_runtime.preflight import (
    check_cpu_features,
    check_free_space,
    check_method,
    check_targets,
    estimate_output_bytes,
)
from gapforge_runtime.steps.context import RunContext, section_digest
from gapforge_runtime.steps.data import step_data
from gapforge_runtime.steps.quantize import gguf_targets


def training_digest(recipe: RecipeSettings) -> str:
    """The settings an adapter depends on (`lora:` and `train:`, defaults filled in): a change
    retrains, and the sweep's best trial is recognised by it."""
    return section_digest(
        recipe.spec.lora.model_dump(mode="json"), recipe.spec.train.model_dump(mode="json")
    )


def step_train(ctx: RunContext) -> StepRecord:
    """Train the LoRA adapter (resumable), after checking the method's hardware and the free disk."""
    check_method(ctx.recipe.train.adapter_method)
    check_targets(ctx.recipe.quantize)
    if gguf_targets(ctx.recipe):
        check_cpu_features()  # before hours of training, not at the first quantization
    step_data(ctx)
    check_memory(ctx)
    inputs = {
        "model": ctx.digest("model", ctx.model_dir),
        "train": sha256_file(ctx.out.data / "train.jsonl"),
        "validation": sha256_file(ctx.out.data / "validation.jsonl"),
        "settings": training_digest(ctx.recipe),
    }

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        check_free_space(ctx.out.root, estimate_output_bytes(ctx.model_dir, ctx.recipe.quantize))
        if ctx.force and not ctx.resume:
            shutil.rmtree(ctx.out.checkpoints, ignore_errors=True)
        if not ctx.resume:
            ctx.out.train_log.unlink(missing_ok=True)
        result = _train(ctx)
        if result.resumed_from_step is not None:
            print(
                f"[train] resumed from step {result.resumed_from_step}; finished at step {result.global_step}",
                flush=True,
            )
        details = {k: v for k, v in asdict(result).items() if k != "log_history"}
        return {"adapter": describe_path(ctx.out.adapter)}, details

    record, _ = run_step(ctx.out, "train", inputs, ctx.force, body)
    return record


def _train(ctx: RunContext) -> Any:
    """The training itself: torchrun's processes for more than one, else this process."""
    from gapforge_runtime.methods.sft import TrainResult, train_adapter, training_items
    from gapforge_runtime.modelio import load_tokenizer

    if ctx.nproc > 1 or ctx.nodes.multi:
        from gapforge_runtime.launch.torchrun import launch_training

        spec = {
            "recipe": str(ctx.recipe.path), "model_dir": str(ctx.model_dir), "data_dir": str(ctx.out.data),
            "checkpoints": str(ctx.out.checkpoints), "adapter": str(ctx.out.adapter),
            "log_file": str(ctx.out.train_log), "resume": ctx.resume,
        }  # fmt: skip
        result = TrainResult(**launch_training(spec, ctx.nproc, ctx.out.steps, ctx.nodes))
        replay_train_log(ctx.out.train_log, result.global_step, ctx.observers)
        return result
    tokenizer = load_tokenizer(ctx.model_dir)
    return train_adapter(
        ctx.recipe,
        ctx.model_dir,
        tokenizer,
        training_items(ctx.recipe, tokenizer, ctx.out.data, "train"),
        training_items(ctx.recipe, tokenizer, ctx.out.data, "validation"),
        ctx.out.checkpoints,
        ctx.out.adapter,
        ctx.out.train_log,
        ctx.resume,
        ctx.observers,
    )


def replay_train_log(log: Path, total: int, observers: list[Any]) -> None:
    """Hand the training log's entries to the observers afterwards: the ranks of a torchrun training
    are other processes, so MLflow and the textfile get the steps once it is over."""
    from gapforge_runtime.monitoring import TrainingUpdate

    if not observers or not log.is_file():
        return
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "loss" not in entry and "eval_loss" not in entry:
            continue
        numbers = {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        update = TrainingUpdate(
            step=int(entry["step"]), total_steps=total, logs=numbers, time=entry["time"]
        )
        for observer in observers:
            observer(update)


def check_memory(ctx: RunContext) -> None:
    """Say before training what the memory planner expects, and stop if it cannot fit the GPUs."""
    from gapforge_runtime import memplan

    plan = memplan.plan_for_run(ctx.model_dir, ctx.recipe, ctx.nproc)
    if plan is None:
        return
    print(memplan.describe(plan), flush=True)
    if not plan.fits and os.environ.get("GAPFORGE_SKIP_MEMORY_CHECK") != "1":
        raise RuntimeFailure(memplan.refusal(plan))
