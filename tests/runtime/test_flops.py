"""Model FLOPs, MFU and GPU hours of a training, as the train step records them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from gapforge_runtime.flops import (
    mean_square_length,
    model_flops,
    peak_tflops,
    utilization,
)


def test_the_run_figure_equals_the_per_example_sum_when_each_example_is_seen_once() -> None:
    lengths = [16, 300, 2048, 95, 95]
    params, layers, hidden = 8_030_261_248, 32, 4096
    seconds = 2.5
    exact = model_flops(lengths, params, layers, hidden) / seconds / 1e12
    used = utilization(sum(lengths), seconds, mean_square_length(lengths), params, layers, hidden,
                       gpus=1, peak=989.0)  # fmt: skip
    assert used is not None
    assert used.model_tflops_per_second == pytest.approx(exact, abs=0.05)
    assert used.mfu_pct == pytest.approx(100 * exact / 989.0, abs=0.05)
    two = utilization(sum(lengths), seconds, mean_square_length(lengths), params, layers, hidden, 2, 989.0)
    assert two is not None and two.mfu_pct == pytest.approx(used.mfu_pct / 2, abs=0.06)
    assert two.gpu_hours == pytest.approx(2 * seconds / 3600, abs=1e-4)


def test_unknown_gpus_and_empty_runs_say_so() -> None:
    assert peak_tflops("NVIDIA H200") == peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA GeForce RTX 4090") is None
    used = utilization(10**6, 1.0, 10.0, 10**9, 2, 64, gpus=1, peak=None)
    assert used is not None and used.mfu_pct is None and used.model_tflops_per_second > 0
    assert utilization(0, 1.0, 10.0, 10**6, 2, 64, 1, 989.0) is None
    assert mean_square_length([]) == 0.0


def test_the_train_step_computes_it_for_sft_examples_not_for_pairs(tmp_path: Path) -> None:
    from gapforge_runtime.methods.sft import _utilization

    config = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    items = [SimpleNamespace(input_ids=list(range(n))) for n in (10, 20, 30)]
    used = _utilization(tmp_path, items, tokens=60, seconds=0.5, device="cpu", gpus=1)
    assert used is not None and used.mfu_pct is None and used.model_tflops_per_second >= 0
    assert _utilization(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}], 60, 0.5, "cpu", 1) is None
