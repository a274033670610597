"""The train step of `method: distill`: the data step, the teacher's answers (or GKD's logits), and
the student's adapter, recorded as the train step so merge, quantize and eval follow as usual.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gapforge_runtime.files import describe_path, sha256_file
from gapforge_runtime.methods.distill import (
    DISTILL_DIR,
    TEACHER_DATA,
    check_vocabularies,
    settings,
    teacher_answers,
    teacher_path,
    train_gkd,
)
from gapforge_runtime.outputs import StepRecord, run_step
from gapforge_runtime.steps.context import RunContext


def step_train_distilled(ctx: RunContext) -> StepRecord:
    """The train step of `method: distill`: the data step, the teacher's answers, the student's adapter."""
    from gapforge_runtime.data.encoding import encode_split
    from gapforge_runtime.data.reading import read_split_file
    from gapforge_runtime.methods.sft import train_adapter
    from gapforge_runtime.modelio import load_tokenizer
    from gapforge_runtime.steps.data import step_data
    from gapforge_runtime.steps.train import training_digest

    recipe = ctx.recipe
    spec = settings(recipe)
    teacher = teacher_path(recipe, spec)
    if spec.mode == "gkd":
        check_vocabularies(ctx.model_dir, teacher)
    step_data(ctx)
    out = ctx.out.root / DISTILL_DIR
    inputs = {
        "model": ctx.digest("model", ctx.model_dir),
        "teacher": ctx.digest("teacher", teacher),
        "train": sha256_file(ctx.out.data / "train.jsonl"),
        "validation": sha256_file(ctx.out.data / "validation.jsonl"),
        "settings": training_digest(recipe),
    }

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        if spec.mode == "gkd":
            return train_gkd(ctx, spec, teacher, out)
        records = read_split_file(ctx.out.data / "train.jsonl")
        summary = teacher_answers(recipe, spec, teacher, records, out, ctx.model_dir)
        tokenizer = load_tokenizer(ctx.model_dir)
        fmt, length = recipe.data_format, recipe.train.max_seq_length
        train_set, _ = encode_split(tokenizer, fmt, read_split_file(out / TEACHER_DATA), length)
        validation, _ = encode_split(
            tokenizer, fmt, read_split_file(ctx.out.data / "validation.jsonl"), length
        )
        if ctx.force:
            import shutil

            shutil.rmtree(ctx.out.checkpoints, ignore_errors=True)
        ctx.out.train_log.unlink(missing_ok=True)
        result = train_adapter(recipe, ctx.model_dir, tokenizer, train_set, validation,
                               ctx.out.checkpoints, ctx.out.adapter, ctx.out.train_log,
                               ctx.resume, ctx.observers)  # fmt: skip
        details = {k: v for k, v in asdict(result).items() if k != "log_history"}
        details["distill"] = {
            k: summary[k] for k in ("teacher", "kept", "dropped", "data", "prompts")
        }
        outputs = {
            "adapter": describe_path(ctx.out.adapter),
            "distill:data": describe_path(out / TEACHER_DATA),
        }
        return outputs, details

    record, _ = run_step(ctx.out, "train", inputs, ctx.force, body)
    return record
