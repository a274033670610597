"""The verdict's three sentences decided from evaluation numbers alone (no chart, no model):
which artefact to ship under the gates, whether the fine-tune helped, and what is not known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gapforge_runtime.report.verdict import costs, gate_target, helped, ship, verdict_items

RUN = Path(__file__).parent / "golden" / "report_run.json"


@pytest.fixture
def evaluation() -> dict[str, Any]:
    """The recorded default-recipe run's evaluation (every gate passes)."""
    return dict(json.loads(RUN.read_text(encoding="utf-8"))["manifest"]["evaluation"])


def gate(name: str, passed: bool, detail: str = "measured") -> dict[str, Any]:
    return {"name": name, "passed": passed, "value": 1.0, "limit": 1.0, "detail": detail}


def test_gate_targets() -> None:
    assert gate_target("max_perplexity_delta_pct[gguf:q8_0]") == "gguf:q8_0"
    assert gate_target("max_task_f1_drop_pts[gguf:q4_k_m]") == "gguf:q4_k_m"
    assert gate_target("min_win_rate_vs_base") is None


def test_a_failed_gate_of_the_smallest_ships_the_next(evaluation: dict[str, Any]) -> None:
    evaluation["gates"][1] = gate("max_perplexity_delta_pct[gguf:q4_k_m]", False)
    assert ship(evaluation) == (
        "GGUF Q8_0 (144.8 MB): the smallest artefact that passes every gate that applies to it "
        "(`max_perplexity_delta_pct[gguf:q8_0]`); passed over: GGUF Q4_K_M (gate "
        "`max_perplexity_delta_pct[gguf:q4_k_m]` failed)."
    )


def test_an_artefact_no_gate_checks_is_not_shipped(evaluation: dict[str, Any]) -> None:
    evaluation["gates"] = [evaluation["gates"][0]]  # require_improvement only
    found = ship(evaluation)
    assert found.startswith("Merged (269.1 MB): the smallest artefact that passes")
    assert "GGUF Q4_K_M (no gate of the recipe checks it)" in found
    assert "GGUF Q8_0 (no gate of the recipe checks it)" in found


def test_a_failed_gate_on_the_fine_tune_ships_nothing(evaluation: dict[str, Any]) -> None:
    evaluation["gates"].append(gate("min_win_rate_vs_base", False, "not judged: skipped: too weak"))
    assert ship(evaluation) == (
        "none: gate `min_win_rate_vs_base` failed (not judged: skipped: too weak)."
    )


def test_no_gate_at_all_proves_nothing(evaluation: dict[str, Any]) -> None:
    evaluation["gates"] = []
    assert ship(evaluation).startswith("none: the recipe names no gate")


def test_a_judge_that_did_not_run_says_why(evaluation: dict[str, Any]) -> None:
    note = "skipped: the judge is the base model (135M parameters): too weak to judge"
    evaluation["judge"] = {"enabled": False, "note": note}
    assert f"no judge verdict ({note})" in helped(evaluation)


@pytest.mark.parametrize(
    ("merged_loss", "merged_f1", "word"),
    [(1.5, 46.3, "Yes."), (2.4, 5.0, "No."), (1.5, 5.0, "Mixed."), (2.4, 46.3, "Mixed.")],
)
def test_helped_weighs_loss_and_f1(
    evaluation: dict[str, Any], merged_loss: float, merged_f1: float, word: str
) -> None:
    evaluation["models"]["merged"]["loss"] = merged_loss
    evaluation["task_metrics"]["models"]["merged"]["token_f1"] = merged_f1
    assert helped(evaluation).startswith(word)


def test_a_judge_sure_the_fine_tune_is_worse_makes_it_mixed(evaluation: dict[str, Any]) -> None:
    merged_vs_base = evaluation["judge"]["comparisons"][0]
    merged_vs_base.update(win_rate=0.2, ci_low=0.05, ci_high=0.4)
    assert helped(evaluation).startswith("Mixed.")


def test_what_is_not_measured_is_said(evaluation: dict[str, Any]) -> None:
    evaluation["task_metrics"] = {
        "enabled": False,
        "note": "skipped: evaluate.task_metrics is false",
    }
    assert "task F1 not measured: skipped: evaluate.task_metrics is false" in costs(evaluation)
    assert "F1" not in helped(evaluation)
    del evaluation["models"]["base"]
    assert helped(evaluation).startswith("Not known:")
    assert verdict_items({})[0][1].startswith("the run has no evaluation")
