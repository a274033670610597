"""What other runtime tests read in report.md (the sweep, lm-eval, continual, DPO, hygiene and
failed-gate runs are too heavy to run here): each section, built from dicts shaped like those runs
write, still holds the strings those tests assert, and no section prints None."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from test_report import PageText, markdown_words

from tests.requirements import require_module

RUN = Path(__file__).parent / "golden" / "report_run.json"


def sweep() -> dict[str, Any]:
    """sweep.json as gapforge_runtime.launch.sweep.write_summary writes it: a finished, a pruned, a
    crashed trial (its note) and the best."""
    space = {"train.learning_rate": {"low": 1e-5, "high": 1e-3}, "lora.r": {"choices": [4, 8]}}
    trials = [
        {"number": 0, "state": "COMPLETE", "params": {"train.learning_rate": 2.5e-05, "lora.r": 4},
         "eval_loss": 1.61234, "seconds": 30.2, "intermediate": {"2": 1.9, "4": 1.61234}, "note": ""},
        {"number": 1, "state": "PRUNED", "params": {"train.learning_rate": 1e-05, "lora.r": 8},
         "eval_loss": None, "seconds": 12.0, "intermediate": {"2": 2.4}, "note": ""},
        {"number": 2, "state": "FAIL", "params": {"train.learning_rate": 3e-4, "lora.r": 8},
         "eval_loss": None, "seconds": None, "intermediate": {},
         "note": "its process died (signal 9): out of memory?"},
        {"number": 3, "state": "COMPLETE", "params": {"train.learning_rate": 3e-4, "lora.r": 8},
         "eval_loss": 1.50011, "seconds": 29.9, "intermediate": {"2": 1.8, "4": 1.50011},
         "note": "retry of trial 2"},
    ]  # fmt: skip
    return {"study": "gapforge-sweep", "journal": "sweep/journal.log", "metric": "eval_loss",
            "direction": "minimize", "space": space, "pruning": True,
            "best": {"number": 3, "eval_loss": 1.50011, "params": trials[3]["params"]},
            "trials": trials}  # fmt: skip


def lm_eval() -> dict[str, Any]:
    """lm-eval's results as gapforge_runtime.evaluation.lmeval writes them (an `n` lm-eval did not report)."""

    def scores(acc: float) -> dict[str, Any]:
        return {
            "tiny_mc": {"metrics": {"acc": acc}, "stderr": {"acc": 0.1}, "higher_is_better": {"acc": True}, "n": 3},
            "tiny_rolling": {"metrics": {"word_perplexity": 40.2}, "stderr": {},
                             "higher_is_better": {"word_perplexity": False}, "n": None},
        }  # fmt: skip

    return {"enabled": True, "note": "", "tasks_folder": "lm_eval_tasks", "limit": 3,
            "tasks": ["tiny_mc", "tiny_rolling"], "num_fewshot": None, "total_seconds": 12.5,
            "targets": {"merged": scores(0.667), "gguf:q8_0": scores(0.667), "gguf:q4_k_m": scores(0.333)},
            "seconds": {}, "lm_eval_version": "0.4.9", "notes": []}  # fmt: skip


def continual() -> dict[str, Any]:
    parent = {"path": "/runs/parent", "manifest_sha256": "a" * 64, "adapter_sha256": "b" * 64,
              "recipe": {"name": "tiny-desk", "version": "1.0.0", "sha256": "c" * 64}}  # fmt: skip
    return {"parent": parent, "replay_ratio": 0.25, "forgetting_pct": 1.5,
            "old_test": {"start": 1.2, "trained": 1.218, "examples": 6},
            "new_test": {"start": 2.0, "trained": 1.4}}  # fmt: skip


def preference() -> dict[str, Any]:
    """gapforge_runtime.methods.preference.summarize's shape: the log-prob margin of a model that did not
    move is NaN-free, but a reward with no pair is NaN."""
    return {"pairs": 6, "beta": 0.1,
            "logp_accuracy": {"start": 0.0, "trained": 1.0}, "logp_margin": {"start": -2.0, "trained": 3.1},
            "reward_accuracy": {"start": 0.5, "trained": 1.0},
            "reward_margin": {"start": float("nan"), "trained": 0.52}}  # fmt: skip


def test_every_section_other_tests_read(tmp_path: Path) -> None:
    require_module("matplotlib")
    from gapforge_runtime.report import write_report

    run = json.loads(RUN.read_text(encoding="utf-8"))
    manifest, evaluation = run["manifest"], run["manifest"]["evaluation"]
    manifest["sweep"] = sweep()
    manifest["training"].update(sweep_trial=3, sweep_eval_loss=1.50011)
    evaluation.update(lm_eval=lm_eval(), continual=continual(), preference=preference())
    evaluation["judge"] = {"enabled": False, "note": "skipped: too weak to judge (135M parameters)"}
    evaluation["gates"] += [
        {"name": "min_win_rate_vs_base", "passed": False, "value": float("nan"), "limit": 0.99,
         "detail": "not judged: skipped: too weak to judge (135M parameters)"},
        {"name": "min_preference_accuracy", "passed": True, "value": 1.0, "limit": 0.6,
         "detail": "preference accuracy 1.000 must reach 0.6"},
    ]  # fmt: skip
    evaluation["passed"] = False
    written = write_report(tmp_path, manifest, run["history"])
    md, page = written["report.md"].read_text(), written["report.html"].read_text()
    # test_sweep
    assert "## Sweep" in md and "| 3 (best) |" in md and "| PRUNED |" in md
    assert "1.6123" in md and "1.5001" in md and "its process died" in md and "| 2.5e-05 |" in md
    assert "plots/sweep.png" in written and "data:image/png;base64," in page
    # test_lmeval, test_continual, test_dpo, test_hygiene, test_run
    assert "## lm-evaluation-harness tasks" in md and "| tiny_mc | acc |" in md
    assert "## Continual learning" in md
    assert "## Preference accuracy" in md and "min_preference_accuracy" in md
    assert "## Data hygiene" in md
    assert "min_win_rate_vs_base" in md and "Gates" in page and "jinja" not in page.lower()
    # The failed gate decides the first screen; the judge's skip reason is on it.
    assert "Verdict: **FAIL (gate min_win_rate_vs_base failed)**" in md
    assert "**Which to ship?** none: gate `min_win_rate_vs_base` failed" in md
    assert "no judge verdict (skipped: too weak to judge (135M parameters))" in md
    for text in (md, page):
        assert not re.search(r"\bNone\b|\bnan\b|\bnull\b", text)
    parser = PageText()
    parser.feed(page)
    assert parser.words == markdown_words(md), "report.md and report.html say the same"
