"""DPO on the tiny model: preference data read with every bad line named, and a `run` (the CLI's
own entry, network cut) that raises preference accuracy on held-out pairs over the starting model,
then merges, quantizes and reports as any run does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import TOPICS, recipe_dict, write_jsonl
from gapforge_runtime.data.reading import read_examples
from gapforge_runtime.errors import RuntimeFailure
from test_run import runtime_command

from tests.requirements import require_module

# The random starting model gives the rejected ending the higher log-probability (by about 6
# nats) on every pair: DPO has to turn that round.
CHOSEN_END = "The lazy dog."
REJECTED_END = "Ticket closed."


def preference_pairs(count: int, form: str = "conversational") -> list[dict[str, Any]]:
    """Pairs whose answers differ only in their ending: one fixed ending chosen, another rejected."""
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        question = f"How do I {topic}? (case {i})"
        body = f"Desk answer: to {topic}, follow step {i % 7}."
        chosen, rejected = f"{body} {CHOSEN_END}", f"{body} {REJECTED_END}"
        if form == "string":
            rows.append({"prompt": question + "\n", "chosen": chosen, "rejected": rejected})
        else:
            rows.append({
                "prompt": [{"role": "system", "content": "You are the desk."}, {"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            })  # fmt: skip
    return rows


def test_both_forms_read_in_canonical_shape(tmp_path: Path) -> None:
    conversational = read_examples(write_jsonl(tmp_path / "c.jsonl", preference_pairs(3)), "preference")
    assert [e.line for e in conversational] == [1, 2, 3]
    assert conversational[0].record["chosen"] == [{"role": "assistant", "content": f"Desk answer: to choose a quantization, follow step 0. {CHOSEN_END}"}]
    plain = read_examples(write_jsonl(tmp_path / "s.jsonl", [{**preference_pairs(1, "string")[0], "score": 3}]), "preference")
    assert set(plain[0].record) == {"prompt", "chosen", "rejected"}, "extra fields are dropped"


def test_every_bad_pair_is_listed_with_its_line(tmp_path: Path) -> None:
    good = preference_pairs(2)
    rows: list[Any] = [
        good[0],
        {"prompt": "Q", "chosen": "A"},                                               # 2: no rejected
        {"prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"},  # 3: strings with messages
        {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "user", "content": "A"}],
         "rejected": [{"role": "assistant", "content": ""}]},                          # 4: bad role, empty content
        {"prompt": "Q", "chosen": "same", "rejected": "same"},                           # 5: no preference
        "{oops",                                                                         # 6
        {"prompt": 7, "chosen": "A", "rejected": "B"},                                   # 7
        good[1],
    ]  # fmt: skip
    with pytest.raises(RuntimeFailure) as caught:
        read_examples(write_jsonl(tmp_path / "bad.jsonl", rows), "preference")
    text = str(caught.value) + "\n".join(caught.value.details)
    for expected in (
        "line 2: missing field 'rejected'",
        "line 3: field 'chosen' must be a list of assistant messages",
        "line 3: field 'rejected' must be a list of assistant messages",
        "line 4: chosen[0] has role 'user' (use one of assistant)",
        "line 4: rejected[0] has empty content",
        "line 5: 'chosen' and 'rejected' are the same",
        "line 6: not valid JSON",
        "line 7: field 'prompt' must be a string or a list of messages",
        "'preference' data",
    ):
        assert expected in text, (expected, text)
    assert "line 1:" not in text and "line 8:" not in text


def test_one_form_per_file(tmp_path: Path) -> None:
    rows = [*preference_pairs(3), preference_pairs(1, "string")[0]]
    with pytest.raises(RuntimeFailure) as caught:
        read_examples(write_jsonl(tmp_path / "mixed.jsonl", rows), "preference")
    assert caught.value.details == [
        "line 4: a string pair among conversational ones: write every pair in one form (all strings, or all message lists)"
    ]


def dpo_recipe(folder: Path, rows: list[dict[str, Any]], **dpo: Any) -> Path:
    """A tiny DPO recipe: LoRA on CPU, a q8_0 GGUF, no judge (seconds on 2 cores)."""
    spec = recipe_dict("preference", method="dpo", max_steps=16, learning_rate=0.01, batch_size=4,
                       eval_every=6, dpo={"beta": 0.5, **dpo})  # fmt: skip
    spec["quantize"] = ["gguf:q8_0"]
    spec["evaluate"] = {
        "sample_answers": 2, "max_new_tokens": 8, "judge": {"enabled": False},
        "gates": {"require_improvement": False, "max_perplexity_delta_pct": {"gguf:q8_0": 5.0},
                  "min_preference_accuracy": 0.8},
    }  # fmt: skip
    write_jsonl(folder / "data" / "sample.jsonl", rows)
    path = folder / "recipe.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


@pytest.mark.parametrize("form", ["conversational", "string"])
def test_dpo_run_raises_preference_accuracy_over_the_starting_model(
    form: str, tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any, tmp_path: Path
) -> None:
    recipe = dpo_recipe(tmp_path / "recipe", preference_pairs(120, form))
    out = tmp_path / "out"
    args = ["run", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--llama-cpp", str(llama_cpp_dir)]
    result = subprocess.run(runtime_command(*args), capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    evaluation = json.loads((out / "evaluation.json").read_text())
    preference = evaluation["preference"]
    assert preference["pairs"] == 6  # 5 % of 120 held out
    # The acceptance criterion: the trained model prefers chosen over rejected more than the start.
    assert preference["reward_accuracy"]["start"] == 0.5
    assert preference["reward_accuracy"]["trained"] >= 0.8, preference
    assert preference["reward_margin"]["trained"] > 0, preference
    assert preference["logp_margin"]["trained"] > preference["logp_margin"]["start"], preference
    assert preference["logp_accuracy"]["start"] == 0.0, "the data set is built for the start to be wrong"
    assert preference["logp_accuracy"]["trained"] >= 0.8, preference
    gate = next(g for g in evaluation["gates"] if g["name"] == "min_preference_accuracy")
    assert gate["passed"] and gate["value"] == preference["reward_accuracy"]["trained"]
    # The rest of the pipeline did not care which method trained the adapter.
    for name in ("adapter/adapter_model.safetensors", "merged/model.safetensors", "gguf/tiny-desk-q8_0.gguf",
                 "gguf/tiny-desk-adapter-f16.gguf", "manifest.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapter" / "ref").exists(), "DPO's frozen reference adapter is not shipped"
    assert "gguf:q8_0" in evaluation["models"]
    report = (out / "report.md").read_text()
    assert "## Preference accuracy" in report and "min_preference_accuracy" in report
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("rewards/accuracies" in entry for entry in log), "TRL's DPO metrics reach the training log"


def test_shipped_pairs_read_and_method_needs_its_format(tmp_path: Path) -> None:
    from gapforge_runtime.config import load_recipe_settings

    shipped = Path(__file__).resolve().parents[2] / "recipes" / "smollm2" / "data" / "prefs.jsonl"
    assert len(read_examples(shipped, "preference")) == 64
    path = dpo_recipe(tmp_path, preference_pairs(3))
    spec = json.loads(path.read_text())
    spec["data"]["format"] = "chat"
    path.write_text(json.dumps(spec))
    with pytest.raises(RuntimeFailure) as caught:
        load_recipe_settings(str(path))
    assert "train.method 'dpo' with data.format 'chat': DPO trains on preference pairs" in str(caught.value)


def test_dpo_training_resumes_from_a_checkpoint_to_the_same_adapter(tiny_model: Path, tmp_path: Path) -> None:
    """DPO's checkpoints (TRL keeps a frozen 'ref' copy of the adapter beside it) resume like SFT's."""
    import shutil
    import sys

    torch = require_module("torch")
    load_file = require_module("safetensors.torch").load_file

    recipe = dpo_recipe(tmp_path / "recipe", preference_pairs(40))
    spec = json.loads(recipe.read_text())
    spec["train"].update(max_steps=8, eval_every=4)
    recipe.write_text(json.dumps(spec))

    def train(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gapforge_runtime.cli", "train", "--recipe", str(recipe), "--model",
                   str(tiny_model), "--out", str(out), "--no-tracking", *extra]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)

    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = tmp_path / "cut"
    assert train(cut).returncode == 0
    # As if killed after the checkpoint of step 4: no adapter, no train record, no later checkpoint.
    shutil.rmtree(cut / "adapter")
    (cut / "steps" / "train.json").unlink()
    shutil.rmtree(cut / "checkpoints" / "checkpoint-8")
    resumed = train(cut, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 4; finished at step 8" in resumed.stdout
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(cut / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(".ref." not in k for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_memory_plan_of_a_qlora_dpo_run(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DPO with dpo.qlora is planned as QLoRA (a 4-bit base), with chosen and rejected in each batch."""
    from gapforge_runtime import memplan
    from gapforge_runtime.config import load_recipe_settings

    monkeypatch.setattr(memplan, "gpu_memory_bytes", lambda: 24 * memplan.GiB)  # no GPU needed to plan
    recipe = dpo_recipe(tmp_path / "dpo", preference_pairs(3), qlora=True)
    spec = json.loads(recipe.read_text())
    spec["profile"] = "cuda"
    recipe.write_text(json.dumps(spec))
    dpo = memplan.plan_for_run(tiny_model, load_recipe_settings(str(recipe)))
    sft_path = tmp_path / "sft.json"
    sft_path.write_text(json.dumps(recipe_dict("chat", method="qlora", batch_size=8)))
    sft = memplan.plan_for_run(tiny_model, load_recipe_settings(str(sft_path)))
    assert dpo is not None and sft is not None
    assert dpo.method == "qlora" and dpo.weights == sft.weights
    assert dpo.activations == sft.activations  # batch 4 pairs = 8 sequences
