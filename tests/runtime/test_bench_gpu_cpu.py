"""`nox -s bench-gpu`'s side-by-side comparison, end to end on the CPU with the tiny shape.

The GPU figures need a GPU; the bench's plumbing does not. This runs benchmarks/bench_gpu.py as the
nox session does (a subprocess, the runtime on PYTHONPATH) with `--shape tiny --device cpu`: the model
is written by a child process, every variant runs in a fresh process, the plain baseline is kept at
padded batches of 4 (nothing runs out of memory on a CPU), and the printed table carries the ratio
against it. The packed row's logits must equal the padded batch's (the runtime's check, fp32 here).
It runs with pydantic made unimportable, as on the device machine (which has none): LoRA's rows
must not need it (the runtime's config does; only QLoRA's runtime rows import that module).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.requirements import require_module

ROOT = Path(__file__).resolve().parents[2]
NO_PYDANTIC = """import sys
class _NoPydantic:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pydantic", "pydantic_core"):
            raise ImportError("pydantic is not on this machine (the bench test's blocker)")
sys.meta_path.insert(0, _NoPydantic())
"""


def test_tiny_bench_prints_the_table_with_ratios(tmp_path: Path) -> None:
    require_module("torch")
    require_module("peft")
    work, out, blocker = tmp_path / "work", tmp_path / "figures.json", tmp_path / "no-pydantic"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_PYDANTIC)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(blocker), str(ROOT / "runtime"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--shape", "tiny", "--device", "cpu",
            "--work", str(work), "--keep-work", "--no-fixed", "--no-gptq", "--cmp-methods", "lora",
            "--variants", "plain,runtime", "--examples", "40", "--cap", "128", "--lora-budget", "512",
            "--cmp-warmup", "1", "--cmp-steps", "2", "--json", str(out)]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "params.json").is_file() and (
        work / "model" / "config.json"
    ).is_file()  # --keep-work
    figures = json.loads(out.read_text())["realistic"]
    plain, runtime = figures["lora/plain"], figures["lora/runtime"]
    assert plain["plain_batch"] == 4 and plain["plain_oom"] == {}
    assert plain["examples_per_step"] == 4.0 and runtime["padding_pct"] == 0.0
    assert (
        runtime["check_packed_vs_padded_rel"]
        < 1e-5
        < 1e-3
        < runtime["check_unmasked_row_vs_padded_rel"]
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("| lora |")]
    assert len(rows) == 2
    assert rows[0].startswith("| lora | plain (padded, 4) |") and "| 1.00x |" in rows[0]
    ratio = runtime["real_tokens_per_second"] / plain["real_tokens_per_second"]
    assert f"| {ratio:.2f}x |" in rows[1]
