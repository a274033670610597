"""Kill `train` after a checkpoint exists; `train --resume` finishes and says where it resumed. One seed, one adapter."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_recipe

from tests.requirements import require_module

torch = require_module("torch")
load_file = require_module("safetensors.torch").load_file


def _train(recipe: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gapforge_runtime.cli", "train", "--recipe", str(recipe), "--model", str(model), "--out", str(out), *extra]


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path: Path, tiny_model: Path) -> None:
    # Enough steps that the kill lands mid-way; a checkpoint every 4 steps.
    recipe = write_recipe(tmp_path / "r", max_steps=60, eval_every=4)
    out = tmp_path / "out"
    process = subprocess.Popen(_train(recipe, tiny_model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list(out.glob("checkpoints/checkpoint-*/.complete")):
            assert process.poll() is None, "training ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (out / "adapter").exists() and not (out / "steps" / "train.json").exists()

    again = subprocess.run(_train(recipe, tiny_model, out), capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr

    # A kill can also land while Trainer writes a checkpoint: make sure one such is there, newer
    # than every complete one, with its state cut short (what CI once hit by chance).
    partial = out / "checkpoints" / "checkpoint-56"
    partial.mkdir(exist_ok=True)
    (partial / "trainer_state.json").write_text('{"global_step": 5', encoding="utf-8")

    resumed = subprocess.run(_train(recipe, tiny_model, out, "--resume"), capture_output=True, text=True, check=False, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removing checkpoint-56, whose save did not finish" in resumed.stdout
    line = next(li for li in resumed.stdout.splitlines() if "resumed from step" in li)
    step = int(line.split("resumed from step ")[1].split(";")[0])
    assert step >= 4 and step % 4 == 0
    assert "finished at step 60" in line
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_same_recipe_and_seed_train_the_same_adapter(tmp_path: Path, tiny_model: Path) -> None:
    """An operator re-running a recipe on the same data gets the same adapter, bit for bit."""
    recipe = write_recipe(tmp_path / "r", max_steps=4, eval_every=2)
    adapters = []
    for name in ("a", "b"):
        out = tmp_path / name
        done = subprocess.run(_train(recipe, tiny_model, out), capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        adapters.append(load_file(out / "adapter" / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    for key, tensor in adapters[0].items():
        assert torch.equal(tensor, adapters[1][key]), f"{key} differs between two runs of one seed"
