"""Without a GPU, a QLoRA, GPTQ or bitsandbytes step stops at once (exit 2), before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_recipe
from gapforge_runtime.cli import main

from tests.requirements import require_module

torch = require_module("torch")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


@pytest.mark.parametrize(
    ("command", "method", "targets", "named"),
    [
        ("run", "qlora", ["gguf:q8_0"], "train.method 'qlora'"),
        ("train", "qlora", ["gguf:q8_0"], "train.method 'qlora'"),
        ("run", "lora", ["gguf:q8_0", "gptq:int4"], "quantize target gptq:int4"),
        ("quantize", "lora", ["bnb:nf4"], "quantize target bnb:nf4"),
        ("quantize", "lora", ["bnb:int8"], "quantize target bnb:int8"),
    ],
)
def test_gpu_step_without_a_gpu_fails_before_any_work(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str], command: str, method: str, targets: list[str], named: str
) -> None:
    recipe = write_recipe(tmp_path / "recipe", method=method)
    data = json.loads(recipe.read_text())
    data["profile"] = "cuda"
    data["quantize"] = targets
    data["evaluate"]["gates"]["max_perplexity_delta_pct"] = {}
    recipe.write_text(json.dumps(data))
    out = tmp_path / "out"
    status = main([command, "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert "needs a CUDA GPU" in err and named in err and "--gpus" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing was claimed, split or loaded


def test_gguf_only_steps_are_not_refused(tmp_path: Path, tiny_model: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe")
    assert main(["data", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(tmp_path / "out")]) == 0
