"""The gates: each a small function over the evaluation's results that says pass or fail.

A gate whose measure was not taken fails and says why (fail closed: `passed` means proven).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gapforge_runtime.evaluation.metrics import ModelScore, delta_pct

if TYPE_CHECKING:
    from gapforge_runtime.recipe_schema import EvaluateSpec


@dataclass
class Gate:
    """One pass/fail rule and its outcome."""

    name: str
    passed: bool
    value: float
    limit: float
    detail: str


def decide_gates(
    scores: dict[str, ModelScore], require_improvement: bool, max_delta_pct: dict[str, float]
) -> list[Gate]:
    """The recipe's gates, evaluated on the scores."""
    gates = []
    base, merged = scores.get("base"), scores.get("merged")
    if require_improvement and base and merged:
        gates.append(
            Gate(
                name="require_improvement",
                passed=merged.loss < base.loss,
                value=merged.loss,
                limit=base.loss,
                detail=f"merged test loss {merged.loss:.4f} must be below base {base.loss:.4f}",
            )
        )
    for target, limit in sorted(max_delta_pct.items()):
        score = scores.get(target)
        if score is None or merged is None:
            gates.append(
                Gate(
                    name=f"max_perplexity_delta_pct[{target}]",
                    passed=False,
                    value=float("nan"),
                    limit=limit,
                    detail=f"{target} was not built or not evaluated",
                )
            )
            continue
        delta = delta_pct(score.perplexity, merged.perplexity)
        gates.append(
            Gate(
                name=f"max_perplexity_delta_pct[{target}]",
                passed=delta <= limit,
                value=delta,
                limit=limit,
                detail=f"{target} perplexity {score.perplexity:.3f} is {delta:+.2f}% vs merged (limit {limit}%)",
            )
        )
    return gates


def _comparison(
    judge: dict[str, Any] | None, candidate: str, reference: str
) -> dict[str, Any] | None:
    for c in (judge or {}).get("comparisons", []):
        if c["candidate"] == candidate and c["reference"] == reference:
            return dict(c)
    return None


def decide_comparison_gates(
    min_win_rate_vs_base: float | None,
    max_task_f1_drop_pts: dict[str, float],
    judge: dict[str, Any] | None,
    task_metrics: dict[str, Any] | None,
) -> list[Gate]:
    """The judge's and the task metrics' gates; a gate whose measure was not taken fails, saying why."""
    gates = []
    if min_win_rate_vs_base is not None:
        name = "min_win_rate_vs_base"
        found = _comparison(judge, "merged", "base")
        if found is None or found["n"] == 0:
            why = (judge or {}).get("note") or "the judge did not run"
            gates.append(
                Gate(name, False, float("nan"), min_win_rate_vs_base, f"not judged: {why}")
            )
        else:
            rate = float(found["win_rate"])
            gates.append(
                Gate(
                    name,
                    rate >= min_win_rate_vs_base,
                    rate,
                    min_win_rate_vs_base,
                    f"fine-tune's win rate vs base {rate:.3f} (95% CI {found['ci_low']:.3f}-"
                    f"{found['ci_high']:.3f}, n={found['n']}) must reach {min_win_rate_vs_base}",
                )
            )
    models = (task_metrics or {}).get("models", {})
    for target, limit in sorted(max_task_f1_drop_pts.items()):
        name = f"max_task_f1_drop_pts[{target}]"
        if target not in models or "merged" not in models:
            why = (task_metrics or {}).get("note") or f"{target} was not built or not evaluated"
            gates.append(Gate(name, False, float("nan"), limit, f"no task F1: {why}"))
            continue
        merged_f1, f1 = models["merged"]["token_f1"], models[target]["token_f1"]
        drop = merged_f1 - f1
        gates.append(
            Gate(
                name,
                drop <= limit,
                drop,
                limit,
                f"{target} token F1 {f1:.1f} vs merged {merged_f1:.1f}: {drop:+.1f} points lost "
                f"(limit {limit})",
            )
        )
    return gates


def decide_lm_eval_gates(
    max_drop_pts: dict[str, float], lm_eval: dict[str, Any] | None
) -> list[Gate]:
    """Per GGUF target: no lm-eval task metric (higher is better) may lose more than the limit in
    points against the merged model; a gate whose measure was not taken fails, saying why."""
    from gapforge_runtime.evaluation.lmeval_run import worst_drop_pts

    gates = []
    for target, limit in sorted(max_drop_pts.items()):
        name = f"max_lm_eval_drop_pts[{target}]"
        drop, where = worst_drop_pts(lm_eval or {}, target)
        if not where:
            why = (
                "evaluate.lm_eval is not set"
                if lm_eval is None
                else f"lm-eval did not score both merged and {target}"
            )
            gates.append(Gate(name, False, float("nan"), limit, f"no lm-eval scores: {why}"))
            continue
        gates.append(
            Gate(
                name,
                drop <= limit,
                drop,
                limit,
                f"{target} loses {drop:+.1f} points against merged at worst ({where}; "
                f"limit {limit})",
            )
        )
    return gates


def preference_gate(summary: dict[str, Any] | None, limit: float | None) -> list[Gate]:
    """`min_preference_accuracy`: the trained model's implicit-reward accuracy must reach it."""
    if limit is None:
        return []
    name = "min_preference_accuracy"
    if summary is None or not summary.get("pairs"):
        return [Gate(name, False, float("nan"), limit, "not measured: no preference test pairs")]
    value = float(summary["reward_accuracy"]["trained"])
    ok = not math.isnan(value) and value >= limit
    return [
        Gate(
            name,
            ok,
            value,
            limit,
            f"preference accuracy (implicit reward, chosen above rejected) {value:.3f} on "
            f"{summary['pairs']} test pairs must reach {limit} (start: 0.5; log-prob accuracy "
            f"{summary['logp_accuracy']['start']:.3f} -> {summary['logp_accuracy']['trained']:.3f})",
        )
    ]


def forgetting_gate(summary: dict[str, Any] | None, limit: float | None) -> list[Gate]:
    """`max_forgetting_pct`: loss on the parent's test set may rise at most `limit` %."""
    if limit is None:
        return []
    name = "max_forgetting_pct"
    if summary is None:
        return [Gate(name, False, float("nan"), limit, "not measured: the run has no --parent")]
    value = float(summary["forgetting_pct"])
    old = summary["old_test"]
    return [
        Gate(
            name,
            value <= limit,
            value,
            limit,
            f"loss on the parent's test set {old['start']:.4f} -> {old['trained']:.4f} "
            f"({value:+.2f}%) may rise at most {limit}%",
        )
    ]


def _by_target(limits: Mapping[Any, float]) -> dict[str, float]:
    """A gate's limits per target, as the deciders take them."""
    return {str(target): float(limit) for target, limit in limits.items()}


def evaluation_gates(
    settings: EvaluateSpec,
    scores: dict[str, ModelScore],
    results: dict[str, Any],
) -> list[Gate]:
    """Every gate the recipe sets, in the report's order, over the evaluation's results (the
    judge's, the task metrics', lm-eval's, the preference and continual summaries)."""
    return [
        *decide_gates(
            scores,
            settings.gates.require_improvement,
            _by_target(settings.gates.max_perplexity_delta_pct),
        ),
        *decide_comparison_gates(
            settings.gates.min_win_rate_vs_base,
            _by_target(settings.gates.max_task_f1_drop_pts),
            results.get("judge"),
            results.get("task_metrics"),
        ),
        *decide_lm_eval_gates(
            _by_target(settings.gates.max_lm_eval_drop_pts), results.get("lm_eval")
        ),
        *preference_gate(results.get("preference"), settings.gates.min_preference_accuracy),
        *forgetting_gate(results.get("continual"), settings.gates.max_forgetting_pct),
    ]


def as_json(scores: dict[str, ModelScore], gates: list[Gate]) -> dict[str, Any]:
    """The evaluation as plain JSON data."""
    merged = scores.get("merged")
    return {
        "models": {k: asdict(v) for k, v in scores.items()},
        "delta_vs_merged_pct": {
            k: delta_pct(v.perplexity, merged.perplexity)
            for k, v in scores.items()
            if merged and k not in ("base", "merged")
        },
        "gates": [asdict(g) for g in gates],
        "passed": all(g.passed for g in gates),
    }
