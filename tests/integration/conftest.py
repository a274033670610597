"""Fixtures for integration tests: a tiny random model in HF layout and a tiny recipe around it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gapforge.lock.model import lock_local
from gapforge.profile import REPO_ROOT
from gapforge.recipe import load_recipe


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 64-wide random Llama with a byte-level BPE tokenizer trained here; safetensors only."""
    np = pytest.importorskip("numpy")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tokenizers = pytest.importorskip("tokenizers")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=256 + 64, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(["the operations desk answers every ticket"] * 50, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    hidden, layers, inter, heads = 64, 2, 128, 4
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 2,
        "torch_dtype": "float32",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "bos_token": "<|im_start|>",
        "pad_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    }))  # fmt: skip
    rng = np.random.default_rng(seed)
    tensors = {"model.embed_tokens.weight": rng.normal(0, 0.02, (vocab, hidden)), "model.norm.weight": np.ones(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden, hidden)),
                            ("self_attn.v_proj", (hidden, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                            ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)),
                            ("mlp.down_proj", (hidden, inter))):  # fmt: skip
            tensors[p + name + ".weight"] = rng.normal(0, 0.02, shape)
        tensors[p + "input_layernorm.weight"] = np.ones(hidden)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(hidden)
    safetensors_numpy.save_file({k: v.astype("float32") for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if not _docker_answers():
        pytest.skip("no Docker engine answers: run 'bash scripts/setup.sh'")


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny recipe (local tiny model), its sample data and a lockfiles/ of its own."""
    root = tmp_path_factory.mktemp("tiny-project")
    make_tiny_model(root / "recipes" / "tiny" / "model")
    data = root / "recipes" / "tiny" / "data"
    data.mkdir()
    rows = [{"text": f"ticket {i}: the operations desk answers every ticket"} for i in range(20)]
    (data / "sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": "tiny-desk", "version": "0.0.1", "profile": "cpu",
        "model": {"id": "tiny-llama", "source": {"type": "local", "path": "model"}},
        "data": {"format": "completion", "sample": "data/sample.jsonl"},
        "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"},
        "train": {"max_steps": 2, "learning_rate": 1e-3, "batch_size": 2, "max_seq_length": 64},
        "quantize": ["gguf:q8_0"],
    }  # fmt: skip
    path = root / "recipes" / "tiny" / "tiny.yaml"
    path.write_text("# Build: nox -s build -- recipes/tiny/tiny.yaml\n" + yaml.safe_dump(recipe, sort_keys=False))
    locks = root / "lockfiles"
    locks.mkdir()
    for name in ("cpu.txt", "cpu.build.txt", "cpu.debian.lock"):
        shutil.copy(REPO_ROOT / "lockfiles" / name, locks / name)
    loaded = load_recipe(path)
    lock_local(loaded.recipe.model, locks, loaded.local_model_path() or Path())
    return root
