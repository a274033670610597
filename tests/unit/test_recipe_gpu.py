"""Recipe fields of the GPU path: defaults keep older recipes valid; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gapforge.errors import RecipeError
from gapforge.recipe import load_recipe, recipe_json

REPO = Path(__file__).resolve().parents[2]
CPU_RECIPE = REPO / "recipes/smollm2/lora-q8-q4.yaml"
GPU_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if "smollm2" not in p.parts)


def _write(tmp_path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "sample.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cuda() -> dict:  # type: ignore[type-arg]
    data = yaml.safe_load((REPO / "recipes/llama3.1-8b/qlora-gguf-gptq.yaml").read_text())
    data["data"] = {"format": "completion", "sample": "data/sample.jsonl"}
    return data  # type: ignore[no-any-return]


def test_older_recipes_get_the_defaults() -> None:
    normalized = recipe_json(load_recipe(CPU_RECIPE))
    assert normalized["train"]["nproc"] == 1 and normalized["train"]["distributed"] == "auto"
    assert normalized["gptq"] == {"group_size": 128, "desc_act": False, "calibration_samples": 128, "damp_percent": 0.05}


def test_enterprise_recipes_cover_the_cases_users_name() -> None:
    loaded = {p.parent.name: load_recipe(p).recipe for p in GPU_RECIPES}
    assert set(loaded) >= {"llama3.1-8b", "qwen2.5-7b", "mistral-7b-v0.3", "llama3.1-70b"}
    for recipe in loaded.values():
        assert recipe.profile == "cuda"
        assert recipe.model.source.type == "hf" and len(recipe.model.source.revision) == 40  # type: ignore[union-attr]
    assert loaded["llama3.1-8b"].train.method == "qlora"
    assert set(loaded["llama3.1-8b"].quantize) == {"gguf:q4_k_m", "gguf:q8_0", "gptq:int4"}
    assert loaded["qwen2.5-7b"].train.method == "lora"
    assert loaded["mistral-7b-v0.3"].quantize == ["gptq:int4"]
    big = loaded["llama3.1-70b"].train
    assert big.method == "qlora" and big.nproc >= 2 and big.distributed == "fsdp"


def test_gpu_fields_are_checked_with_their_paths(tmp_path: Path) -> None:
    data = _cuda()
    data["gptq"]["group_size"] = 100
    data["gptq"]["calibration_samples"] = 0
    data["train"]["nproc"] = 0
    data["train"]["distributed"] = "zero3"
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, data))
    text = str(caught.value)
    for path in ("gptq.group_size", "gptq.calibration_samples", "train.nproc", "train.distributed"):
        assert path in text, path


def test_fsdp_on_cpu_and_gptq_settings_without_the_target_are_refused(tmp_path: Path) -> None:
    data = _cuda()
    data["profile"] = "cpu"
    data["train"]["method"] = "lora"
    data["train"]["distributed"] = "fsdp"
    data["quantize"] = ["gguf:q8_0"]
    data["evaluate"]["gates"]["max_perplexity_delta_pct"] = {}
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, data))
    text = str(caught.value)
    assert "train.distributed: FSDP is for sharding" in text
    assert "gptq: GPTQ settings for a recipe that does not build gptq:int4" in text
