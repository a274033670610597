"""`--nproc 2`: the runtime relaunches its training through torchrun (DDP; gloo on CPU) and gets the
loss of the single-process run with the same global batch, the same checkpoints and a resumable run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_recipe


def _train(recipe: Path, model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gapforge_runtime.cli", "train", "--recipe", str(recipe),
               "--model", str(model), "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=600, env=env)


def _history(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return json.loads((out / "train_history.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    # the same global batch (4) and steps: one process of 4, or two of 2
    single = write_recipe(root / "single", batch_size=4)
    double = write_recipe(root / "double", batch_size=2)
    one = _train(single, tiny_model, root / "out-1")
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
    two = _train(double, tiny_model, root / "out-2", "--nproc", "2")
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert "starting 2 processes through torchrun" in two.stdout
    return {"one": root / "out-1", "two": root / "out-2", "recipe": double, "model": tiny_model}


def test_two_processes_train_like_one(runs: dict[str, Path]) -> None:
    record = json.loads((runs["two"] / "steps" / "train.json").read_text())
    assert record["details"]["world_size"] == 2 and record["details"]["global_step"] == 8
    evals_one = [h["eval_loss"] for h in _history(runs["one"]) if "eval_loss" in h]
    evals_two = [h["eval_loss"] for h in _history(runs["two"]) if "eval_loss" in h]
    assert len(evals_one) == len(evals_two) == 2
    # same start, same global batch, same learning rate: the validation losses agree closely
    assert evals_two[-1] == pytest.approx(evals_one[-1], rel=0.05)
    assert evals_two[-1] < evals_two[0] or evals_two[-1] < 6.5
    assert (runs["two"] / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((runs["two"] / "adapter").glob("*.bin"))  # no pickles beside the adapter


def test_two_processes_write_the_same_checkpoints_and_resume(runs: dict[str, Path]) -> None:
    names = sorted(p.name for p in (runs["two"] / "checkpoints").glob("checkpoint-*"))
    assert names == sorted(p.name for p in (runs["one"] / "checkpoints").glob("checkpoint-*"))
    again = _train(runs["recipe"], runs["model"], runs["two"], "--nproc", "2", "--resume", "--force")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr
