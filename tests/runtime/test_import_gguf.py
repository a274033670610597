"""import-gguf: a GGUF written by llama.cpp's converter round-trips into a deterministic HF folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gapforge_runtime.cli import main


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_import_gguf_round_trips_and_is_deterministic(tiny_model: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["import-gguf", "--gguf", str(tiny_gguf), "--out", str(first)]) == 0
    assert main(["import-gguf", "--gguf", str(tiny_gguf), "--out", str(second)]) == 0
    assert _digests(first) == _digests(second)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(_digests(first))
    assert not list(tmp_path.glob(".*tmp*")), "temp folders must be renamed or removed"

    original = load_file(tiny_model / "model.safetensors")
    imported = load_file(first / "model.safetensors")
    for name, tensor in original.items():
        # f32 GGUF: values come back exactly (llama.cpp permutes q/k for its rope; transformers undoes it).
        assert torch.equal(imported[name], tensor), name

    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(first, use_safetensors=True, trust_remote_code=False)
    assert model.config.num_hidden_layers == 2


def test_import_gguf_refuses_a_non_gguf_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a gguf")
    assert main(["import-gguf", "--gguf", str(bogus), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a GGUF file" in err and "Traceback" not in err


def test_import_gguf_refuses_a_non_empty_out(tiny_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["import-gguf", "--gguf", str(tiny_gguf), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_a_quantized_gguf_is_stored_in_float16(tiny_model: Path, llama_cpp_dir: Path, tmp_path: Path) -> None:
    """Q8_0 matrices come back as float16 (half of float32), within Q8_0's own error of the original."""
    import json
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    q8 = tmp_path / "tiny-q8_0.gguf"
    env = {**os.environ, "PYTHONPATH": f"{llama_cpp_dir / 'gguf-py'}:{llama_cpp_dir}"}
    subprocess.run([sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(tiny_model),
                    "--outfile", str(q8), "--outtype", "q8_0"], check=True, env=env, capture_output=True)  # fmt: skip
    out = tmp_path / "imported"
    assert main(["import-gguf", "--gguf", str(q8), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    imported = load_file(out / "model.safetensors")
    original = load_file(tiny_model / "model.safetensors")
    for name, tensor in original.items():
        got = imported[name]
        assert got.dtype == torch.float16, name
        if tensor.dim() > 1:  # quantized in the GGUF: Q8_0 keeps each block to ~1/127 of its largest value
            assert (got.float() - tensor).abs().max() <= tensor.abs().max() / 100, name
    forced = tmp_path / "forced"
    assert main(["import-gguf", "--gguf", str(q8), "--out", str(forced), "--dtype", "float32"]) == 0
    assert load_file(forced / "model.safetensors")["model.embed_tokens.weight"].dtype == torch.float32
