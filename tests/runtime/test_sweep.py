"""`gapforge-runtime sweep` on the tiny model: trials in their own processes, a journal in the output
folder, the lowest validation loss shipped (merged, quantized, evaluated), every trial in the report,
a resumed sweep that runs only the trials still missing, and a killed one that retries its trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_examples, recipe_dict, write_jsonl
from gapforge_runtime.cli import main

SPACE = {
    "train.learning_rate": {"low": 1e-4, "high": 5e-2, "log": True},
    "lora.r": {"choices": [4, 8]},
    "lora.alpha": {"choices": [8, 16]},
}


def sweep_recipe(folder: Path, **sweep: Any) -> Path:
    """The tiny recipe with a sweep section; judge and task metrics off to keep it quick."""
    recipe = recipe_dict(max_steps=4, eval_every=2)
    recipe["quantize"] = ["gguf:q8_0"]
    recipe["evaluate"] = {"sample_answers": 1, "max_new_tokens": 4, "judge": {"enabled": False},
                          "task_metrics": False, "gates": {"require_improvement": False}}  # fmt: skip
    recipe["sweep"] = {"space": SPACE, "trials": 3, "seed": 1, **sweep}
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "data" / "sample.jsonl", chat_examples(40))
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe, indent=2), encoding="utf-8")
    return path


def sweep_command(recipe: Path, model: Path, out: Path, llama_cpp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gapforge_runtime.cli", "sweep", "--recipe", str(recipe), "--model",
            str(model), "--out", str(out), "--llama-cpp", str(llama_cpp), "--no-tracking", *extra]  # fmt: skip


def study_trials(out: Path) -> list[Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "sweep" / "journal.log")))
    return optuna.load_study(study_name="gapforge-sweep", storage=storage).get_trials()


@pytest.fixture(scope="module")
def resumed_sweep(tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:  # fmt: skip
    """A sweep of 2 trials, then the same sweep asked for 3 on the same folder."""
    root = tmp_path_factory.mktemp("sweep")
    recipe, out = sweep_recipe(root / "recipe", pruning=False), root / "out"
    outputs = []
    # The first two trials run at once, each given its own one of the visible GPUs (none exists on
    # a CPU machine, where CPU torch ignores the variable: only the assignment is checked here).
    for trials, parallel in (("2", "2"), ("3", "1")):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "5,7"}
        result = subprocess.run(sweep_command(recipe, tiny_model, out, llama_cpp_dir, "--trials", trials, "--parallel", parallel),
                                capture_output=True, text=True, check=False, timeout=600, env=env)  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        outputs.append(result.stdout)
    return out, outputs[0].splitlines(), outputs[1].splitlines()


def test_sweep_runs_every_trial_in_the_journal_and_ships_the_best(resumed_sweep: tuple[Path, list[str], list[str]]) -> None:
    out, _, _ = resumed_sweep
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    best = min(trials, key=lambda t: t.value)
    summary = json.loads((out / "sweep" / "sweep.json").read_text())
    assert summary["best"]["number"] == best.number
    assert summary["best"]["eval_loss"] == pytest.approx(best.value)
    # Three different settings were tried, each trained in its own folder by its own process.
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 3
    for t in trials:
        folder = out / "sweep" / "trials" / f"trial-{t.number:04d}"
        result = json.loads((folder / "result.json").read_text())
        assert result["eval_loss"] == pytest.approx(t.value)
        assert not (folder / "checkpoints").exists(), "a trial's checkpoints are removed once it is done"
        assert t.intermediate_values, "validation losses were reported to the study for pruning"
    # The shipped adapter is the best trial's, byte for byte, and it was merged and quantized.
    best_adapter = out / "sweep" / "trials" / f"trial-{best.number:04d}" / "adapter" / "adapter_model.safetensors"
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == best_adapter.read_bytes()
    for name in ("merged/model.safetensors", "gguf/tiny-desk-q8_0.gguf", "evaluation.json", "plots/sweep.png"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sweep"]["best"]["number"] == best.number
    assert manifest["training"]["sweep_trial"] == best.number
    assert "sweep:journal" in manifest["outputs"]
    adapter_node = next(n for n in manifest["lineage"] if n["id"] == "adapter")
    assert adapter_node["sweep_trial"] == best.number
    # The shipped recipe is the best trial's settings.
    assert manifest["recipe"]["train"]["learning_rate"] == pytest.approx(best.params["train.learning_rate"])
    assert manifest["recipe"]["lora"]["r"] == best.params["lora.r"]
    report = (out / "report.md").read_text()
    assert "## Sweep" in report and f"| {best.number} (best) |" in report
    for t in trials:
        assert f"{t.value:.4f}" in report
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_a_resumed_sweep_runs_only_the_missing_trials(resumed_sweep: tuple[Path, list[str], list[str]]) -> None:
    _, first, second = resumed_sweep
    started_first = [line for line in first if line.startswith("[sweep] trial") and "started" in line]
    assert [line.split(":")[0] for line in started_first] == ["[sweep] trial 0 started on GPU 5",
                                                              "[sweep] trial 1 started on GPU 7"]  # fmt: skip
    started = [line for line in second if line.startswith("[sweep] trial") and "started" in line]
    assert len(started) == 1 and started[0].startswith("[sweep] trial 2 started"), second
    assert "[sweep] resuming: 2 of 3 trials already finished" in second


def test_a_sweep_of_4_killed_during_trial_3_resumes_to_4_and_ships_the_best(
    tmp_path: Path, tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any
) -> None:
    recipe, out = sweep_recipe(tmp_path / "recipe", trials=4, pruning=False), tmp_path / "out"
    command = sweep_command(recipe, tiny_model, out, llama_cpp_dir)
    with (tmp_path / "first.log").open("wb") as log:
        sweep = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        third_trial = out / "sweep" / "trials" / "trial-0002" / "trial.log"
        deadline = time.monotonic() + 300
        while not third_trial.is_file() and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.2)
        assert third_trial.is_file(), (tmp_path / "first.log").read_text()
        time.sleep(1.0)  # the trial is running
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
    # The trial's process dies with the sweep's (no orphan keeps writing to the journal).
    spec = json.loads((out / "sweep" / "trials" / "trial-0002" / "spec.json").read_text())
    time.sleep(1.0)
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs_spec(p, spec)]
    states = [t.state.name for t in study_trials(out)]
    assert states == ["COMPLETE", "COMPLETE", "RUNNING"]

    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "[sweep] trials [2] were cut off by a killed sweep" in result.stdout
    assert "[sweep] resuming: 2 of 4 trials already finished" in result.stdout
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[3].params == trials[2].params and trials[3].user_attrs["retry_of"] == 2
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert json.loads((out / "manifest.json").read_text())["training"]["sweep_trial"] == best.number
    assert (out / "gguf" / "tiny-desk-q8_0.gguf").is_file()
    assert "its process died" in (out / "report.md").read_text()


def test_a_trial_worse_than_the_median_is_pruned(tmp_path: Path, tiny_model: Path, llama_cpp_dir: Path,
                                                  llama_cpp_binding: Any) -> None:  # fmt: skip
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    recipe = sweep_recipe(tmp_path / "recipe", trials=2, prune_startup_trials=1)
    out = tmp_path / "out"
    # The data step claims the folder; then two settings are queued the Optuna way: a learning rate
    # that learns, then one too small to move the loss, which the median of the first must stop.
    assert main(["data", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]) == 0
    (out / "sweep").mkdir()
    storage = JournalStorage(JournalFileBackend(str(out / "sweep" / "journal.log")))
    study = optuna.create_study(study_name="gapforge-sweep", storage=storage, direction="minimize")
    study.enqueue_trial({"train.learning_rate": 0.05, "lora.r": 8, "lora.alpha": 16})
    study.enqueue_trial({"train.learning_rate": 0.0001, "lora.r": 4, "lora.alpha": 8})
    result = subprocess.run(sweep_command(recipe, tiny_model, out, llama_cpp_dir), capture_output=True,
                            text=True, check=False, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"], result.stdout[-3000:]
    assert list(trials[1].intermediate_values) == [2], "stopped at its first evaluation, not at step 4"
    assert trials[1].intermediate_values[2] > trials[0].intermediate_values[2]
    assert "[sweep] trial 1 pruned at step 2" in result.stdout
    summary = json.loads((out / "sweep" / "sweep.json").read_text())
    assert summary["best"]["number"] == 0
    assert "| PRUNED |" in (out / "report.md").read_text()


def _runs_spec(proc: Path, spec: dict[str, Any]) -> bool:
    try:
        return str(spec["trial_dir"]) in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_recipe_without_a_sweep_or_with_a_bad_space(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = sweep_recipe(tmp_path / "r1")
    raw = json.loads(recipe.read_text())
    del raw["sweep"]
    recipe.write_text(json.dumps(raw))
    args = ["sweep", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(tmp_path / "o1"), "--no-tracking"]
    assert main(args) == 2
    assert "no sweep section" in capsys.readouterr().err
    assert main(["run", "--sweep", *args[1:]]) == 2, "`run --sweep` is the sweep (gapforge run --sweep)"
    assert "no sweep section" in capsys.readouterr().err

    bad = sweep_recipe(tmp_path / "r2", space={"train.learning_rate": {"low": 0.5, "high": 2.0}})
    args = ["sweep", "--recipe", str(bad), "--model", str(tiny_model), "--out", str(tmp_path / "o2"), "--no-tracking"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sweep.space.train.learning_rate: the value 2.0 makes an invalid recipe" in err
    assert str(bad) in err and "Narrow the ranges" in err
    assert not (tmp_path / "o2" / "sweep").exists(), "refused before any trial"


def test_settings_land_in_the_trial_recipe() -> None:
    from gapforge_runtime.launch.study import apply_settings

    raw = recipe_dict(max_steps=4)
    trial = apply_settings(raw, {"train.epochs": 2.0, "lora.r": 16.0, "train.scheduler": "cosine"})
    assert trial["train"]["epochs"] == 2.0 and trial["train"]["max_steps"] is None
    assert trial["lora"]["r"] == 16 and isinstance(trial["lora"]["r"], int)
    assert trial["train"]["scheduler"] == "cosine" and raw["train"]["max_steps"] == 4, "the recipe is not changed"
    again = apply_settings(trial, {"train.max_steps": 8})
    assert again["train"]["max_steps"] == 8 and again["train"]["epochs"] is None


def test_a_changed_space_or_a_distill_recipe_is_refused(tmp_path: Path, tiny_model: Path, llama_cpp_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    recipe, out = sweep_recipe(tmp_path / "recipe"), tmp_path / "out"
    base = ["--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]
    assert main(["data", *base]) == 0
    (out / "sweep").mkdir()
    storage = JournalStorage(JournalFileBackend(str(out / "sweep" / "journal.log")))
    study = optuna.create_study(study_name="gapforge-sweep", storage=storage)
    study.set_user_attr("space_sha256", "another space")
    assert main(["sweep", *base, "--llama-cpp", str(llama_cpp_dir)]) == 2
    err = capsys.readouterr().err
    assert "another search space" in err and "--force" in err and str(recipe) in err
    assert not (out / "sweep" / "trials").exists()

    raw = json.loads(recipe.read_text())
    raw["train"]["method"] = "distill"
    raw["train"]["distill"] = {"teacher": str(tiny_model)}
    recipe.write_text(json.dumps(raw))
    assert main(["sweep", *base, "--out", str(tmp_path / "out2")]) == 2
    assert "train.method 'distill' with a sweep" in capsys.readouterr().err


def test_trials_that_keep_failing_stop_the_sweep_with_their_log(tmp_path: Path, tiny_model: Path, llama_cpp_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    recipe, out = sweep_recipe(tmp_path / "recipe"), tmp_path / "out"
    base = ["--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--no-tracking"]
    assert main(["data", *base]) == 0
    (out / "data" / "train.jsonl").write_text("not json\n")  # every trial's process fails reading it
    assert main(["sweep", *base, "--llama-cpp", str(llama_cpp_dir)]) == 2
    captured = capsys.readouterr()
    assert "3 trials in a row failed" in captured.err and "trial.log" in captured.err
    assert "[sweep] trial 0 FAILED (its process exited with status 1" in captured.out
    assert [t.state.name for t in study_trials(out)] == ["FAIL"] * 3
