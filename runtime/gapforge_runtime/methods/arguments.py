"""Trainer's arguments of a recipe: the schedule, evaluation and saving, precision, the optimizer,
torchrun's DDP or FSDP, and the method's own (DPO: TRL's DPOConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gapforge_runtime.config import RecipeSettings
from gapforge_runtime.methods.checkpoints import world


def packs(recipe: RecipeSettings) -> bool:
    """Packed batches: SFT with train.packing (DPO's trainer brings its own pair batches)."""
    return recipe.train.packing and recipe.train.method != "dpo"


def uses_fsdp(recipe: RecipeSettings) -> bool:
    """FSDP shards the model over the processes: asked for, or QLoRA of a model too big for one GPU."""
    _, size = world()
    return size > 1 and recipe.train.distributed == "fsdp"


def training_arguments(
    recipe: RecipeSettings, checkpoints: Path, device: str, dtype: Any, per_batch: int, nnodes: int
) -> Any:
    """TrainingArguments (or the method's subclass of it) for this recipe on this device."""
    from transformers import TrainingArguments

    settings = recipe.train
    arguments_type, method_args = _method_arguments(recipe, TrainingArguments)
    return arguments_type(
        output_dir=str(checkpoints),
        per_device_train_batch_size=per_batch,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_steps,
        num_train_epochs=settings.epochs or 1.0,
        max_steps=settings.max_steps or -1,
        seed=settings.seed,
        data_seed=settings.seed,
        eval_strategy="steps",
        eval_steps=settings.eval_every,
        save_strategy="steps",
        save_steps=settings.eval_every,
        save_total_limit=2,
        load_best_model_at_end=settings.early_stopping_patience > 0,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,  # our own progress line (callbacks.Observe), not tqdm bars or raw dicts
        use_cpu=device == "cpu",
        bf16=device == "cuda" and str(dtype) == "torch.bfloat16",
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        # packed batches hold no padding (and no attention mask to count it by)
        include_num_input_tokens_seen="all" if packs(recipe) else "non_padding",
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
        # Across nodes every node keeps its own checkpoints and adapter (gapforge_runtime.launch.nodes).
        save_on_each_node=nnodes > 1,
        **_distributed_args(recipe, device),
        **method_args,
    )


def _distributed_args(recipe: RecipeSettings, device: str) -> dict[str, Any]:
    """TrainingArguments for torchrun: DDP (gloo on CPU, NCCL on GPUs), or FSDP for QLoRA/big models."""
    _, size = world()
    if size == 1:
        return {}
    args: dict[str, Any] = {
        "ddp_backend": "nccl" if device == "cuda" else "gloo",
        "ddp_find_unused_parameters": False,
    }
    if uses_fsdp(recipe):
        args["fsdp"] = "full_shard auto_wrap"
        args["fsdp_config"] = {
            "backward_prefetch": "backward_pre",
            "forward_prefetch": False,
            "use_orig_params": True,
            "cpu_ram_efficient_loading": True,
            "sync_module_states": True,
            "activation_checkpointing": False,
        }
    return args


def _method_arguments(recipe: RecipeSettings, default: type) -> tuple[type, dict[str, Any]]:
    """The arguments class of the recipe's method and its own settings (DPO: TRL's DPOConfig)."""
    if recipe.train.method == "dpo":
        from trl import DPOConfig

        from gapforge_runtime.methods.preference import dpo_arguments

        return DPOConfig, dpo_arguments(recipe)
    return default, {}
