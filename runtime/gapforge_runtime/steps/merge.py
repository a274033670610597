"""The merge step: the adapter merged into the base model, saved as safetensors with the tokenizer."""

from __future__ import annotations

from typing import Any

from gapforge_runtime.files import describe_path
from gapforge_runtime.outputs import StepRecord, run_step
from gapforge_runtime.steps.context import RunContext, require


def step_merge(ctx: RunContext) -> StepRecord:
    """Merge the adapter into the base model (full precision) and save safetensors + tokenizer."""
    from gapforge_runtime.export.merge import merge_adapter

    require(ctx.out.adapter / "adapter_config.json", "the trained adapter", "train")
    inputs = {
        "model": ctx.digest("model", ctx.model_dir),
        "adapter": ctx.digest("adapter", ctx.out.adapter, refresh=True),
    }

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        details = merge_adapter(
            ctx.model_dir, ctx.out.adapter, ctx.out.merged, ctx.recipe.train.adapter_method
        )
        return {"merged": describe_path(ctx.out.merged)}, details

    record, _ = run_step(ctx.out, "merge", inputs, ctx.force, body)
    return record
