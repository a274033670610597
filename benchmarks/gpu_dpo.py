"""One DPO run of the runtime's own trainer on the 8B shape (random weights), for docs/gpu.md.

`python benchmarks/gpu_dpo.py` on a CUDA machine: an 8B-shaped Llama (Llama-3.1-8B's config, random
bf16 weights, no download) saved to a scratch folder, synthetic preference pairs in the string form,
and recipes/llama3.1-8b/dpo-qlora.yaml with max_steps for a short run, through the runtime's
training_items + train_adapter (TRL's DPOTrainer on the QLoRA model). Prints and writes
($OUT/gpu_dpo.json) the step count, time, tokens/s, peak memory and the losses. `--tiny` runs a
2-layer model on the CPU with LoRA (a check of this script).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "tests")]

WORDS = ["ticket", "queue", "escalate", "restart", "vpn", "token", "badge", "printer", "laptop", "password", "reset", "shift", "handover", "outage", "incident", "ledger", "approve", "invoice", "release", "rollback", "deploy", "patch", "audit"]  # fmt: skip


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _pairs(n: int, rng: random.Random, prompt_words: int, answer_words: int) -> list[dict[str, str]]:
    return [
        {"prompt": "Question: " + _text(rng, prompt_words) + "\nAnswer:",
         "chosen": " Steps: " + _text(rng, answer_words) + ". Done.",
         "rejected": " " + _text(rng, answer_words)}
        for _ in range(n)
    ]  # fmt: skip


def main() -> int:
    import torch
    from tiny_tokenizer import CHATML_TEMPLATE, train_llama_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tiny = "--tiny" in sys.argv
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-dpo-out-"))
    work = Path(tempfile.mkdtemp(prefix="gpu-dpo-"))
    rng = random.Random(7)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_llama_tokenizer([" ".join(WORDS)] * 20 + ["Question Answer Steps Done ."] * 5, 400),
        bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="</s>",
    )  # fmt: skip
    tokenizer.chat_template = CHATML_TEMPLATE
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2) if tiny else dict(hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)  # fmt: skip
    config = LlamaConfig(vocab_size=128256, max_position_embeddings=4096, rope_theta=500000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **shape)  # fmt: skip
    started = time.monotonic()
    torch.manual_seed(0)
    with torch.device("cpu" if tiny else "cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model_dir = work / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    made = time.monotonic() - started

    recipe = yaml.safe_load((REPO / "recipes/llama3.1-8b/dpo-qlora.yaml").read_text())
    recipe["train"].update(epochs=None, max_steps=4 if tiny else 12, eval_every=4 if tiny else 6,
                           early_stopping_patience=0, gradient_accumulation=2)  # fmt: skip
    if tiny:
        recipe["profile"], recipe["train"]["dpo"]["qlora"] = "cpu", False
    data = work / "data"
    data.mkdir()
    words = (20, 10) if tiny else (300, 200)  # ~450 and ~300 tokens a side on the 8B run
    for split, n in (("train", 48), ("validation", 8)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs(n, rng, *words)))
    (data / "prefs.jsonl").write_text((data / "train.jsonl").read_text())
    recipe["data"]["sample"] = "data/prefs.jsonl"
    (work / "recipe.json").write_text(json.dumps(recipe))

    from gapforge_runtime.config import load_recipe_settings
    from gapforge_runtime.methods.sft import train_adapter, training_items
    from gapforge_runtime.offline import force_offline

    force_offline()
    settings = load_recipe_settings(str(work / "recipe.json"))
    result = train_adapter(
        settings, model_dir, tokenizer, training_items(settings, tokenizer, data, "train"),
        training_items(settings, tokenizer, data, "validation"), work / "checkpoints", work / "adapter",
        work / "train.jsonl", resume=False,
    )  # fmt: skip
    losses = [round(h["loss"], 4) for h in result.log_history if "loss" in h]
    evals = [{k: round(v, 4) for k, v in h.items() if k.startswith("eval_") and isinstance(v, float)}
             for h in result.log_history if "eval_loss" in h]  # fmt: skip
    figures = {
        "shape": "tiny" if tiny else "llama-3.1-8b (random bf16 weights)",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "method": "dpo, QLoRA" if not tiny else "dpo, LoRA (cpu)",
        "batch": f"{settings.train.batch_size} pairs x {settings.train.gradient_accumulation} accumulation",
        "steps": result.global_step,
        "train_seconds": result.train_seconds,
        "seconds_per_step": round(result.train_seconds / max(result.global_step, 1), 2),
        "tokens_per_second": result.tokens_per_second,
        "peak_gpu_memory_gib": round((result.peak_gpu_memory_bytes or 0) / 2**30, 2),
        "model_made_seconds": round(made, 1),
        "losses": losses,
        "evals": evals,
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "trl")},
    }
    (out / "gpu_dpo.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
