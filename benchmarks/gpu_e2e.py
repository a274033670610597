"""The GPU path end to end on a model made here: QLoRA → merge → GGUF Q8_0 / Q4_K_M + GPTQ INT4 + bnb NF4.

`nox -s gpu-e2e` (not in CI; needs a CUDA GPU, bitsandbytes, GPTQModel, optimum and llama-cpp-python)
writes a random-weight Llama-shaped model (about 1.06B parameters by default, a Llama-2-style BPE
tokenizer trained here so llama.cpp's converter accepts it), a recipe JSON around the recipe sample
data, then runs `gapforge-runtime run` on it with the network variables set: every output is reloaded
and scored by the runtime's own eval step. It prints the evaluation and copies the small records
(evaluation.json, manifest.json, steps/*.json, train_log.jsonl) to --results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recipes" / "llama3.1-8b" / "data" / "sample.jsonl"
sys.path.insert(0, str(REPO))

from tests.tiny_tokenizer import CHATML_TEMPLATE, train_llama_tokenizer  # noqa: E402


def make_model(folder: Path, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> int:
    """A random Llama in HF layout (bf16 safetensors) with its tokenizer; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [m["content"] for row in rows for m in row["messages"]]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_llama_tokenizer(texts, 2000),
        bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="</s>",
    )  # fmt: skip
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return params


def recipe(folder: Path, steps: int, targets: list[str], calibration: int) -> Path:
    """recipe.json (the builder's normalized shape) and its sample data."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE, folder / "data" / "sample.jsonl")
    data = {
        "name": "gpu-e2e", "version": "0.1.0", "profile": "cuda",
        "model": {"id": "random-llama", "source": {"type": "local", "path": "model"}},
        "data": {"format": "chat", "sample": "data/sample.jsonl"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {
            "method": "qlora", "max_steps": steps, "learning_rate": 1e-3, "batch_size": 8,
            "gradient_accumulation": 1, "warmup_steps": 2, "scheduler": "linear", "max_seq_length": 256,
            "seed": 7, "eval_every": max(1, steps // 2), "early_stopping_patience": 0,
            "gradient_checkpointing": True, "nproc": 1, "distributed": "auto",
        },
        "quantize": targets,
        "gptq": {"group_size": 128, "desc_act": False, "calibration_samples": calibration, "damp_percent": 0.05},
        # random weights: the gates check the plumbing, not quality
        "evaluate": {"sample_answers": 2, "max_new_tokens": 16, "gates": {"require_improvement": True}},
    }  # fmt: skip
    path = folder / "recipe.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gapforge-gpu-e2e"))
    parser.add_argument("--results", type=Path, help="copy the run's small records here")
    parser.add_argument("--llama-cpp", required=True, help="llama.cpp scripts (from the locked sdist)")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--timeout", type=float, help="stop the run after this many seconds")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument(
        "--targets", default="gguf:q8_0,gguf:q4_k_m,gptq:int4,bnb:nf4", help="comma-separated quantize list"
    )
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    started = time.monotonic()
    params = make_model(args.work / "recipe" / "model", args.hidden, args.layers, args.intermediate, 32, 4)
    print(f"[e2e] random Llama: {params / 1e9:.3f}B parameters ({time.monotonic() - started:.1f}s)", flush=True)
    path = recipe(args.work / "recipe", args.steps, args.targets.split(","), args.calibration_samples)
    command = [
        sys.executable, "-m", "gapforge_runtime.cli", "run", "--recipe", str(path),
        "--model", str(args.work / "recipe" / "model"), "--out", str(args.work / "out"),
        "--llama-cpp", args.llama_cpp,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        status = subprocess.run(command, env=env, check=False, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:  # run() has killed the runtime: it holds no GPU memory now
        print(f"[e2e] the run did not finish in {args.timeout}s", flush=True)
        status = 124
    out = args.work / "out"
    summary: dict[str, Any] = {"params": params, "exit_status": status, "seconds": round(time.monotonic() - started, 1)}
    if (out / "evaluation.json").is_file():
        evaluation = json.loads((out / "evaluation.json").read_text())
        summary["models"] = {
            k: {"loss": round(v["loss"], 4), "perplexity": round(v["perplexity"], 3), "mb": round(v["size_bytes"] / 1e6, 1)}
            for k, v in evaluation["models"].items()
        }
        summary["delta_vs_merged_pct"] = evaluation["delta_vs_merged_pct"]
    for step in ("train", "merge", "quantize", "eval"):
        record = out / "steps" / f"{step}.json"
        if record.is_file():
            summary[f"{step}_details"] = json.loads(record.read_text()).get("details")
            summary[f"{step}_seconds"] = json.loads(record.read_text()).get("seconds")
    print(json.dumps(summary, indent=1, default=str), flush=True)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "e2e_summary.json").write_text(json.dumps(summary, indent=1, default=str))
        for name in ("evaluation.json", "manifest.json", "train_log.jsonl"):
            if (out / name).is_file():
                shutil.copy(out / name, args.results / name)
    return status


if __name__ == "__main__":
    sys.exit(main())
