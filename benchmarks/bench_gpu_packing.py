"""Realistic lengths, side by side: plain transformers + PEFT (padded batches) vs the runtime's path.

Part of `nox -s bench-gpu` (bench_gpu.py calls `compare`); also runs alone:
`python benchmarks/bench_gpu_packing.py --work DIR` (writes the 8B-shaped model itself).

Examples have log-normal lengths (median 300 tokens, sigma 0.8, at least 16, capped at 2048; seeded),
random token ids, every token trained. The same example list feeds every variant, in the same order:

- `plain`: the old way, batches of 4 examples right-padded to the longest, attention mask, SDPA,
  torch AdamW (foreach), bf16 autocast;
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
- `plain-b8`: padded batches of 8, to see whether a padded run holds what a packed row holds.

Reported per variant: real (non-padding) tokens/s over the timed steps, MFU counting only real work
(4·N per token, plus attention 12·L·h·len per token of an example of len tokens; recomputation and
padding not counted), peak memory, and the token-mean loss of the last timed steps. Before training,
the runtime variant checks on the GPU that a flattened row gives the padded batch's logits (and that
the same row without restarting positions does not).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
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


def batches(variant: str, examples: list[dict[str, list[int]]], budget: int) -> list[list[int]]:
    """Indices of the examples of each step, in the examples' order."""
    if variant.startswith("plain"):
        size = 8 if variant == "plain-b8" else 4
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
        from gapforge_runtime.train import pad_batch as runtime_pad_batch
    except ImportError:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": torch.tensor([f["input_ids"] + [pad_id] * (width - len(f["input_ids"])) for f in features]),
            "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]),
        }  # fmt: skip
    return runtime_pad_batch(features, pad_id)  # type: ignore[no-any-return]


def run_variant(folder: Path, method: str, variant: str, args: argparse.Namespace, shape: dict[str, int], params: int) -> dict[str, Any]:
    """Load the model the variant's way, check the packed path, time the steps."""
    import torch
    from bench_gpu import peak_tflops
    from gapforge_runtime import packing
    from gapforge_runtime.train import frozen_back_to_bf16
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    runtime = variant.startswith("runtime")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a logic check with --shape tiny
    cuda = device == "cuda"
    liger = packing.apply_liger(True, folder, device) if runtime and args.liger and cuda else None
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": "sdpa"}
    if runtime:
        kwargs["attn_implementation"] = "flex_attention" if variant == "runtime-flex" else args.attn
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
        kwargs["device_map"] = {"": 0}
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, **kwargs)
    checkpointing = method == "qlora"
    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        if runtime and variant != "runtime-fp32":
            frozen_back_to_bf16(model)  # as the runtime's QLoRA does
    else:
        model = model.to(device)
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    load_seconds = time.monotonic() - started
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True) if runtime and cuda else torch.optim.AdamW(trainable, lr=1e-4)

    lengths = lognormal_lengths(args.examples, args.seed, cap=args.cap)
    examples = make_examples(lengths, shape["vocab_size"], args.seed)
    budget = args.qlora_budget if method == "qlora" else args.lora_budget
    steps = batches(variant, examples, budget)
    result: dict[str, Any] = {"method": method, "variant": variant, "liger": liger, "attn": kwargs["attn_implementation"],
                              "gradient_checkpointing": checkpointing, "load_seconds": round(load_seconds, 1),
                              "token_budget": budget if runtime else None}  # fmt: skip

    def collate(indices: list[int]) -> dict[str, Any]:
        chosen = [examples[i] for i in indices]
        batch = packing.flatten_batch(chosen) if runtime else pad_batch(chosen, 0)
        return {k: v.to(device) for k, v in batch.items()}

    if runtime:
        # the packed row against the padded batch of the same 4 examples (logits of every real token)
        chosen = [examples[i] for i in range(4)]
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            padded = pad_batch(chosen, 0)
            flat = packing.flatten_batch(chosen)
            ref = model(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device)).logits
            ref = torch.cat([ref[i, : len(e["input_ids"])] for i, e in enumerate(chosen)]).float()
            got = model(input_ids=flat["input_ids"].to(device), position_ids=flat["position_ids"].to(device)).logits[0].float()
            leak = model(input_ids=flat["input_ids"].to(device)).logits[0].float()
            norm = float(ref.norm())
            result["check_packed_vs_padded_rel"] = float((got - ref).norm()) / norm
            result["check_unmasked_row_vs_padded_rel"] = float((leak - ref).norm()) / norm
            lp = model(**{k: v.to(device) for k, v in padded.items()}).loss
            lf = model(**{k: v.to(device) for k, v in flat.items()}).loss
            result["check_loss_padded"], result["check_loss_packed"] = float(lp), float(lf)
        del ref, got, leak

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses: list[tuple[float, int]] = []
    timed_tokens = 0
    timed_padded = 0
    timed_lengths: list[int] = []
    timed_start = 0.0
    total = min(len(steps), args.warmup + args.steps)
    try:
        for step in range(total):
            if step == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                timed_start = time.monotonic()
            batch = collate(steps[step])
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            trained = int((batch["labels"][..., 1:] != -100).sum())
            losses.append((float(loss.detach()), trained))
            if step >= args.warmup:
                step_lengths = [lengths[i] for i in steps[step]]
                timed_lengths += step_lengths
                timed_tokens += sum(step_lengths)
                timed_padded += int(batch["input_ids"].numel())
        if cuda:
            torch.cuda.synchronize()
    except torch.OutOfMemoryError as exc:
        result["oom"] = f"step {len(losses)}: {str(exc).splitlines()[0][:160]}"
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return result
    seconds = time.monotonic() - timed_start
    timed = total - args.warmup
    rate = timed_tokens / seconds
    achieved = model_flops(timed_lengths, params, shape) / seconds / 1e12
    peak = peak_tflops(device)
    last = losses[-3:]
    result.update({
        "timed_steps": timed, "examples_per_step": round(len(timed_lengths) / timed, 1),
        "real_tokens_per_step": round(timed_tokens / timed), "padding_pct": round(100 * (1 - timed_tokens / timed_padded), 1),
        "seconds_per_step": round(seconds / timed, 3), "real_tokens_per_second": round(rate, 1),
        "model_tflops_per_second": round(achieved, 1), "mfu_pct": round(100 * achieved / peak, 1) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "first_loss": round(losses[0][0], 4),
        "last_loss": round(sum(v * n for v, n in last) / sum(n for _, n in last), 4),
    })  # fmt: skip
    del model, optimizer
    gc.collect()
    torch.cuda.empty_cache()
    return result


def compare(args: argparse.Namespace, folder: Path, shape: dict[str, int], params: int, log: Any) -> dict[str, Any]:
    """Every (method, variant) in a fresh process; the side-by-side table printed at the end."""
    figures: dict[str, Any] = {"lengths": {"distribution": "log-normal", "median": 300, "sigma": 0.8, "cap": args.cap,
                                           "seed": args.seed, "examples": args.examples}}  # fmt: skip
    if not args.lora_budget:
        args.lora_budget = fitting_lora_budget(shape, args.liger)
    lengths = lognormal_lengths(args.examples, args.seed, cap=args.cap)
    ordered = sorted(lengths)
    figures["lengths"]["p50_p90_p99_max"] = [ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.9)],
                                             ordered[int(len(ordered) * 0.99)], ordered[-1]]  # fmt: skip
    for method in args.cmp_methods.split(","):
        for variant in args.variants.split(","):
            if variant == "plain-b8" and method not in args.b8_methods.split(","):
                continue
            if variant == "runtime-fp32" and method != "qlora":
                continue  # only QLoRA's preparation upcasts
            out = args.work / f"cmp-{method}-{variant}.json"
            child = [sys.executable, __file__, "--only", f"{method}:{variant}", "--json", str(out),
                     "--work", str(args.work), "--shape", args.shape, *forwarded(args)]  # fmt: skip
            log(f"{method}/{variant}: starting")
            if subprocess.run(child, check=False).returncode != 0 or not out.is_file():
                figures[f"{method}/{variant}"] = {"failed": True}
                log(f"{method}/{variant}: FAILED (output above)")
                continue
            figures[f"{method}/{variant}"] = r = json.loads(out.read_text())
            log(f"{method}/{variant}: {json.dumps(r)}")
    print(table(figures, args), flush=True)
    return figures


def table(figures: dict[str, Any], args: argparse.Namespace) -> str:
    rows = ["| method | variant | examples/step | padding | real tokens/s | x plain | MFU | peak GiB | last loss | Δ loss |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for method in args.cmp_methods.split(","):
        base = figures.get(f"{method}/plain", {})
        for variant in args.variants.split(","):
            if f"{method}/{variant}" not in figures:
                continue
            r = figures[f"{method}/{variant}"]
            if "real_tokens_per_second" not in r:
                reason = r.get("oom", "failed")
                rows.append(f"| {method} | {variant} | | | {reason} | | | {r.get('peak_memory_gib', '')} | | |")
                continue
            speed = r["real_tokens_per_second"] / base["real_tokens_per_second"] if "real_tokens_per_second" in base else None
            delta = 100 * (r["last_loss"] - base["last_loss"]) / base["last_loss"] if "last_loss" in base else None
            rows.append(f"| {method} | {variant} | {r['examples_per_step']} | {r['padding_pct']} % | "
                        f"{r['real_tokens_per_second']:,.0f} | {speed:.2f}x | {r['mfu_pct']} % | {r['peak_memory_gib']} | "
                        f"{r['last_loss']} | {delta:+.2f} % |" if speed is not None and delta is not None else
                        f"| {method} | {variant} | {r['examples_per_step']} | {r['padding_pct']} % | "
                        f"{r['real_tokens_per_second']:,.0f} | | {r['mfu_pct']} % | {r['peak_memory_gib']} | {r['last_loss']} | |")  # fmt: skip
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("realistic lengths (plain vs runtime)")
    group.add_argument("--cmp-methods", default="lora,qlora")
    group.add_argument("--variants", default="plain,runtime,runtime-flex,plain-b8")
    group.add_argument("--examples", type=int, default=800, help="examples drawn (enough for every variant's steps)")
    group.add_argument("--b8-methods", default="lora", help="methods that try padded batches of 8 (QLoRA's fit)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--cap", type=int, default=2048)
    group.add_argument("--cmp-warmup", type=int, default=2)
    group.add_argument("--cmp-steps", type=int, default=10)
    group.add_argument("--lora-budget", type=int, default=0,
                       help="tokens a packed row, LoRA (0: the largest of 16384/8192/4096 the planner fits on the GPU)")  # fmt: skip
    group.add_argument("--qlora-budget", type=int, default=16384, help="tokens a packed row, QLoRA")
    group.add_argument("--attn", default="sdpa", help="attention of the runtime variant: sdpa | flex_attention")
    group.add_argument("--liger", action=argparse.BooleanOptionalAction, default=True)


def fitting_lora_budget(shape: dict[str, int], liger: bool) -> int:
    """The largest LoRA row (16384, 8192 or 4096 tokens) the memory planner fits on this GPU; 8192
    without one. Measured peaks on the 8B shape (H200): 58.6 GiB at 8192, 101.2 GiB at 16384."""
    from gapforge_runtime import memplan

    memory = memplan.gpu_memory_bytes()
    if memory is None:
        return 8192
    model = memplan.ModelShape.from_config(shape)
    for budget in (16384, 8192):
        if memplan.estimate(model, memplan.TrainingShape("lora", 1, budget, 16, fused_loss=liger), memory).fits:
            return budget
    return 4096


def forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--examples", str(args.examples), "--seed", str(args.seed), "--cap", str(args.cap),
           "--cmp-warmup", str(args.cmp_warmup), "--cmp-steps", str(args.cmp_steps),
           "--lora-budget", str(args.lora_budget), "--qlora-budget", str(args.qlora_budget), "--attn", args.attn]  # fmt: skip
    return out + ([] if args.liger else ["--no-liger"])


def main() -> int:
    from bench_gpu import SHAPES, log, write_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gapforge-bench-gpu"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.only and not args.lora_budget:
        args.lora_budget = fitting_lora_budget(shape, args.liger)
    if args.only:
        method, variant = args.only.split(":")
        args.warmup, args.steps = args.cmp_warmup, args.cmp_steps
        params = json.loads((args.work / "params.json").read_text())["params"]
        args.json.write_text(json.dumps(run_variant(args.work / "model", method, variant, args, shape, params)))
        return 0
    if not (args.work / "params.json").is_file():
        params = write_model(args.work / "model", shape, "cuda" if __import__("torch").cuda.is_available() else "cpu")
        (args.work / "params.json").write_text(json.dumps({"params": params}))
    params = json.loads((args.work / "params.json").read_text())["params"]
    figures = compare(args, args.work / "model", shape, params, log)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
