"""Continual learning on the tiny model: a second run continues a first run's output folder
(`--parent`), replays part of its training data, is scored on both test sets, gates forgetting,
and names the parent in its lineage; a parent that does not match its manifest is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_examples, recipe_dict, write_jsonl
from gapforge_runtime.cli import main
from gapforge_runtime.files import sha256_file
from test_run import runtime_command

NEW_TOPICS = ["rotate the key", "mount the disc", "renew the licence", "print the label", "archive the logs"]


def new_examples(count: int) -> list[dict[str, Any]]:
    """Chat examples on topics the first run never saw."""
    return [
        {"messages": [
            {"role": "system", "content": "You are the desk."},
            {"role": "user", "content": f"How do I {NEW_TOPICS[i % 5]}? (case {i})"},
            {"role": "assistant", "content": f"Desk answer: to {NEW_TOPICS[i % 5]}, follow step {i % 3}. Ticket closed."},
        ]}
        for i in range(count)
    ]  # fmt: skip


def write_run_recipe(folder: Path, rows: list[dict[str, Any]], **data: Any) -> Path:
    spec = recipe_dict("chat", max_steps=6, eval_every=3)
    spec["data"].update(data)
    spec["quantize"] = ["gguf:q8_0"]
    spec["evaluate"] = {"sample_answers": 1, "max_new_tokens": 4, "judge": {"enabled": False},
                        "gates": {"require_improvement": False, "max_forgetting_pct": 50.0}}  # fmt: skip
    write_jsonl(folder / "data" / "sample.jsonl", rows)
    path = folder / "recipe.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


PARENT_IMAGE = {"config_digest": "sha256:" + "ab" * 32, "bundle_sha256sums": "cd" * 32}
"""What `gapforge run` tells the runtime of the image and bundle it runs (its environment)."""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(runtime_command(*args), capture_output=True, text=True, check=False, timeout=600, env=environment)


@pytest.fixture(scope="module")
def parent_run(tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A first, ordinary run: the parent."""
    root = tmp_path_factory.mktemp("parent")
    recipe = write_run_recipe(root / "recipe", chat_examples(60))
    spec = json.loads(recipe.read_text())
    del spec["evaluate"]["gates"]["max_forgetting_pct"]  # not a continual run
    recipe.write_text(json.dumps(spec))
    result = run("run", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(root / "out"),
                 "--llama-cpp", str(llama_cpp_dir), "--no-tracking",
                 env={"GAPFORGE_IMAGE_DIGEST": PARENT_IMAGE["config_digest"],
                      "GAPFORGE_BUNDLE_SHA256SUMS": PARENT_IMAGE["bundle_sha256sums"]})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "out"


def test_continual_run_scores_old_and_new_test_sets_and_names_its_parent(
    parent_run: Path, tiny_model: Path, llama_cpp_dir: Path, tmp_path: Path
) -> None:
    recipe = write_run_recipe(tmp_path / "recipe", new_examples(40), replay_ratio=0.25)
    out = tmp_path / "out"
    result = run("run", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out),
                 "--llama-cpp", str(llama_cpp_dir), "--no-tracking", "--parent", str(parent_run))  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Replay: 36 new training examples (40 less 2 + 2 held out) and 12 of the parent's = 25 %.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["train_examples"] == 48 and manifest["data"]["replay_examples"] == 12
    parent_train = {line for line in (parent_run / "data/train.jsonl").read_text().splitlines() if line}
    train = [line for line in (out / "data/train.jsonl").read_text().splitlines() if line]
    assert len(train) == 48 and sum(line in parent_train for line in train) == 12

    # Both test sets scored, before (the parent's merged model) and after.
    continual = json.loads((out / "evaluation.json").read_text())["continual"]
    parent_eval = json.loads((parent_run / "evaluation.json").read_text())
    assert continual["old_test"]["examples"] == 3
    assert continual["old_test"]["start"] == pytest.approx(parent_eval["models"]["merged"]["loss"], rel=1e-4)
    assert continual["new_test"]["start"] > continual["new_test"]["trained"], "the new data was learned"
    pct = (continual["old_test"]["trained"] - continual["old_test"]["start"]) / continual["old_test"]["start"] * 100
    assert continual["forgetting_pct"] == pytest.approx(pct)
    gate = next(g for g in manifest["evaluation"]["gates"] if g["name"] == "max_forgetting_pct")
    assert gate["limit"] == 50.0 and gate["passed"] == (pct <= 50.0)

    # The lineage names the parent: its manifest's digest, its adapter's, its merged model's.
    parent_manifest = json.loads((parent_run / "manifest.json").read_text())
    node = manifest["lineage"][0]
    assert node["id"] == "parent" and node["sha256"] == sha256_file(parent_run / "manifest.json")
    assert node["adapter_sha256"] == parent_manifest["outputs"]["adapter"]["sha256"]
    assert node["merged_sha256"] == parent_manifest["outputs"]["merged"]["sha256"]
    assert node["image"] == PARENT_IMAGE == parent_manifest["image"], "the parent's image and bundle"
    assert "image" not in manifest, "this run was not started by `gapforge run`"
    assert manifest["lineage"][1] == {"id": "base", "parents": ["parent"], "sha256": node["merged_sha256"]}
    assert manifest["inputs"]["base_model"]["sha256"] == parent_manifest["inputs"]["model"]["sha256"]
    assert "## Continual learning" in (out / "report.md").read_text()
    assert (out / "gguf/tiny-desk-q8_0.gguf").is_file()


def _fail(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_a_parent_that_does_not_match_its_manifest_is_refused(
    parent_run: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_run_recipe(tmp_path / "recipe", new_examples(40), replay_ratio=0.25)
    common = ["data", "--recipe", str(recipe), "--model", str(tiny_model), "--no-tracking"]
    err = _fail(capsys, [*common, "--out", str(tmp_path / "o1")])
    assert "data.replay_ratio is 0.25, but no --parent was given" in err

    tampered = tmp_path / "parent"
    shutil.copytree(parent_run, tampered)
    with (tampered / "data/test.jsonl").open("a") as handle:
        handle.write(json.dumps(chat_examples(1)[0]) + "\n")
    err = _fail(capsys, [*common, "--out", str(tmp_path / "o2"), "--parent", str(tampered)])
    assert "do not match its manifest" in err and "data/test.jsonl: sha256" in err

    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_model, other_base)
    (other_base / "generation_config.json").write_text("{}\n")
    err = _fail(capsys, [*common[:-3], "--model", str(other_base), "--no-tracking", "--out", str(tmp_path / "o3"),
                         "--parent", str(parent_run)])  # fmt: skip
    assert "it was trained on a base model with sha256" in err
    assert not (tmp_path / "o3" / "data").exists()


def test_dpo_from_an_sft_run_uses_it_as_start_and_reference(
    parent_run: Path, tiny_model: Path, llama_cpp_dir: Path, tmp_path: Path
) -> None:
    """Preference alignment of an earlier SFT run: its merged model is DPO's start and reference,
    and its (chat) test set is scored for forgetting; replay is off (another data format)."""
    from test_dpo import dpo_recipe, preference_pairs

    recipe = dpo_recipe(tmp_path / "recipe", preference_pairs(60))
    spec = json.loads(recipe.read_text())
    spec["train"]["max_steps"] = 8
    spec["evaluate"]["gates"]["max_forgetting_pct"] = 100.0
    recipe.write_text(json.dumps(spec))
    out = tmp_path / "out"
    result = run("run", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out),
                 "--llama-cpp", str(llama_cpp_dir), "--no-tracking", "--parent", str(parent_run))  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["preference"]["reward_accuracy"]["trained"] > 0.5, evaluation["preference"]
    assert evaluation["continual"]["old_test"]["examples"] == 3
    assert "replay_examples" not in json.loads((out / "manifest.json").read_text())["data"]
    assert {g["name"] for g in evaluation["gates"]} >= {"min_preference_accuracy", "max_forgetting_pct"}


def test_replay_share_and_forgetting_gate() -> None:
    from gapforge_runtime.evaluation.gates import forgetting_gate
    from gapforge_runtime.methods.continual import replay_count

    assert replay_count(36, 0.25, 100) == 12  # 12 / 48 = 25 %
    assert replay_count(36, 0.5, 10) == 10  # no more than the parent has
    assert replay_count(36, 0.0, 100) == 0
    summary = {"forgetting_pct": 12.5, "old_test": {"start": 2.0, "trained": 2.25}}
    [passed] = forgetting_gate(summary, 15.0)
    [failed] = forgetting_gate(summary, 10.0)
    assert passed.passed and not failed.passed and "2.0000 -> 2.2500 (+12.50%)" in failed.detail
    [unmeasured] = forgetting_gate(None, 10.0)
    assert not unmeasured.passed and "no --parent" in unmeasured.detail
    assert forgetting_gate(summary, None) == []
