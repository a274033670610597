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
