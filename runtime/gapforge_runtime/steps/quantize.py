"""The quantize step: merged → GGUF f16 → each quantization, the adapter as GGUF, Modelfiles, and
the quantized transformers checkpoints (GPTQ, bitsandbytes) on a GPU."""

from __future__ import annotations

from typing import Any

from gapforge_runtime.config import RecipeSettings
from gapforge_runtime.files import describe_path, sha256_file
from gapforge_runtime.outputs import StepRecord, run_step
from gapforge_runtime.preflight import check_cpu_features, check_targets
from gapforge_runtime.recipe_schema import GGUF_TARGETS, GPU_ONLY_TARGETS
from gapforge_runtime.steps.context import RunContext, free_gpu, require, section_digest, timed
from gapforge_runtime.steps.data import encoded


def gguf_targets(recipe: RecipeSettings) -> list[str]:
    """Every GGUF file to write: f16 always (the source of the others), then the recipe's targets."""
    return ["gguf:f16", *[t for t in recipe.quantize if t in GGUF_TARGETS and t != "gguf:f16"]]


def hf_targets(recipe: RecipeSettings) -> list[str]:
    """The recipe's quantized transformers checkpoints (GPU only), in the recipe's order."""
    return [t for t in recipe.quantize if t in GPU_ONLY_TARGETS]


def _quantize_hf(ctx: RunContext, target: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One GPTQ / bitsandbytes checkpoint from the merged model; calibration from the train split."""
    from gapforge_runtime.export import quantize_hf
    from gapforge_runtime.modelio import load_tokenizer

    folder = ctx.out.quantized_dir(target)
    if target == "gptq:int4":
        settings = ctx.recipe.gptq
        calibration = quantize_hf.calibration_examples(
            encoded(ctx, load_tokenizer(ctx.out.merged), "train"), settings.calibration_samples
        )
        print(f"[quantize] merged → {folder.name} (GPTQModel, group size {settings.group_size}, "
              f"desc_act {settings.desc_act}, {len(calibration)} calibration samples)", flush=True)  # fmt: skip
        details = quantize_hf.quantize_gptq(ctx.out.merged, folder, settings, calibration)
    else:
        print(f"[quantize] merged → {folder.name} (bitsandbytes)", flush=True)
        details = quantize_hf.quantize_bnb(ctx.out.merged, folder, target)
    free_gpu()
    print(f"[quantize] {target} done in {details['quantize_seconds']:.1f}s", flush=True)
    return describe_path(folder), details


def step_quantize(ctx: RunContext) -> StepRecord:
    """merged → GGUF f16 → each quantization, the adapter as GGUF, and a Modelfile beside each."""
    from gapforge_runtime.export.quantize import check_llama_cpp

    check_targets(ctx.recipe.quantize)
    check_cpu_features()  # before quantize_gguf imports llama_cpp
    llama_cpp = check_llama_cpp(ctx.llama_cpp)
    require(ctx.out.merged / "config.json", "the merged model", "merge")
    targets = gguf_targets(ctx.recipe)
    inputs = {
        "merged": ctx.digest("merged", ctx.out.merged, refresh=True),
        "adapter": ctx.digest("adapter", ctx.out.adapter, refresh=True),
        "targets": section_digest(targets),
        "converter": sha256_file(llama_cpp / "convert_hf_to_gguf.py"),
    }
    if hf_targets(ctx.recipe):
        inputs["hf_targets"] = section_digest(hf_targets(ctx.recipe), ctx.recipe.gptq.model_dump())
        inputs["train"] = sha256_file(ctx.out.data / "train.jsonl")

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        outputs, details = _write_ggufs(ctx, llama_cpp, targets)
        for target in hf_targets(ctx.recipe):  # GPTQ / bitsandbytes checkpoints (GPU)
            outputs[target], details[target] = _quantize_hf(ctx, target)
            details["seconds"][target] = details[target]["quantize_seconds"]
        return outputs, details

    record, _ = run_step(ctx.out, "quantize", inputs, ctx.force, body)
    return record


def _write_ggufs(
    ctx: RunContext, llama_cpp: Any, targets: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """GGUF f16, each quantization of it with its Modelfile, and the adapter as GGUF."""
    from gapforge_runtime.export.quantize import (
        convert_adapter,
        convert_to_f16,
        ollama_template,
        quantize_gguf,
        write_modelfile,
    )
    from gapforge_runtime.modelio import load_tokenizer

    name = ctx.recipe.name
    template, stops = ollama_template(load_tokenizer(ctx.out.merged))
    outputs: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    f16 = ctx.out.gguf_file(name, "gguf:f16")
    print(f"[quantize] {ctx.out.merged} → {f16.name}", flush=True)
    with timed(seconds, "gguf:f16"):
        convert_to_f16(llama_cpp, ctx.out.merged, f16)
    for target in targets:
        path = ctx.out.gguf_file(name, target)
        if target != "gguf:f16":
            print(f"[quantize] {f16.name} → {path.name}", flush=True)
            with timed(seconds, target):
                quantize_gguf(f16, target, path)
        outputs[target] = describe_path(path)
        outputs[f"{target}:Modelfile"] = describe_path(write_modelfile(path, template, stops))
    adapter_gguf = ctx.out.adapter_gguf(name)
    print(f"[quantize] adapter → {adapter_gguf.name}", flush=True)
    with timed(seconds, "adapter:gguf"):
        convert_adapter(llama_cpp, ctx.out.adapter, ctx.model_dir, adapter_gguf)
    outputs["adapter:gguf"] = describe_path(adapter_gguf)
    return outputs, {"targets": targets, "stop": stops, "seconds": seconds}
