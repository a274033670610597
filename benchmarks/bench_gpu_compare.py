"""The side-by-side table of `nox -s bench-gpu`: every (method, variant) of bench_gpu_packing.py in a
fresh process, the plain baseline at the largest padded batch that fits, ratios against it.

Why fresh processes: a CUDA process keeps what its caching allocator once held, so a variant run
after another (or after the model was written) starts with less memory than the card has, and an
out-of-memory error leaves the process's allocator in no state to measure anything else.

Why a falling-back baseline: on an 80 GB card, padded batches of 4 of the 8B shape run out of memory
partway through (71 GiB at step 13 on an H100); the old bench then printed no ratio at all. The
plain baseline now tries padded batches of 4, then 2, then 1, each in a fresh process, keeps the
first that runs every step, and the table names the batch it kept and the sizes that did not fit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLAIN_BATCHES = (4, 2, 1)  # padded batch sizes the plain baseline tries, largest first


def plain_fallback(run: Callable[[int], dict[str, Any] | None], sizes: tuple[int, ...] = PLAIN_BATCHES) -> dict[str, Any]:
    """The first padded batch size in `sizes` whose run finished every step (no "oom", not failed).

    `run(size)` runs the plain variant at that size in a fresh process and returns its figures, or
    None when the process failed for another reason (a failure that is not memory stops the search:
    a smaller batch would not mend it). The result carries `plain_batch` (the size kept) and
    `plain_oom` ({size: message} of the sizes that ran out of memory); when none fits it is the
    last size's out-of-memory figures, so the table says so instead of printing a ratio.
    """
    oom: dict[str, str] = {}
    last: dict[str, Any] = {"failed": True}
    for size in sizes:
        got = run(size)
        if got is None:
            return {"failed": True, "plain_batch": None, "plain_oom": oom}
        if "oom" not in got:
            return got | {"plain_batch": size, "plain_oom": oom}
        oom[str(size)] = got["oom"]
        last = got
    return last | {"plain_batch": None, "plain_oom": oom}


def child_command(args: argparse.Namespace, method: str, variant: str, out: Path, plain_batch: int) -> list[str]:
    """The command line of one variant's fresh process (bench_gpu_packing.py --only)."""
    script = Path(__file__).with_name("bench_gpu_packing.py")
    return [sys.executable, str(script), "--only", f"{method}:{variant}", "--json", str(out),
            "--work", str(args.work), "--shape", args.shape, "--plain-batch", str(plain_batch),
            *forwarded(args)]  # fmt: skip


def run_child(args: argparse.Namespace, method: str, variant: str, plain_batch: int, log: Any) -> dict[str, Any] | None:
    """Run one variant in a fresh process; its figures, or None (and a log line) if it failed."""
    suffix = f"-b{plain_batch}" if variant == "plain" else ""
    out = args.work / f"cmp-{method}-{variant}{suffix}.json"
    out.unlink(missing_ok=True)
    label = f"{method}/{variant}" + (f" (padded batches of {plain_batch})" if variant == "plain" else "")
    log(f"{label}: starting")
    if subprocess.run(child_command(args, method, variant, out, plain_batch), check=False).returncode != 0 or not out.is_file():
        log(f"{label}: FAILED (output above)")
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    log(f"{label}: {json.dumps(result)}")
    return result


def compare(args: argparse.Namespace, folder: Path, shape: dict[str, int], params: int, log: Any) -> dict[str, Any]:
    """Every (method, variant) in a fresh process; the side-by-side table printed at the end."""
    from bench_gpu_packing import lognormal_lengths

    figures: dict[str, Any] = {"lengths": {"distribution": "log-normal", "median": 300, "sigma": 0.8, "cap": args.cap,
                                           "seed": args.seed, "examples": args.examples}}  # fmt: skip
    if not args.lora_budget:
        args.lora_budget = fitting_lora_budget(shape, args.liger, args.gpu_memory_gib)
    ordered = sorted(lognormal_lengths(args.examples, args.seed, cap=args.cap))
    figures["lengths"]["p50_p90_p99_max"] = [ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.9)],
                                             ordered[int(len(ordered) * 0.99)], ordered[-1]]  # fmt: skip
    for method in args.cmp_methods.split(","):
        for variant in args.variants.split(","):
            key = f"{method}/{variant}"
            if variant == "plain-b8" and method not in args.b8_methods.split(","):
                continue
            if variant == "runtime-fp32" and method != "qlora":
                continue  # only QLoRA's preparation upcasts
            if variant == "plain-b8" and figures.get(f"{method}/plain", {}).get("plain_batch") not in (None, 4):
                figures[key] = {"skipped": "padded batches of 4 did not fit"}
                log(f"{key}: skipped (padded batches of 4 did not fit)")
                continue
            if variant == "plain":
                figures[key] = plain_fallback(lambda size, m=method: run_child(args, m, "plain", size, log))
            else:
                figures[key] = run_child(args, method, variant, 4, log) or {"failed": True}
    print(table(figures, args), flush=True)
    return figures


def variant_label(variant: str, r: dict[str, Any]) -> str:
    """The table's name of a row: the plain baseline says which padded batch it kept and why."""
    if variant != "plain":
        return variant
    tried = ", ".join(f"{size} out of memory" for size in r.get("plain_oom", {}))
    batch = r.get("plain_batch")
    return f"plain (padded, {batch if batch else 'none fits'}" + (f"; {tried}" if tried else "") + ")"


def table(figures: dict[str, Any], args: argparse.Namespace) -> str:
    """The side-by-side Markdown table: ratios and loss deltas against the same call's plain row."""
    rows = ["| method | variant | row tokens | examples/step | padding | real tokens/s | x plain | MFU | peak GiB | last loss | Δ loss |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for method in args.cmp_methods.split(","):
        base = figures.get(f"{method}/plain", {})
        for variant in args.variants.split(","):
            r = figures.get(f"{method}/{variant}")
            if r is None:
                continue
            name, budget = variant_label(variant, r), r.get("token_budget") or ""
            if "real_tokens_per_second" not in r:
                reason = r.get("skipped") or r.get("oom") or "failed"
                rows.append(f"| {method} | {name} | {budget} | | | {reason} | | | {r.get('peak_memory_gib') or ''} | | |")
                continue
            speed = delta = ""
            if "real_tokens_per_second" in base:
                speed = f"{r['real_tokens_per_second'] / base['real_tokens_per_second']:.2f}x"
                delta = f"{100 * (r['last_loss'] - base['last_loss']) / base['last_loss']:+.2f} %"
            mfu = "" if r.get("mfu_pct") is None else f"{r['mfu_pct']} %"
            rows.append(f"| {method} | {name} | {budget} | {r['examples_per_step']} | {r['padding_pct']} % | "
                        f"{r['real_tokens_per_second']:,.0f} | {speed} | {mfu} | {r.get('peak_memory_gib') or ''} | "
                        f"{r['last_loss']} | {delta} |")  # fmt: skip
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("realistic lengths (plain vs runtime)")
    group.add_argument("--cmp-methods", default="lora,qlora")
    group.add_argument("--variants", default="plain,runtime,runtime-flex,plain-b8",
                       help="also runtime-fp32 (QLoRA's old upcasts) and runtime-flex-compiled (decoder layers "
                            "through torch.compile: compiles at run time, so measured only, never the runtime's)")  # fmt: skip
    group.add_argument("--examples", type=int, default=800, help="examples drawn (enough for every variant's steps)")
    group.add_argument("--b8-methods", default="lora", help="methods that try padded batches of 8 (QLoRA's fit)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--cap", type=int, default=2048)
    group.add_argument("--cmp-warmup", type=int, default=3, help="flex attention and torch.compile build on first use")
    group.add_argument("--cmp-steps", type=int, default=10)
    group.add_argument("--lora-budget", type=int, default=0,
                       help="tokens a packed row, LoRA (0: the largest of 16384/8192/4096 the planner fits on the GPU)")  # fmt: skip
    group.add_argument("--qlora-budget", type=int, default=16384, help="tokens a packed row, QLoRA")
    group.add_argument("--attn", default="sdpa", help="attention of the runtime variant: sdpa | flex_attention")
    group.add_argument("--liger", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--gpu-memory-gib", type=float, default=0.0,
                       help="cap each variant's CUDA allocator at this many GiB (0: the whole card), to see what "
                            "fits a smaller card on a larger one; speeds are still the larger card's")  # fmt: skip


def fitting_lora_budget(shape: dict[str, int], liger: bool, cap_gib: float = 0.0) -> int:
    """The largest LoRA row (16384, 8192 or 4096 tokens) the memory planner fits on this GPU; 8192
    without one. Measured peaks on the 8B shape (H200): 58.6 GiB at 8192, 101.2 GiB at 16384."""
    from gapforge_runtime import memplan

    memory = memplan.gpu_memory_bytes()
    if memory is None:
        return 8192
    if cap_gib:
        memory = min(memory, int(cap_gib * 2**30))
    model = memplan.ModelShape.from_config(shape)
    for budget in (16384, 8192):
        if memplan.estimate(model, memplan.TrainingShape("lora", 1, budget, 16, fused_loss=liger), memory).fits:
            return budget
    return 4096


def forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--examples", str(args.examples), "--seed", str(args.seed), "--cap", str(args.cap),
           "--cmp-warmup", str(args.cmp_warmup), "--cmp-steps", str(args.cmp_steps),
           "--lora-budget", str(args.lora_budget), "--qlora-budget", str(args.qlora_budget), "--attn", args.attn,
           "--gpu-memory-gib", str(args.gpu_memory_gib)]  # fmt: skip
    return out + ([] if args.liger else ["--no-liger"])
