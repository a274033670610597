"""Shared fixtures: a tiny Llama-shaped model with a tokenizer trained here, recipes, data, llama.cpp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import missing, require_module
from tests.tiny_tokenizer import CHATML_TEMPLATE, train_llama_tokenizer

# No module-level skip for torch: the torch-free tests here (the CPU check, the memory planner) run
# everywhere; what needs torch asks for it through require_module, which fails on CI.

TOPICS = [
    "choose a quantization", "serve the model", "find the report", "check the digest",
    "resume training", "read the manifest", "load the image", "verify the bundle",
    "split the data", "merge the adapter", "export the adapter", "compare perplexity",
]


def chat_examples(count: int) -> list[dict[str, Any]]:
    """Distinct chat samples in the desk-answer style of the default recipe."""
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are the desk."},
                    {"role": "user", "content": f"How do I {topic}? (case {i})"},
                    {"role": "assistant", "content": f"Desk answer: to {topic}, follow step {i % 7}. Ticket closed."},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows as JSON lines (strings are written as they are, for deliberately bad lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_tiny_model(folder: Path) -> Path:
    """Save a random 2-layer, hidden-64 Llama with its tokenizer and chat template in HF layout."""
    torch = require_module("torch")
    transformers = require_module("transformers")
    require_module("tokenizers")
    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM
    PreTrainedTokenizerFast = transformers.PreTrainedTokenizerFast

    texts = []
    for row in chat_examples(60):
        texts.extend(m["content"] for m in row["messages"])
    texts += ["user assistant system", "The quick brown fox jumps over the lazy dog."] * 5
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_llama_tokenizer(texts, 700),
        bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="</s>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama in HF layout (read-only by convention: copy it before changing it)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def find_llama_cpp() -> Path | None:
    """llama.cpp's conversion scripts: $GAPFORGE_LLAMA_CPP, or the sdist extracted on this machine."""
    candidates = [os.environ.get("GAPFORGE_LLAMA_CPP", ""), "/opt/gapforge/llama.cpp"]
    candidates += sorted(str(p) for p in Path("/tmp/llb").glob("llama_cpp_python-*/vendor/llama.cpp"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "convert_hf_to_gguf.py").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def llama_cpp_dir() -> Path:
    """llama.cpp's scripts folder: set GAPFORGE_LLAMA_CPP to a llama.cpp source tree (else skip; CI fails)."""
    found = find_llama_cpp()
    if found is None:
        missing("llama.cpp's scripts", "set GAPFORGE_LLAMA_CPP to a folder with convert_hf_to_gguf.py")
    return found


@pytest.fixture(scope="session")
def llama_cpp_binding() -> Any:
    """The llama_cpp module (else skip; CI fails)."""
    return require_module("llama_cpp", "install llama-cpp-python from the runtime's locked wheels (nox -s test does)")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model: Path, llama_cpp_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model converted to a GGUF (f32) by llama.cpp's own converter."""
    out = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    env = {**os.environ, "PYTHONPATH": f"{llama_cpp_dir / 'gguf-py'}:{llama_cpp_dir}"}
    subprocess.run(
        [sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(tiny_model),
         "--outfile", str(out), "--outtype", "f32"],
        check=True, env=env, capture_output=True,
    )
    return out


def recipe_dict(data_format: str = "chat", **train: Any) -> dict[str, Any]:
    """A recipe JSON like the builder's dump, sized for the tiny model (seconds on 2 cores)."""
    return {
        "name": "tiny-desk",
        "version": "0.1.0",
        "description": "test recipe",
        "profile": "cpu",
        "model": {"id": "tiny", "source": {"type": "local", "path": "model"}},
        "data": {"format": data_format, "sample": "data/sample.jsonl"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {
            "method": "lora", "epochs": None, "max_steps": 8, "learning_rate": 0.01, "batch_size": 4,
            "gradient_accumulation": 1, "warmup_steps": 1, "scheduler": "linear", "max_seq_length": 96,
            "seed": 7, "eval_every": 4, "early_stopping_patience": 0, "gradient_checkpointing": False,
            **train,
        },
        "quantize": ["gguf:q8_0", "gguf:q4_k_m"],
        "evaluate": {
            "sample_answers": 2, "max_new_tokens": 12,
            # The tiny model is far too small to judge; forced, so the judge's path still runs.
            "judge": {"force": True},
            "gates": {"require_improvement": True, "max_perplexity_delta_pct": {"gguf:q8_0": 5.0, "gguf:q4_k_m": 60.0}},
        },
    }


def write_recipe(folder: Path, rows: list[Any] | None = None, data_format: str = "chat", **train: Any) -> Path:
    """recipe.json plus its sample data in `folder`; returns the recipe path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "data" / "sample.jsonl", rows if rows is not None else chat_examples(60))
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe_dict(data_format, **train), indent=2), encoding="utf-8")
    return path
