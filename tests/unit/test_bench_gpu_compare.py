"""The GPU bench's plain baseline falls back to the largest padded batch that fits, and its table says so.

No GPU is needed: `plain_fallback` takes the function that runs one padded batch size in a fresh
process, so these tests hand it runs that finish or report an out-of-memory step as the real child
does (its JSON), and read the table the bench prints from those figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_gpu_compare", BENCHMARKS / "bench_gpu_compare.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_gpu_compare", module)
    spec.loader.exec_module(module)
    return module


compare = _load()


def figures(rate: float, loss: float = 12.6) -> dict[str, Any]:
    """What a finished child writes (the fields the table reads)."""
    return {"real_tokens_per_second": rate, "last_loss": loss, "examples_per_step": 4.0, "padding_pct": 43.3,
            "mfu_pct": 5.1, "peak_memory_gib": 61.0, "token_budget": None}  # fmt: skip


def oom(step: int) -> dict[str, Any]:
    return {
        "oom": f"step {step}: CUDA out of memory. Tried to allocate 3.91 GiB",
        "peak_memory_gib": 71.2,
    }


class Runs:
    """The sizes asked for, in order, and what each returned."""

    def __init__(self, answers: dict[int, dict[str, Any] | None]) -> None:
        self.answers = answers
        self.asked: list[int] = []

    def __call__(self, size: int) -> dict[str, Any] | None:
        self.asked.append(size)
        return self.answers[size]


def args(variants: str = "plain,runtime-flex") -> argparse.Namespace:
    return argparse.Namespace(cmp_methods="lora", variants=variants)


def test_batch_of_4_kept_when_it_fits() -> None:
    runs = Runs({4: figures(1500.0)})
    result = compare.plain_fallback(runs)
    assert runs.asked == [4]
    assert result["plain_batch"] == 4 and result["plain_oom"] == {}


def test_falls_back_to_2_after_4_runs_out_of_memory() -> None:
    runs = Runs({4: oom(13), 2: figures(1385.0), 1: figures(900.0)})
    result = compare.plain_fallback(runs)
    assert runs.asked == [4, 2]  # 1 is never tried once 2 fits
    assert result["plain_batch"] == 2
    assert result["real_tokens_per_second"] == 1385.0
    assert list(result["plain_oom"]) == ["4"] and "step 13" in result["plain_oom"]["4"]


def test_none_fits_is_no_baseline() -> None:
    runs = Runs({4: oom(1), 2: oom(3), 1: oom(9)})
    result = compare.plain_fallback(runs)
    assert runs.asked == [4, 2, 1]
    assert result["plain_batch"] is None and "real_tokens_per_second" not in result
    assert list(result["plain_oom"]) == ["4", "2", "1"]


def test_a_failure_that_is_not_memory_stops_the_search() -> None:
    runs = Runs({4: None, 2: figures(1385.0), 1: figures(900.0)})
    result = compare.plain_fallback(runs)
    assert runs.asked == [4]
    assert result["failed"] is True and result["plain_batch"] is None


def test_table_names_the_batch_and_gives_ratios_against_it() -> None:
    plain = compare.plain_fallback(Runs({4: oom(13), 2: figures(1385.0, loss=12.6)}))
    flex = figures(11080.0, loss=12.58) | {
        "token_budget": 8192,
        "examples_per_step": 19.6,
        "padding_pct": 0.0,
    }
    text = compare.table({"lora/plain": plain, "lora/runtime-flex": flex}, args())
    rows = text.splitlines()
    assert "| lora | plain (padded, 2; 4 out of memory) |" in rows[2]
    assert "| 1.00x |" in rows[2]
    assert "| lora | runtime-flex | 8192 |" in rows[3]
    assert "| 8.00x |" in rows[3] and "| -0.16 % |" in rows[3]


def test_table_without_a_baseline_prints_no_ratio() -> None:
    plain = compare.plain_fallback(Runs({4: oom(1), 2: oom(2), 1: oom(4)}))
    flex = figures(11080.0) | {"token_budget": 8192}
    rows = compare.table({"lora/plain": plain, "lora/runtime-flex": flex}, args()).splitlines()
    assert "plain (padded, none fits; 4 out of memory, 2 out of memory, 1 out of memory)" in rows[2]
    assert "step 4: CUDA out of memory" in rows[2]
    cells = [cell.strip() for cell in rows[3].split("|")]
    assert cells[6] == "11,080" and cells[7] == ""  # no ratio against a baseline that did not run


def test_skipped_rows_say_why() -> None:
    plain = compare.plain_fallback(Runs({4: oom(13), 2: figures(1385.0)}))
    table = compare.table(
        {"lora/plain": plain, "lora/plain-b8": {"skipped": "padded batches of 4 did not fit"}},
        args("plain,plain-b8"),
    )
    assert "| lora | plain-b8 |  | | | padded batches of 4 did not fit |" in table
