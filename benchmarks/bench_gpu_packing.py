"""Realistic lengths, side by side: plain transformers + PEFT (padded batches) vs the runtime's path.

Part of `nox -s bench-gpu` (bench_gpu.py calls bench_gpu_compare.compare, which runs each variant
through this script in a fresh process); also runs alone: `python benchmarks/bench_gpu_packing.py
--work DIR` (writes the 8B-shaped model itself, in a child process, unless DIR holds it already).

Examples have log-normal lengths (median 300 tokens, sigma 0.8, at least 16, capped at 2048; seeded),
random token ids, every token trained. The same example list feeds every variant, in the same order:

- `plain`: the old way, batches of examples right-padded to the longest, attention mask, SDPA,
  torch AdamW (foreach), bf16 autocast; batches of 4, or the largest of 2 and 1 that fits where 4
  runs out of memory (bench_gpu_compare.plain_fallback; the table says which);
- `runtime`: the runtime's trainer path: examples grouped under a token budget
  (`packing.token_budget_groups`, in order here), flattened into one padding-free row
  (`packing.flatten_batch`, position ids restarting, block-diagonal mask built by transformers), Liger
  kernels (`packing.apply_liger`), fused AdamW;
- `runtime-flex`: the same with flex attention (a block mask that skips other examples' blocks;
  Triton compiles it on first use, so give it 3 warm-up steps); what `train.packed_attention: auto`
  takes on CUDA;
- `runtime-fp32` (QLoRA): the runtime's path before QLoRA's frozen weights went back to bf16
  (`train.frozen_back_to_bf16`): embeddings, lm_head and norms left in the fp32 that
  `prepare_model_for_kbit_training` upcasts them to;
- `plain-b8`: padded batches of 8, to see whether a padded run holds what a packed row holds
  (skipped where batches of 4 did not fit);
- `runtime-flex-compiled`: runtime-flex with each decoder layer through `torch.compile` (regional,
  dynamic row lengths). A measurement only: it compiles at run time, which a sealed image must not.

Reported per variant: real (non-padding) tokens/s over the timed steps, MFU counting only real work
(4·N per token, plus attention 12·L·h·len per token of an example of len tokens; recomputation and
padding not counted), peak memory, the token-mean loss of the last timed steps, and the GPU memory
free when the variant's process started (what the parent and earlier variants left it). Before training,
the runtime variant checks on the GPU that a flattened row gives the padded batch's logits (and that
the same row without restarting positions does not).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "runtime"))
sys.path.insert(0, str(REPO / "benchmarks"))


def lognormal_lengths(count: int, seed: int, median: float = 300.0, sigma: float = 0.8, cap: int = 2048) -> list[int]:
    """Seeded example lengths: log-normal with this median, between 16 and `cap` tokens."""
    import random

    rng = random.Random(seed)
    return [max(16, min(cap, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(count)]


def make_examples(lengths: list[int], vocab: int, seed: int) -> list[dict[str, list[int]]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": list(ids)})
    return examples


def model_flops(lengths: list[int], params: int, shape: dict[str, int]) -> float:
    """Useful model FLOPs of a forward+backward over these examples (no padding, no recomputation):
    the runtime's own count (gapforge_runtime.flops), which the train step records."""
    from gapforge_runtime import flops

    return flops.model_flops(lengths, params, shape["num_hidden_layers"], shape["hidden_size"])


def batches(variant: str, examples: list[dict[str, list[int]]], budget: int, plain_batch: int = 4) -> list[list[int]]:
    """Indices of the examples of each step, in the examples' order: padded batches of `plain_batch`
    (plain-b8: 8) for the plain variants, whole examples under `budget` tokens for the runtime's."""
    if variant.startswith("plain"):
        size = 8 if variant == "plain-b8" else plain_batch
        return [list(range(i, min(i + size, len(examples)))) for i in range(0, len(examples), size)]
    groups: list[list[int]] = [[]]
    used = 0
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        if groups[-1] and used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def pad_batch(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """The runtime's padded batches (train.pad_batch), imported where the runtime's config imports
    (pydantic is not on every GPU machine): right padding, attention 0 and label -100 on it."""
    try:
        from gapforge_runtime.methods.sft import pad_batch as runtime_pad_batch
    except ImportError:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": torch.tensor([f["input_ids"] + [pad_id] * (width - len(f["input_ids"])) for f in features]),
            "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]),
        }  # fmt: skip
    return runtime_pad_batch(features, pad_id)  # type: ignore[no-any-return]


def load_model(folder: Path, method: str, variant: str, args: argparse.Namespace, device: str) -> tuple[Any, dict[str, Any]]:
    """The model loaded the variant's way, with LoRA adapters, in train mode; and how it was loaded."""
    import torch
    from gapforge_runtime.data import packing
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    runtime, cuda = variant.startswith("runtime"), device == "cuda"
    liger = packing.apply_liger(True, folder, device) if runtime and args.liger and cuda else None
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": "sdpa"}
    if runtime:
        kwargs["attn_implementation"] = "flex_attention" if variant.startswith("runtime-flex") else args.attn
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
        kwargs["device_map"] = {"": 0}
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, **kwargs)
    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        if runtime and variant != "runtime-fp32":
            # gapforge_runtime.train imports pydantic, which not every GPU machine has: only where used
            from gapforge_runtime.methods.sft import frozen_back_to_bf16

            frozen_back_to_bf16(model)  # as the runtime's QLoRA does
    else:
        model = model.to(device)
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    compiled = compile_layers(model) if variant.endswith("-compiled") else None
    info = {"method": method, "variant": variant, "liger": liger, "attn": kwargs["attn_implementation"],
            "gradient_checkpointing": method == "qlora", "compiled_layers": compiled,
            "load_seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    return model, info


def compile_layers(model: Any) -> int:
    """Regional compilation: each decoder layer (with its LoRA adapters) through torch.compile, dynamic
    row lengths, the layers sharing one compiled graph. Measured only: it compiles at run time, which
    a sealed image must not do, so the runtime never takes it."""
    count = 0
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            module.compile(dynamic=True)
            count += 1
    return count


def packed_check(model: Any, examples: list[dict[str, list[int]]], device: str) -> dict[str, float]:
    """The packed row against the padded batch of the same 4 examples (logits of every real token),
    and the same row without restarting positions (which must differ: the negative control)."""
    import torch
    from gapforge_runtime.data import packing

    chosen = examples[:4]
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        padded = pad_batch(chosen, 0)
        flat = packing.flatten_batch(chosen)
        ref = model(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device)).logits
        ref = torch.cat([ref[i, : len(e["input_ids"])] for i, e in enumerate(chosen)]).float()
        got = model(input_ids=flat["input_ids"].to(device), position_ids=flat["position_ids"].to(device)).logits[0].float()
        leak = model(input_ids=flat["input_ids"].to(device)).logits[0].float()
        norm = float(ref.norm())
        lp = model(**{k: v.to(device) for k, v in padded.items()}).loss
        lf = model(**{k: v.to(device) for k, v in flat.items()}).loss
        return {"check_packed_vs_padded_rel": float((got - ref).norm()) / norm,
                "check_unmasked_row_vs_padded_rel": float((leak - ref).norm()) / norm,
                "check_loss_padded": float(lp), "check_loss_packed": float(lf)}  # fmt: skip


def run_variant(folder: Path, method: str, variant: str, args: argparse.Namespace, shape: dict[str, int], params: int) -> dict[str, Any]:
    """Load the model the variant's way, check the packed path, time the steps."""
    import torch

    runtime = variant.startswith("runtime")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a logic check with --shape tiny
    if device == "cuda" and args.gpu_memory_gib:  # a smaller card on a larger one (allocator cap, not speed)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory_gib * 2**30 / total))
    free_at_start = torch.cuda.mem_get_info()[0] if device == "cuda" else None  # what the parent left free
    model, result = load_model(folder, method, variant, args, device)
    result["gpu_free_at_start_gib"] = round(free_at_start / 2**30, 2) if free_at_start is not None else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = runtime and device == "cuda"
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True) if fused else torch.optim.AdamW(trainable, lr=1e-4)
    lengths = lognormal_lengths(args.examples, args.seed, cap=args.cap)
    examples = make_examples(lengths, shape["vocab_size"], args.seed)
    budget = args.qlora_budget if method == "qlora" else args.lora_budget
    result["token_budget"] = budget if runtime else None
    result["plain_batch"] = args.plain_batch if variant == "plain" else None
    if runtime and not variant.endswith("-compiled"):  # compiled: its first loss is checked against the row's uncompiled run
        result.update(packed_check(model, examples, device))
    steps = [[examples[i] for i in step] for step in batches(variant, examples, budget, args.plain_batch)]
    result.update(timed_steps(model, optimizer, steps, not runtime, device, args, shape, params))
    del model, optimizer
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def timed_steps(model: Any, optimizer: Any, steps: list[list[dict[str, list[int]]]], padded: bool, device: str,
                args: argparse.Namespace, shape: dict[str, int], params: int) -> dict[str, Any]:  # fmt: skip
    """Warm-up then timed training steps (padded batches or one flattened row a step): real tokens/s,
    MFU, peak memory, loss; or, where it ran out of memory, the step and the peak."""
    import torch
    from bench_gpu import peak_tflops
    from gapforge_runtime.data import packing

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses: list[tuple[float, int]] = []
    timed_lengths: list[int] = []
    timed_padded, timed_start = 0, 0.0
    total = min(len(steps), args.warmup + args.steps)
    try:
        for step in range(total):
            if step == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                timed_start = time.monotonic()
            raw = pad_batch(steps[step], 0) if padded else packing.flatten_batch(steps[step])
            batch = {k: v.to(device) for k, v in raw.items()}
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append((float(loss.detach()), int((batch["labels"][..., 1:] != -100).sum())))
            if step >= args.warmup:
                timed_lengths += [len(e["input_ids"]) for e in steps[step]]
                timed_padded += int(batch["input_ids"].numel())
        if cuda:
            torch.cuda.synchronize()
    except torch.OutOfMemoryError as exc:
        return {"oom": f"step {len(losses)}: {str(exc).splitlines()[0][:160]}",
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}  # fmt: skip
    seconds = time.monotonic() - timed_start
    timed, timed_tokens = total - args.warmup, sum(timed_lengths)
    achieved = model_flops(timed_lengths, params, shape) / seconds / 1e12
    peak = peak_tflops(device)
    last = losses[-3:]
    return {
        "timed_steps": timed, "examples_per_step": round(len(timed_lengths) / timed, 1),
        "real_tokens_per_step": round(timed_tokens / timed), "padding_pct": round(100 * (1 - timed_tokens / timed_padded), 1),
        "seconds_per_step": round(seconds / timed, 3), "real_tokens_per_second": round(timed_tokens / seconds, 1),
        "model_tflops_per_second": round(achieved, 1), "mfu_pct": round(100 * achieved / peak, 1) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "first_loss": round(losses[0][0], 4),
        "last_loss": round(sum(v * n for v, n in last) / sum(n for _, n in last), 4),
    }  # fmt: skip


def main() -> int:
    from bench_gpu import SHAPES, log, write_model_in_child
    from bench_gpu_compare import add_arguments, compare, fitting_lora_budget

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gapforge-bench-gpu"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--plain-batch", type=int, default=4, help=argparse.SUPPRESS)  # set by compare's fallback
    add_arguments(parser)
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.only and not args.lora_budget:
        args.lora_budget = fitting_lora_budget(shape, args.liger, args.gpu_memory_gib)
    if args.only:
        method, variant = args.only.split(":")
        args.warmup, args.steps = args.cmp_warmup, args.cmp_steps
        params = json.loads((args.work / "params.json").read_text())["params"]
        args.json.write_text(json.dumps(run_variant(args.work / "model", method, variant, args, shape, params)))
        return 0
    if (args.work / "params.json").is_file():
        params = json.loads((args.work / "params.json").read_text())["params"]
    else:  # in a child process, which gives the GPU back when it ends
        params = write_model_in_child(args.work, args.shape, "cuda" if __import__("torch").cuda.is_available() else "cpu")
    figures = compare(args, args.work / "model", shape, params, log)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
