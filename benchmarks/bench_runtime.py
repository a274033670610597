"""Runtime figures: training tokens/s, convert and quantize times, file sizes and quality deltas.

Two runs of the real runtime, end to end (`gapforge-runtime run`):
- the tiny Llama-shaped model the tests make, in this venv (the image's locked wheels);
- SmolLM2-135M-Instruct on the default recipe's sample data, inside its sealed image with
  `--network none --read-only`, as the image's user (skipped, with the fix named, when the
  image is not loaded: `nox -s build`).

Run with `nox -s bench` (or directly: python benchmarks/bench_runtime.py [--image REF] [--skip-image]).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_IMAGE = "gapforge/smollm2-135m-desk:0.1.0"


def _steps(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "steps").glob("*.json"))}


def _figures(label: str, out: Path, wall: float) -> list[tuple[str, str]]:
    steps = _steps(out)
    train = steps["train"]["details"]
    quant = steps["quantize"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    rows = [
        (f"{label}: whole run (wall)", f"{wall:8.1f} s"),
        (f"{label}: training", f"{train['tokens_per_second']:8.1f} tokens/s "
                               f"({train['tokens_seen']} tokens, {train['train_seconds']:.1f} s, {train['device']})"),
    ]  # fmt: skip
    seconds = quant["details"].get("seconds", {})
    for target, record in quant["outputs"].items():
        if not target.startswith(("gguf:", "adapter:")) or target.endswith(":Modelfile"):
            continue
        took = seconds.get(target)
        verb = "convert" if target in ("gguf:f16", "adapter:gguf") else "quantize"
        timing = f"{verb} {took:6.1f} s, " if took is not None else ""
        rows.append((f"{label}: {target}", f"{timing}{record['size'] / 1e6:7.1f} MB"))
    for name, delta in sorted(evaluation.get("delta_vs_merged_pct", {}).items()):
        rows.append((f"{label}: {name} perplexity vs merged", f"{delta:+8.2f} %"))
    models = evaluation["models"]
    rows.append((f"{label}: test loss base → merged",
                 f"{models['base']['loss']:.3f} → {models['merged']['loss']:.3f} "
                 f"({models['merged']['tokens']} tokens)"))  # fmt: skip
    rows.append((f"{label}: gates", "passed" if evaluation["passed"] else "FAILED"))
    return rows


def bench_tiny(root: Path) -> list[tuple[str, str]]:
    from tests.runtime.conftest import chat_examples, make_tiny_model, write_recipe

    model = make_tiny_model(root / "tiny-model")
    recipe = write_recipe(root / "tiny-recipe", chat_examples(200), max_steps=30)
    out = root / "tiny-out"
    command = [sys.executable, "-m", "gapforge_runtime.cli", "run", "--recipe", str(recipe),
               "--model", str(model), "--out", str(out)]  # fmt: skip
    if os.environ.get("GAPFORGE_LLAMA_CPP"):
        command += ["--llama-cpp", os.environ["GAPFORGE_LLAMA_CPP"]]
    start = time.monotonic()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    return _figures("tiny", out, time.monotonic() - start)


def bench_image(root: Path, image: str) -> list[tuple[str, str]]:
    present = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    if present.returncode != 0:
        return [(f"{image}", "not loaded: run 'nox -s build' first (skipped)")]
    out = root / "image-out"
    out.mkdir()
    os.chown(out, 1000, 1000)
    command = ["docker", "run", "--rm", "--network", "none", "--read-only", "--user", "1000:1000",
               "--tmpfs", "/tmp:rw,exec,size=2g", "--tmpfs", "/home/gapforge:rw,size=256m",
               "-v", f"{out}:/outputs", image, "run"]  # fmt: skip
    start = time.monotonic()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    return _figures("smollm2-135m (image, --network none)", out, time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--skip-image", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gapforge-bench-rt-"))
    try:
        rows = bench_tiny(root)
        if not args.skip_image:
            rows += bench_image(root, args.image)
        print(f"\ngapforge runtime benchmark ({os.cpu_count()} CPU cores)")
        for key, value in rows:
            print(f"  {key:<52} {value}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
