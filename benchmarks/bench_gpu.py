"""GPU training figures on an 8B-shaped Llama (random weights): `nox -s bench-gpu` (not in CI).

Prints, for LoRA (bf16 base) and QLoRA (NF4 base, double quantization, bf16 compute, gradient
checkpointing), both with LoRA r=16 on every linear layer and AdamW:

- training tokens per second over the timed steps (after warm-up steps),
- model FLOPs utilization: achieved model FLOP/s over the GPU's dense bf16 peak. Model FLOPs a token
  = 4·N (forward 2·N, backward through frozen weights 2·N: no weight gradients) + 12·L·h·s
  (attention scores, forward and backward, as in PaLM's appendix B); recomputation is not counted;
- peak GPU memory (torch.cuda.max_memory_allocated) against the runtime's memory planner,
- GPTQ INT4 quantization time of the same model (GPTQModel, torch kernels, group size 128).

The model is written once as bf16 safetensors under --work (16 GB for 8B) so QLoRA loads it through
bitsandbytes exactly as the runtime does. `--shape tiny --device cpu` runs the script's logic on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "runtime"))
sys.path.insert(0, str(REPO / "benchmarks"))

SHAPES = {
    # Llama-3.1-8B's shape
    "8b": {"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
           "num_attention_heads": 32, "num_key_value_heads": 8},
    "1b": {"vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632,
           "num_attention_heads": 32, "num_key_value_heads": 4},
    "tiny": {"vocab_size": 512, "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}  # fmt: skip


def log(message: str) -> None:
    print(f"[bench-gpu] {message}", flush=True)


def peak_tflops(device: str) -> float | None:
    """The GPU's dense bf16 peak, from the runtime's table (gapforge_runtime.flops), for MFU."""
    import torch
    from gapforge_runtime import flops

    return flops.peak_tflops(torch.cuda.get_device_name(0)) if device == "cuda" else None


def write_model(folder: Path, shape: dict[str, int], device: str) -> int:
    """A random-weight Llama of `shape` in bf16 safetensors, with a small tokenizer (for GPTQModel)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**shape, max_position_embeddings=8192, tie_word_embeddings=False, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    del model
    vocab = {f"t{i}": i for i in range(256)} | {"<unk>": 256, "<s>": 257, "</s>": 258}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(folder)  # fmt: skip
    return params


def write_model_in_child(work: Path, shape: str, device: str) -> int:
    """Write the model (and params.json) in a child process: a CUDA process keeps what its caching
    allocator held (about 31 GB after the 8B model is made on the GPU), which on an 80 GB card left
    every variant started afterwards out of memory. The child's memory goes back when it ends."""
    child = [sys.executable, __file__, "--write-model", "--work", str(work), "--shape", shape, "--device", device]
    if subprocess.run(child, check=False).returncode != 0 or not (work / "params.json").is_file():
        raise SystemExit(f"bench-gpu: writing the {shape} model under {work} failed (output above)")
    return int(json.loads((work / "params.json").read_text())["params"])


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_figures(folder: Path, method: str, args: argparse.Namespace, shape: dict[str, int], params: int) -> dict[str, Any]:
    """Time LoRA or QLoRA steps on random token batches; return tokens/s, MFU, peak memory vs the planner."""
    import torch
    from gapforge_runtime import memplan
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = args.device
    free(device)
    checkpointing = method == "qlora" or args.gradient_checkpointing
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if device == "cuda" else torch.float32}
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
    else:
        model = model.to(device)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    load_seconds = time.monotonic() - started
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, shape["vocab_size"], (args.batch, args.seq), generator=generator).to(device)
    model.train()
    resident = int(torch.cuda.memory_allocated()) if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses: list[float] = []
    timed_start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            timed_start = time.monotonic()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.monotonic() - timed_start
    tokens = args.batch * args.seq * args.steps
    tokens_per_second = tokens / seconds
    layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
    flops_per_token = 4 * params + 12 * layers * hidden * args.seq
    achieved = flops_per_token * tokens_per_second / 1e12
    peak_spec = peak_tflops(device)
    peak_memory = int(torch.cuda.max_memory_allocated()) if device == "cuda" else None
    plan = memplan.estimate(
        memplan.ModelShape.from_config(shape),
        memplan.TrainingShape(method, args.batch, args.seq, 16, gradient_checkpointing=checkpointing,
                              weight_bytes=2.0 if device == "cuda" else 4.0),
    )  # fmt: skip
    result = {
        "method": method, "batch": args.batch, "seq": args.seq, "gradient_checkpointing": checkpointing,
        "load_seconds": round(load_seconds, 1), "timed_steps": args.steps,
        "seconds_per_step": round(seconds / args.steps, 3), "tokens_per_second": round(tokens_per_second, 1),
        "model_tflops_per_second": round(achieved, 1),
        "mfu_pct": round(100 * achieved / peak_spec, 1) if peak_spec else None,
        "peak_memory_gib": round(peak_memory / memplan.GiB, 2) if peak_memory else None,
        "resident_before_steps_gib": round(resident / memplan.GiB, 2) if resident else None,
        "planner_weights_gib": round(plan.weights / memplan.GiB, 2),
        "planner_allocated_gib": round(plan.allocated / memplan.GiB, 2),
        "planner_total_gib": round(plan.total / memplan.GiB, 2),
        "planner_error_pct": round(100 * (plan.allocated - peak_memory) / peak_memory, 1) if peak_memory else None,
        "losses": [round(x, 4) for x in losses],
    }  # fmt: skip
    del model, optimizer, batch
    free(device)
    return result


def gptq_figures(folder: Path, args: argparse.Namespace, shape: dict[str, int]) -> dict[str, Any]:
    """Time GPTQ INT4 of the model with GPTQModel (torch kernels, nothing compiled at run time)."""
    os.environ.setdefault("GPTQMODEL_DISABLE_GPTQ_CUDA", "1")
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(4, os.cpu_count() or 2))))
    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    free(args.device)
    generator = torch.Generator().manual_seed(1)
    calibration = [
        {"input_ids": ids, "attention_mask": [1] * len(ids)}
        for ids in torch.randint(0, shape["vocab_size"], (args.gptq_samples, args.gptq_seq), generator=generator).tolist()
    ]
    config = QuantizeConfig(bits=4, group_size=128, desc_act=False, offload_to_disk=False)
    started = time.monotonic()
    model = GPTQModel.load(str(folder), config, trust_remote_code=False)
    loaded = time.monotonic()
    model.quantize(calibration, batch_size=1, backend=BACKEND.GPTQ_TORCH)
    done = time.monotonic()
    out = folder.parent / "gptq"
    model.save(str(out))
    saved = time.monotonic()
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    del model
    free(args.device)
    return {
        "calibration": f"{args.gptq_samples} x {args.gptq_seq} tokens", "load_seconds": round(loaded - started, 1),
        "quantize_seconds": round(done - loaded, 1), "save_seconds": round(saved - done, 1),
        "checkpoint_gb": round(size / 1e9, 2),
    }  # fmt: skip


def parse_arguments() -> argparse.Namespace:
    """This script's options and the side-by-side comparison's (bench_gpu_compare.add_arguments)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="also for LoRA")
    parser.add_argument("--methods", default="lora,qlora")
    parser.add_argument("--fixed", action=argparse.BooleanOptionalAction, default=True,
                        help="the fixed-length figures (--batch x --seq) of --methods")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="realistic lengths: plain transformers + PEFT vs the runtime (bench_gpu_packing.py)")
    parser.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gptq-samples", type=int, default=128, help="the runtime's default calibration count")
    parser.add_argument("--gptq-seq", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gapforge-bench-gpu"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-work", action="store_true",
                        help="leave --work (the written model) for a later bench_gpu_packing.py --work run")  # fmt: skip
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one method in this process (internal)
    parser.add_argument("--write-model", action="store_true", help=argparse.SUPPRESS)  # this process writes it (internal)
    import bench_gpu_compare

    bench_gpu_compare.add_arguments(parser)
    return parser.parse_args()


def main() -> int:
    import bench_gpu_compare

    args = parse_arguments()
    if args.write_model:
        params = write_model(args.work / "model", SHAPES[args.shape], args.device)
        (args.work / "params.json").write_text(json.dumps({"params": params}))
        return 0
    if args.only:
        # A fresh process per method: its CUDA memory and peak counter start from zero.
        shape = SHAPES[args.shape]
        params = json.loads((args.work / "params.json").read_text())["params"]
        args.json.write_text(json.dumps(train_figures(args.work / "model", args.only, args, shape, params)))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench-gpu needs a CUDA GPU (none is visible): run it on a GPU machine", file=sys.stderr)
        return 2
    shape = SHAPES[args.shape]
    figures: dict[str, Any] = {"shape": args.shape, "torch": torch.__version__}
    if args.device == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["peak_tflops_bf16_dense"] = peak_tflops(args.device)

    def save() -> None:
        print(json.dumps(figures, indent=1), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=1))

    shutil.rmtree(args.work, ignore_errors=True)
    started = time.monotonic()
    params = write_model_in_child(args.work, args.shape, args.device)
    figures["params"] = params
    figures["write_model_seconds"] = round(time.monotonic() - started, 1)
    log(f"{args.shape}: {params / 1e9:.2f}B parameters written in {figures['write_model_seconds']}s")
    for method in args.methods.split(",") if args.fixed else []:
        log(f"{method}: {args.warmup} warm-up + {args.steps} timed steps of {args.batch} x {args.seq} tokens")
        result = args.work / f"{method}.json"
        child = [sys.executable, __file__, "--only", method, "--json", str(result), "--work", str(args.work),
                 "--shape", args.shape, "--device", args.device, "--batch", str(args.batch), "--seq", str(args.seq),
                 "--warmup", str(args.warmup), "--steps", str(args.steps)]  # fmt: skip
        if args.gradient_checkpointing:
            child.append("--gradient-checkpointing")
        if subprocess.run(child, check=False).returncode != 0 or not result.is_file():
            log(f"{method}: FAILED (output above)")
            continue
        figures[method] = r = json.loads(result.read_text())
        log(f"{method}: {r['tokens_per_second']} tokens/s, MFU {r['mfu_pct']}%, peak {r['peak_memory_gib']} GiB "
            f"(planner {r['planner_allocated_gib']} GiB allocated, {r['planner_total_gib']} GiB with context)")  # fmt: skip
        save()
    if args.compare:
        log("realistic lengths: plain transformers + PEFT (padded) vs the runtime (packed, Liger, fused AdamW)")
        figures["realistic"] = bench_gpu_compare.compare(args, args.work / "model", shape, params, log)
        save()
    if args.gptq:
        log(f"gptq: GPTQ INT4 of the {args.shape} model, {args.gptq_samples} x {args.gptq_seq} calibration tokens")
        figures["gptq"] = gptq_figures(args.work / "model", args, shape)
        log(f"gptq: quantized in {figures['gptq']['quantize_seconds']}s")
        save()
    if not args.keep_work:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
