"""Task metrics, the pairwise judge's rules and its gates; one judge run through a real tiny GGUF."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from gapforge_runtime.evaluation import judge as jd
from gapforge_runtime.evaluation.gates import decide_comparison_gates
from gapforge_runtime.evaluation.taskmetrics import (
    exact_match,
    normalize_answer,
    rouge_l,
    score_answers,
    token_f1,
)

# --- task metrics -----------------------------------------------------------------------------


def test_normalize_and_exact_match() -> None:
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert exact_match("The cat sat.", "cat  SAT") == 1.0
    assert exact_match("a cat sat", "the dog sat") == 0.0


def test_token_f1_known_values() -> None:
    # pred {cat, sat, mat}, ref {cat, sat, on, mat, today}: common 3 → P 1, R 0.6, F1 0.75
    assert token_f1("the cat sat mat", "cat sat on the mat today") == pytest.approx(0.75)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("a b", "c d") == 0.0
    # counts are clipped: "cat cat" vs "cat" → P 0.5, R 1 → 2/3
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)


def test_rouge_l_known_values() -> None:
    # LCS of "police killed the gunman" / "police kill the gunman" (articles dropped): 2 of 3 each
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    # order matters for LCS but not for F1: LCS("y x", "x y") = 1
    assert rouge_l("y x", "x y") == pytest.approx(0.5) and token_f1("y x", "x y") == 1.0
    assert rouge_l("one two three", "one two three") == 1.0


def test_score_answers_means_in_points() -> None:
    scores = score_answers(["Paris.", "rome"], ["paris", "Madrid"])
    assert (scores.exact_match, scores.token_f1, scores.rouge_l, scores.n) == (50.0, 50.0, 50.0, 2)
    with pytest.raises(ValueError):
        score_answers(["x"], [])


# --- the judge's rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("[[A]]", "A"), ("[[B]] because", "B"), ("[[ C ]]", "C"), ("[[A", None), ("B", None), ("", None),
     ("[[D]]", None), ("x [[B]] then [[A]]", "B")],
)
def test_parse_verdict(text: str, verdict: str | None) -> None:
    assert jd.parse_verdict(text) == verdict


def test_both_orders_tie_rule() -> None:
    # candidate first as A, then as B
    assert jd.combine_orders("A", "B") == ("win", False)
    assert jd.combine_orders("B", "A") == ("loss", False)
    assert jd.combine_orders("C", "C") == ("tie", False)
    assert jd.combine_orders("A", "A") == ("tie", True)  # position bias: orders disagree
    assert jd.combine_orders(None, "B") == ("tie", True)  # unparseable counts as a tie for its order
    assert jd.combine_orders(None, None) == ("tie", False)


def test_compare_counts_and_win_rate() -> None:
    replies = iter(["[[A]]", "[[B]]", "[[A]]", "[[A]]", "junk", "[[C]]", "[[B]]", "[[A]]"])
    c = jd.compare("merged", "base", ["q"] * 4, ["c"] * 4, ["r"] * 4, lambda *_: next(replies), 200)
    assert (c.wins, c.losses, c.ties, c.inconsistent, c.unparseable) == (1, 1, 2, 1, 1)
    assert c.win_rate == pytest.approx(0.5) and c.verdicts[2] == ["?", "C"]
    assert c.ci_low <= c.win_rate <= c.ci_high


def test_bootstrap_interval_seeded_contains_estimate_and_narrows() -> None:
    small = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5] * 2
    big = small * 16
    first, again = jd.bootstrap_interval(small, 1000, seed=3), jd.bootstrap_interval(small, 1000, seed=3)
    assert first == again
    estimate = sum(small) / len(small)
    assert first[0] <= estimate <= first[1]
    wide, narrow = first[1] - first[0], jd.bootstrap_interval(big, 1000, seed=3)
    assert narrow[0] <= estimate <= narrow[1] and narrow[1] - narrow[0] < wide / 2
    assert all(math.isnan(x) for x in jd.bootstrap_interval([], 100))


def test_comparisons_for() -> None:
    assert jd.comparisons_for(["base", "merged", "gguf:f16", "gguf:q8_0", "gguf:q4_k_m"]) == [
        ("merged", "base"), ("gguf:q8_0", "base"), ("gguf:q4_k_m", "base"),
    ]
    assert jd.comparisons_for(["merged", "gguf:q8_0"]) == []


def test_question_text() -> None:
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Why?"},
                         {"role": "assistant", "content": "Because."}]}
    assert jd.question_text("chat", chat) == "Why?"
    assert jd.question_text("alpaca", {"instruction": "Add", "input": "1 2", "output": "3"}) == "Add\n\n1 2"


# --- gates --------------------------------------------------------------------------------------


def _judged(rate: float) -> dict[str, Any]:
    return {"comparisons": [{"candidate": "merged", "reference": "base", "n": 8, "win_rate": rate,
                             "ci_low": rate - 0.1, "ci_high": rate + 0.1}]}


TASK = {"models": {"merged": {"token_f1": 60.0}, "gguf:q8_0": {"token_f1": 59.0}, "gguf:q4_k_m": {"token_f1": 50.0}}}


def test_gates_pass_and_fail_naming_the_gate() -> None:
    gates = decide_comparison_gates(0.6, {"gguf:q8_0": 2.0, "gguf:q4_k_m": 5.0}, _judged(0.55), TASK)
    assert [(g.name, g.passed) for g in gates] == [
        ("min_win_rate_vs_base", False), ("max_task_f1_drop_pts[gguf:q4_k_m]", False),
        ("max_task_f1_drop_pts[gguf:q8_0]", True),
    ]
    assert gates[1].value == pytest.approx(10.0) and "0.550" in gates[0].detail
    assert all(g.passed for g in decide_comparison_gates(0.5, {"gguf:q8_0": 1.0}, _judged(0.55), TASK))
    assert decide_comparison_gates(None, {}, None, None) == []


def test_gates_fail_when_not_measured() -> None:
    off = {"enabled": False, "note": "skipped: evaluate.judge.enabled is false"}
    gates = decide_comparison_gates(0.1, {"gguf:q8_0": 50.0}, off, {"enabled": False, "note": "skipped", "models": {}})
    assert [g.passed for g in gates] == [False, False]
    assert "enabled is false" in gates[0].detail and "skipped" in gates[1].detail


# --- a real judge: the tiny model's GGUF through llama-cpp-python -------------------------------


def test_llama_judge_end_to_end(tiny_gguf: Path, llama_cpp_binding: Any) -> None:
    questions = ["How do I serve the model? (case 1)", "How do I find the report? (case 2)"]
    cand = ["Desk answer: to serve the model, follow step 1. Ticket closed.", "Desk answer: step 2."]
    base = ["the the the", "I do not know."]
    n_ctx, trained = jd.fitted_n_ctx(tiny_gguf, [(q, c, b) for q, c, b in zip(questions, cand, base, strict=True)])
    assert n_ctx % 64 == 0 and trained == 512
    judge = jd.LlamaJudge(tiny_gguf, n_ctx)
    try:
        c = jd.compare("merged", "base", questions, cand, base, judge.ask, 500, seed=1)
    finally:
        judge.close()
    assert judge.calls == 4 and judge.too_long == 0
    assert c.n == 2 and c.wins + c.losses + c.ties == 2
    assert all(v in ("A", "B", "C", "?") for pair in c.verdicts for v in pair)
    assert 0.0 <= c.win_rate <= 1.0 and c.ci_low <= c.win_rate <= c.ci_high


# --- a judge too weak to decide ----------------------------------------------------------------


def test_the_base_model_under_1b_is_too_weak_to_judge_unless_forced() -> None:
    reason = jd.too_weak_to_judge("base", False, 134_515_008)
    assert reason is not None and "135M parameters" in reason and "evaluate.judge.force" in reason
    assert jd.too_weak_to_judge("base", True, 134_515_008) is None
    assert jd.too_weak_to_judge("judge", False, 134_515_008) is None  # a named judge is trusted
    assert jd.too_weak_to_judge("base", False, 8_000_000_000) is None


def test_a_skipped_judge_fails_its_gate_saying_why() -> None:
    note = "skipped: " + (jd.too_weak_to_judge("base", False, 1_000_000) or "")
    gates = decide_comparison_gates(0.5, {}, {"enabled": False, "note": note}, TASK)
    assert [(g.name, g.passed) for g in gates] == [("min_win_rate_vs_base", False)]
    assert "too weak to judge" in gates[0].detail
