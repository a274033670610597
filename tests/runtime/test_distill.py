"""`train.method: distill` on tiny models: a teacher answers the training prompts, its answers are
filtered and recorded (digests in the lineage), the student trains on them; GKD across vocabularies
is refused with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_examples, recipe_dict, write_jsonl
from gapforge_runtime.cli import main
from gapforge_runtime.files import sha256_file
from gapforge_runtime.methods.distill import drop_reason, most_repeated_ngram, with_answer
from gapforge_runtime.recipe_schema import DistillSpec


def distill_recipe(folder: Path, teacher: Path, **distill: Any) -> Path:
    recipe = recipe_dict(max_steps=2, eval_every=2)
    recipe["train"]["method"] = "distill"
    recipe["train"]["distill"] = {"teacher": str(teacher), "max_new_tokens": 8, "batch_size": 4, **distill}
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "data" / "sample.jsonl", chat_examples(24))
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe, indent=2), encoding="utf-8")
    return path


def test_answers_are_filtered_empty_truncated_repeated() -> None:
    spec = DistillSpec(teacher="t")
    assert drop_reason("   ", False, spec) == "empty"
    assert drop_reason("a fine answer", True, spec) == "truncated"
    assert drop_reason("a fine answer", True, DistillSpec(teacher="t", keep_truncated=True)) is None
    loop = "go to the desk " * 4
    assert most_repeated_ngram(loop) == 4 and drop_reason(loop, False, spec) == "repeated"
    assert drop_reason("go to the desk and then go to the desk", False, spec) is None
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "old"}]}
    assert with_answer("chat", record, "new")["messages"][-1] == {"role": "assistant", "content": "new"}
    assert record["messages"][-1]["content"] == "old", "the split's record is not changed"
    assert with_answer("alpaca", {"instruction": "q", "output": "old"}, "new")["output"] == "new"


def test_a_tiny_teacher_distils_into_the_student(tmp_path: Path, tiny_model: Path) -> None:
    recipe = distill_recipe(tmp_path / "recipe", tiny_model, keep_truncated=True, max_ngram_repeats=2)
    out = tmp_path / "out"
    args = ["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]
    assert main(args) == 0
    summary = json.loads((out / "distill" / "distill.json").read_text())
    train_rows = (out / "data" / "train.jsonl").read_text().splitlines()
    kept = (out / "distill" / "teacher_train.jsonl").read_text().splitlines()
    assert summary["prompts"] == len(train_rows) and summary["kept"] == len(kept) > 0
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["prompts"]
    assert sorted(d["reason"] for d in summary["dropped_lines"]) == sorted(
        r for r, n in summary["dropped"].items() for _ in range(n)
    )
    assert summary["data"]["sha256"] == sha256_file(out / "distill" / "teacher_train.jsonl")
    # The student learnt the teacher's answers, not the data's references.
    references = {json.loads(r)["messages"][-1]["content"] for r in train_rows}
    answers = [json.loads(r)["messages"][-1]["content"] for r in kept]
    assert not set(answers) & references
    record = json.loads((out / "steps" / "train.json").read_text())
    assert record["inputs"]["teacher"] == summary["teacher"]["sha256"]
    assert record["details"]["distill"]["kept"] == len(kept)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    lineage = {n["id"]: n for n in manifest["lineage"]}
    assert lineage["teacher"]["sha256"] == summary["teacher"]["sha256"]
    assert lineage["teacher_data"]["sha256"] == summary["data"]["sha256"]
    assert "teacher_data" in lineage["adapter"]["parents"]


def test_default_filters_drop_a_random_teachers_cut_off_answers(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A random tiny teacher never ends an answer within 8 tokens: every answer is cut off, and the
    # run says so instead of training on nothing.
    recipe = distill_recipe(tmp_path / "recipe", tiny_model)
    out = tmp_path / "out"
    assert main(["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert "gave no usable answer" in err and "keep_truncated" in err
    summary = json.loads((out / "distill" / "distill.json").read_text())
    assert summary["kept"] == 0 and summary["dropped"]["truncated"] + summary["dropped"]["repeated"] == summary["prompts"]


def test_gkd_across_vocabularies_is_refused_naming_both_models(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model, teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    tokenizer.add_tokens(["<teacher-only>"])
    tokenizer.save_pretrained(teacher)
    recipe = distill_recipe(tmp_path / "recipe", teacher, mode="gkd")
    args = ["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--no-tracking"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "do not share a vocabulary" in err and str(teacher) in err and str(tiny_model) in err
    assert "mode: sequence" in err
    assert not (tmp_path / "out" / "adapter").exists()


def test_missing_teacher_is_a_clear_error(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = distill_recipe(tmp_path / "recipe", tmp_path / "nowhere")
    args = ["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--no-tracking"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.distill.teacher" in err and "nowhere" in err and str(recipe) in err


def test_a_gguf_teacher_answers_through_llama_cpp(tmp_path: Path, tiny_model: Path, tiny_gguf: Path, llama_cpp_binding: Any) -> None:
    recipe = distill_recipe(tmp_path / "recipe", tiny_gguf, keep_truncated=True, max_ngram_repeats=100)
    out = tmp_path / "out"
    assert main(["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]) == 0
    summary = json.loads((out / "distill" / "distill.json").read_text())
    assert summary["teacher"]["kind"] == "gguf" and summary["teacher"]["sha256"] == sha256_file(tiny_gguf)
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["prompts"] and summary["kept"] > 0


def test_gkd_with_a_shared_vocabulary_trains_the_student_on_the_teachers_logits(tmp_path: Path, tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model, teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    model.save_pretrained(teacher)
    recipe = distill_recipe(tmp_path / "recipe", teacher, mode="gkd")
    out = tmp_path / "out"
    args = ["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]
    assert main(args) == 0
    summary = json.loads((out / "distill" / "distill.json").read_text())
    assert summary["mode"] == "gkd" and summary["data"] is None
    record = json.loads((out / "steps" / "train.json").read_text())
    assert record["details"]["global_step"] == 2 and record["inputs"]["teacher"] == summary["teacher"]["sha256"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    history = json.loads((out / "train_history.json").read_text())
    assert any("loss" in h for h in history), "GKD's divergence was logged at each step"
    lineage = {n["id"]: n for n in json.loads((out / "manifest.json").read_text())["lineage"]}
    assert "teacher" in lineage["adapter"]["parents"] and "teacher_data" not in lineage


def test_the_teacher_is_a_models_entry_shipped_in_the_image(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "models"
    shutil.copytree(tiny_model, shipped / "teacher")
    monkeypatch.setenv("GAPFORGE_MODELS_DIR", str(shipped))
    recipe = distill_recipe(tmp_path / "recipe", Path("unused"), keep_truncated=True, max_ngram_repeats=100)
    raw = json.loads(recipe.read_text())
    raw["train"]["distill"]["teacher"] = "teacher"
    raw["models"] = {"teacher": {"id": "tiny-teacher", "source": {"type": "local", "path": "model"}}}
    recipe.write_text(json.dumps(raw))
    out = tmp_path / "out"
    assert main(["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]) == 0
    summary = json.loads((out / "distill" / "distill.json").read_text())
    assert summary["teacher"]["path"] == str(shipped / "teacher") and summary["kept"] > 0
