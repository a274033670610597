"""LoRA (or QLoRA on CUDA) training with peft on transformers' Trainer; resumable from checkpoints."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge_runtime.config import RecipeSettings
from gapforge_runtime.data.encoding import IGNORE_INDEX, Encoded
from gapforge_runtime.files import atomic_dir, write_text_atomic
from gapforge_runtime.methods.arguments import packs, training_arguments, uses_fsdp
from gapforge_runtime.methods.checkpoints import checkpoint_step, resume_point, world
from gapforge_runtime.modelio import device_and_dtype, load_causal_lm
from gapforge_runtime.monitoring import TrainingObserver


@dataclass
class TrainResult:
    """What training did, for the step record and the report."""

    global_step: int
    resumed_from_step: int | None
    best_eval_loss: float | None
    stopped_early: bool
    train_seconds: float
    tokens_seen: int
    tokens_per_second: float
    device: str
    log_history: list[dict[str, Any]]
    world_size: int = 1
    peak_gpu_memory_bytes: int | None = None
    """torch.cuda.max_memory_allocated() of this process (rank 0) over the training."""
    model_tflops_per_second: float | None = None
    """Useful model FLOP/s of the whole training (gapforge_runtime.flops; SFT only)."""
    mfu_pct: float | None = None
    """Those FLOP/s over the GPUs' dense bf16 peak; None on the CPU or an unknown GPU."""
    gpu_hours: float | None = None
    """GPUs x training seconds / 3600 (CUDA only): what the run cost."""


class ListDataset:
    """A map-style dataset over encoded examples (what Trainer needs, without `datasets`)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        item = self.items[index]
        return {"input_ids": item.input_ids, "labels": item.labels}


def pad_batch(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; padding gets attention 0 and label -100."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids, labels, mask = [], [], []
    for f in features:
        gap = width - len(f["input_ids"])
        ids.append(f["input_ids"] + [pad_id] * gap)
        labels.append(f["labels"] + [IGNORE_INDEX] * gap)
        mask.append([1] * len(f["input_ids"]) + [0] * gap)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def sft_batching(
    recipe: RecipeSettings, train_set: list[Any], validation_set: list[Any], pad_id: int
) -> tuple[Any, Any, Any, int]:
    """(train dataset, eval dataset, collator, examples-per-batch for Trainer) of SFT training.

    With `train.packing` every batch is one padding-free row (packing.py); with `train.pack_tokens`
    too, a training batch is a group of examples under that token budget (Trainer takes 1 a batch).
    """
    from gapforge_runtime.data import packing

    settings = recipe.train
    if not packs(recipe):
        return (ListDataset(train_set), ListDataset(validation_set),
                lambda features: pad_batch(features, pad_id), settings.batch_size)  # fmt: skip
    if settings.pack_tokens:
        train_data: Any = packing.PackedDataset(train_set, settings.pack_tokens, settings.seed)
        return train_data, ListDataset(validation_set), packing.flatten_batch, 1
    return (
        ListDataset(train_set),
        ListDataset(validation_set),
        packing.flatten_batch,
        settings.batch_size,
    )


def _lora_model(recipe: RecipeSettings, model_dir: Path, device: str, dtype: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = recipe.lora
    rank, _ = world()
    checkpointing = {"use_reentrant": False}
    if recipe.train.adapter_method == "qlora":
        import torch
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        fsdp = uses_fsdp(recipe)
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            # FSDP shards flat parameters of one dtype: store the 4-bit blocks as bf16 (QLoRA + FSDP).
            bnb_4bit_quant_storage=torch.bfloat16 if fsdp else torch.uint8,
        )
        placement: dict[str, Any] = {} if fsdp else {"device_map": {"": rank}}
        model = load_causal_lm(
            model_dir, dtype=torch.bfloat16, quantization_config=quant, **placement
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=checkpointing
        )
        frozen_back_to_bf16(model)
    else:
        # Trainer puts the model on this process's device (cuda:LOCAL_RANK under torchrun).
        model = load_causal_lm(model_dir, dtype=dtype)
        if recipe.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
            model.enable_input_require_grads()
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def frozen_back_to_bf16(model: Any) -> int:
    """Put the frozen weights that peft's `prepare_model_for_kbit_training` upcast to float32
    (embeddings, lm_head, norms) back in bf16, QLoRA's compute dtype; returns how many.

    The upcast is for fp16 training; with bf16 compute it only makes the lm_head's matmul and its
    backward run in float32 off the tensor cores. Measured on an H200 (8B shape, packed rows of
    16,384 tokens, flex attention, Liger): 7,327 -> 9,986 real tokens/s (MFU 24.6 -> 33.5 %), peak
    21.1 -> 12.8 GiB. Norms still compute in float32 inside (LlamaRMSNorm, Liger's RMSNorm upcast
    the activations); trainable parameters (the adapter) stay as they are."""
    import torch

    moved = 0
    for param in model.parameters():
        if param.dtype == torch.float32 and not param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
            moved += 1
    return moved


def train_adapter(
    recipe: RecipeSettings,
    model_dir: Path,
    tokenizer: Any,
    train_set: list[Encoded] | list[dict[str, Any]],
    validation_set: list[Encoded] | list[dict[str, Any]],
    checkpoints: Path,
    adapter_dir: Path,
    log_file: Path,
    resume: bool,
    observers: Sequence[TrainingObserver] = (),
    nnodes: int = 1,
) -> TrainResult:
    """Train a LoRA adapter and save it (with the tokenizer) to `adapter_dir`.

    Rank 0 shows one progress line and hands each logging step to `observers` (MLflow, Prometheus).
    """
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from gapforge_runtime.methods.callbacks import training_callbacks

    device, dtype = device_and_dtype()
    previous, resumed_from = resume_point(checkpoints, resume)
    rank = world()[0]
    model = _prepared_model(recipe, model_dir, device, dtype)
    train_data, eval_data, collator, per_batch = sft_batching(
        recipe, train_set, validation_set, tokenizer.pad_token_id
    )
    trainer = _trainer_type(recipe, Trainer, tokenizer)(
        model=model,
        args=training_arguments(recipe, checkpoints, device, dtype, per_batch, nnodes),
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        callbacks=training_callbacks(
            log_file, checkpoints, device, observers, nnodes, recipe.train.early_stopping_patience
        ),
    )
    for printer in (PrinterCallback, ProgressCallback):  # they print the raw metric dictionaries
        trainer.remove_callback(printer)
    if packs(recipe) and not uses_fsdp(recipe):
        _check_packing(trainer, train_set, device)
    if nnodes > 1:
        from gapforge_runtime.launch.nodes import agree_on_checkpoint

        previous = agree_on_checkpoint(checkpoints, previous, rank == 0)
        resumed_from = checkpoint_step(previous) if previous is not None else None
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(previous) if previous else None)
    seconds = time.monotonic() - started
    _save_adapter(trainer, tokenizer, checkpoints, adapter_dir, nnodes)
    return _result(recipe, trainer, output, seconds, resumed_from, (model_dir, train_set, device))


def _prepared_model(recipe: RecipeSettings, model_dir: Path, device: str, dtype: Any) -> Any:
    """The seeded LoRA model, with Liger's kernels and packed attention where they apply."""
    from transformers import set_seed

    from gapforge_runtime.data.packing import apply_liger

    settings = recipe.train
    rank, _ = world()
    # Seed before the adapter exists: LoRA's A matrices are drawn at random when peft wraps the
    # model, before Trainer would seed, so without this two runs of one recipe differ.
    set_seed(settings.seed)
    # Liger patches the architecture's classes, so it comes before the model is loaded
    liger = apply_liger(settings.liger if settings.method != "dpo" else False, model_dir, device)
    if liger and rank == 0:
        print(f"[train] {liger}", flush=True)
    model = _lora_model(recipe, model_dir, device, dtype)
    if packs(recipe):
        model.config.use_cache = False  # with a KV cache transformers builds no per-example mask
        from gapforge_runtime.data.packing import packed_attention

        attention = packed_attention(settings.packed_attention, device)
        if attention:
            model.get_base_model().set_attn_implementation(attention)
            if rank == 0:
                print(f"[train] packed batches: {attention} attention", flush=True)
    if rank == 0:
        model.print_trainable_parameters()
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    return model


def _check_packing(trainer: Any, train_set: list[Any], device: str) -> None:
    """An example packed with others must score as it does alone: checked before step 1."""
    from gapforge_runtime.data.packing import check_packing

    # on the model as it will train (its device, dtype, attention, kernels), before step 1
    leak = check_packing(trainer.model, train_set, exact=device == "cpu")
    if world()[0] == 0 and leak is not None:
        print(
            f"[train] packed batches checked: an example packed vs alone differs by {leak:.2g}",
            flush=True,
        )


def _save_adapter(
    trainer: Any, tokenizer: Any, checkpoints: Path, adapter_dir: Path, nnodes: int
) -> None:
    """The trained adapter and the tokenizer into `adapter_dir` (one writer per node), and the
    training's history beside it; FSDP's shards gathered first."""
    _, size = world()
    if trainer.is_fsdp_enabled:
        # gather the sharded adapter weights into a full state dict on rank 0
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if size > 1:
        trainer.save_model(str(checkpoints / "final"))
    if trainer.is_local_process_zero() if nnodes > 1 else trainer.is_world_process_zero():
        with atomic_dir(adapter_dir) as tmp:
            if size > 1:
                for item in (checkpoints / "final").glob("adapter_*"):
                    os.replace(item, tmp / item.name)
            else:  # only the trained adapter: DPO's frozen reference copy ("ref") stays behind
                trainer.model.save_pretrained(tmp, selected_adapters=["default"])
            tokenizer.save_pretrained(tmp)
        write_text_atomic(
            adapter_dir.parent / "train_history.json",
            json.dumps(trainer.state.log_history, indent=1) + "\n",
        )


def _result(
    recipe: RecipeSettings,
    trainer: Any,
    output: Any,
    seconds: float,
    resumed_from: int | None,
    run: tuple[Path, list[Any], str],
) -> TrainResult:
    """What the training did: steps, early stop, tokens and their rate, memory, MFU."""
    model_dir, train_set, device = run
    _, size = world()
    state = trainer.state
    stopped_early = recipe.train.early_stopping_patience > 0 and state.global_step < state.max_steps
    peak = None
    if device == "cuda":
        import torch

        peak = int(torch.cuda.max_memory_allocated())
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    runtime = float(output.metrics.get("train_runtime", seconds)) or seconds
    used = _utilization(model_dir, train_set, tokens, runtime, device, size)
    return TrainResult(
        global_step=state.global_step,
        resumed_from_step=resumed_from,
        best_eval_loss=state.best_metric,
        stopped_early=stopped_early,
        train_seconds=round(seconds, 3),
        tokens_seen=tokens,
        tokens_per_second=round(tokens / runtime, 1) if runtime else 0.0,
        device=device,
        log_history=list(state.log_history),
        world_size=size,
        peak_gpu_memory_bytes=peak,
        model_tflops_per_second=used.model_tflops_per_second if used else None,
        mfu_pct=used.mfu_pct if used else None,
        gpu_hours=used.gpu_hours if used and device == "cuda" else None,
    )


def _utilization(
    model_dir: Path, train_set: list[Any], tokens: int, seconds: float, device: str, gpus: int
) -> Any:
    """Model FLOP/s, MFU and GPU hours of an SFT training (None for DPO's pairs, or no shape);
    printed as one line on CUDA."""
    from gapforge_runtime import flops, memplan

    lengths = [len(i.input_ids) for i in train_set if hasattr(i, "input_ids")]
    if not lengths:
        return None
    try:
        shape = memplan.ModelShape.from_config(memplan.read_config(model_dir))
    except (OSError, ValueError, KeyError):
        return None
    peak = None
    name = "CPU"
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name(0)
        peak = flops.peak_tflops(name)
    used = flops.utilization(tokens, seconds, flops.mean_square_length(lengths), shape.params,
                             shape.layers, shape.hidden, gpus, peak)  # fmt: skip
    if used is not None and device == "cuda":
        mfu = (
            f"MFU {used.mfu_pct} % of {gpus} x {peak:g} dense bf16 TFLOP/s"
            if peak
            else f"MFU unknown (no peak on record for {name})"
        )
        print(f"[train] {used.model_tflops_per_second} model TFLOP/s, {mfu}; "
              f"{used.gpu_hours} GPU hours", flush=True)  # fmt: skip
    return used


def training_items(recipe: RecipeSettings, tokenizer: Any, data_dir: Path, split: str) -> list[Any]:
    """A split as its trainer takes it: encoded examples, or (DPO) the pair records themselves."""
    if recipe.train.method == "dpo":
        from gapforge_runtime.data.reading import read_split_file

        return read_split_file(data_dir / f"{split}.jsonl")
    from gapforge_runtime.data.encoding import encoded_split

    return encoded_split(recipe, tokenizer, data_dir, split)


def _trainer_type(recipe: RecipeSettings, default: Any, tokenizer: Any) -> Any:
    """The trainer of the recipe's method, called as Trainer is (DPO: TRL's DPOTrainer, which
    tokenizes the pairs itself and brings its own collator)."""
    if recipe.train.method != "dpo":
        return default
    from gapforge_runtime.methods.preference import dpo_trainer

    def make(*, model: Any, args: Any, train_dataset: ListDataset, eval_dataset: ListDataset,
             callbacks: list[Any], **_ignored: Any) -> Any:  # fmt: skip
        return dpo_trainer(
            model, args, tokenizer, list(train_dataset.items), list(eval_dataset.items), callbacks
        )

    return make
