"""The recipe's `serve:` section: absent by default, the engine and artefacts checked and named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gapforge.errors import RecipeError
from gapforge.recipe import load_recipe, recipe_json

REPO = Path(__file__).resolve().parents[2]
CPU_RECIPE = REPO / "recipes/smollm2/lora-q8-q4.yaml"


def _write(tmp_path: Path, serve: Any) -> Path:
    data = yaml.safe_load(CPU_RECIPE.read_text())
    data["data"]["sample"] = "data/sample.jsonl"
    data["serve"] = serve  # replaces the default recipe's own serve: section
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "sample.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _error(tmp_path: Path, serve: Any) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, serve))
    return str(caught.value)


def test_no_serve_section_means_no_serving_image() -> None:
    assert load_recipe(REPO / "recipes/smollm2/dpo.yaml").recipe.serve is None
    assert load_recipe(CPU_RECIPE).recipe.serve is not None  # the default recipe serves


def test_serve_section_gets_its_defaults(tmp_path: Path) -> None:
    loaded = load_recipe(_write(tmp_path, {"artefacts": ["gguf:q4_k_m"]}))
    assert recipe_json(loaded)["serve"] == {
        "engine": "llama.cpp",
        "artefacts": ["gguf:q4_k_m"],
        "port": 8080,
    }


def test_vllm_is_refused_as_not_built_yet(tmp_path: Path) -> None:
    text = _error(tmp_path, {"engine": "vllm", "artefacts": ["gguf:q8_0"]})
    assert "serve.engine" in text and "not built yet" in text and "llama.cpp" in text


def test_unknown_engine_is_named(tmp_path: Path) -> None:
    text = _error(tmp_path, {"engine": "tgi", "artefacts": ["gguf:q8_0"]})
    assert "serve.engine" in text and "tgi" in text


def test_artefact_not_quantized_is_refused(tmp_path: Path) -> None:
    # The recipe quantizes to gguf:q8_0 and gguf:q4_k_m only.
    text = _error(tmp_path, {"artefacts": ["gguf:q8_0", "gguf:f16"]})
    assert "serve: artefacts gguf:f16: not among this recipe's quantize targets" in text


def test_artefact_llama_cpp_cannot_load_is_refused(tmp_path: Path) -> None:
    text = _error(tmp_path, {"artefacts": ["gptq:int4"]})
    assert "serve.artefacts" in text and "gptq:int4" in text


def test_privileged_port_and_duplicates_are_refused(tmp_path: Path) -> None:
    assert "serve.port" in _error(tmp_path, {"artefacts": ["gguf:q8_0"], "port": 80})
    assert "listed twice" in _error(tmp_path, {"artefacts": ["gguf:q8_0", "gguf:q8_0"]})
