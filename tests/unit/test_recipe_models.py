"""`models:` (more models shipped beside the base: a judge, a teacher): the recipe checks, the locks
(a local folder of GGUF files is a model here, never for the base) and the image layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gapforge.errors import ModelSourceError, RecipeError
from gapforge.image import MODELS_DIR, plan_model
from gapforge.lock.model import lock_local
from gapforge.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, models: dict, judge: str = "judge") -> Path:
    data = yaml.safe_load((REPO / "recipes/smollm2/lora-q8-q4.yaml").read_text())
    data["data"] = {"format": "completion", "sample": "data/sample.jsonl"}
    data["models"] = models
    data["evaluate"]["judge"] = {"model": judge}
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data/sample.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _gguf_folder(folder: Path, count: int = 1) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"judge-{i}.gguf").write_bytes(b"GGUF" + bytes([i]) * 64)
    return folder


def test_a_judge_in_models_validates_and_locks_as_its_gguf(tmp_path: Path) -> None:
    _gguf_folder(tmp_path / "judge")
    loaded = load_recipe(_recipe(tmp_path, {"judge": {"id": "judge-7b", "source": {"type": "local", "path": "judge"}}}))
    assert [name for name, _ in loaded.all_models()] == ["model", "judge"]
    spec = loaded.recipe.models["judge"]
    lock = lock_local(spec, tmp_path / "locks", loaded.local_path_of(spec) or Path(), allow_gguf=True)
    assert [f.path for f in lock.files] == ["judge-0.gguf"]
    with pytest.raises(ModelSourceError, match="safetensors"):  # never a GGUF-only folder as the base
        lock_local(spec, tmp_path / "locks2", loaded.local_path_of(spec) or Path())


@pytest.mark.parametrize(
    ("models", "judge", "needle"),
    [
        ({}, "judge", "names no entry of models: (none yet)"),
        ({"judge": {"id": "j", "source": {"type": "hf", "repo": "org/judge", "revision": "a" * 40}}}, "judge",
         "must be a GGUF"),
        ({"judge": {"id": "smollm2-135m-instruct", "source": {"type": "local", "path": "judge"}}}, "judge",
         "already used by model"),
        ({"judge": {"id": "j", "source": {"type": "local", "path": "../elsewhere"}}}, "judge",
         "must stay inside the recipe's folder"),
    ],
)
def test_bad_models_entries_are_named(tmp_path: Path, models: dict, judge: str, needle: str) -> None:
    _gguf_folder(tmp_path / "judge")
    with pytest.raises(RecipeError) as caught:
        load_recipe(_recipe(tmp_path, models, judge))
    assert needle in " ".join(str(caught.value).split())


def test_a_local_judge_needs_exactly_one_gguf(tmp_path: Path) -> None:
    _gguf_folder(tmp_path / "judge", count=2)
    with pytest.raises(RecipeError, match=r"exactly one \.gguf"):
        load_recipe(_recipe(tmp_path, {"judge": {"id": "j", "source": {"type": "local", "path": "judge"}}}))


def test_an_extra_model_gets_a_layer_of_its_own_under_models(tmp_path: Path) -> None:
    from gapforge.fetch.model import ModelFile

    blob = tmp_path / "blob"
    blob.write_bytes(b"GGUF")
    files = [ModelFile("judge.gguf", "ab" * 32, 4, blob)]
    base, extra = plan_model("base", files), plan_model("judge-7b", files, "judge")
    assert base.name == "model" and extra.name == "model-judge" and base.key != extra.key
    paths = [e.path for e in extra.entries(tmp_path)]
    assert f"{MODELS_DIR}/judge/judge.gguf" in paths


def _distill_recipe(tmp_path: Path, models: dict, teacher: str, mode: str = "sequence") -> Path:
    path = _recipe(tmp_path, models, judge="base")
    data = yaml.safe_load(path.read_text())
    data["data"] = {"format": "chat", "sample": "data/sample.jsonl"}
    data["train"]["method"] = "distill"
    data["train"]["distill"] = {"teacher": teacher, "mode": mode}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_distill_teacher_is_a_models_entry(tmp_path: Path) -> None:
    hf = {"teacher": {"id": "t", "source": {"type": "hf", "repo": "org/teacher", "revision": "a" * 40}}}
    loaded = load_recipe(_distill_recipe(tmp_path, hf, "teacher", mode="gkd"))
    assert loaded.recipe.train.distill is not None and loaded.recipe.train.distill.teacher == "teacher"
    with pytest.raises(RecipeError) as caught:
        load_recipe(_distill_recipe(tmp_path, {}, "teacher"))
    assert "train.distill.teacher: names no entry of models: (none yet)" in " ".join(str(caught.value).split())
    _gguf_folder(tmp_path / "judge")
    local_gguf = {"teacher": {"id": "t", "source": {"type": "local", "path": "judge"}}}
    assert load_recipe(_distill_recipe(tmp_path, local_gguf, "teacher")).recipe.train.method == "distill"
    with pytest.raises(RecipeError, match="not a GGUF"):
        load_recipe(_distill_recipe(tmp_path, local_gguf, "teacher", mode="gkd"))
