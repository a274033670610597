"""The report's first screen: one sentence per question a reviewer signs off on.

Did the fine-tune help (against the base)? What does each artefact cost (against the merged
model)? Which one to ship under the recipe's gates? Each answer is decided from the evaluation's
numbers alone; where a number was not measured the sentence says so instead of guessing, and an
artefact no gate checks is never recommended (fail closed: shipping it is not proven safe).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gapforge_runtime.report.labels import finite, model_label, model_order, signed_pct, size_text


def _change_pct(value: float, reference: float) -> float:
    return (value - reference) / reference * 100.0


def _f1(evaluation: Mapping[str, Any], name: str) -> float | None:
    task = evaluation.get("task_metrics") or {}
    found = (task.get("models") or {}).get(name) if task.get("enabled") else None
    if not found or not found.get("n") or not finite(found.get("token_f1")):
        return None
    return float(found["token_f1"])


def _judged(evaluation: Mapping[str, Any], candidate: str, reference: str) -> dict[str, Any] | None:
    judge = evaluation.get("judge") or {}
    for c in judge.get("comparisons") or []:
        if c["candidate"] == candidate and c["reference"] == reference and c.get("n"):
            return dict(c)
    return None


def _yes_no(signals: list[bool | None]) -> str:
    decided = [s for s in signals if s is not None]
    if decided and all(decided):
        return "Yes"
    if decided and not any(decided):
        return "No"
    return "Mixed" if decided else "Not decided"


def helped(evaluation: Mapping[str, Any]) -> str:
    """Did the fine-tune help: test loss, task F1, the judge and preference accuracy vs the base."""
    models = evaluation.get("models") or {}
    base, merged = models.get("base"), models.get("merged")
    if not base or not merged or not (finite(base["loss"]) and finite(merged["loss"])):
        return "Not known: the evaluation did not score both the base and the merged model."
    facts = [
        f"test loss {base['loss']:.4f} → {merged['loss']:.4f} "
        f"({signed_pct(_change_pct(merged['loss'], base['loss']))})"
    ]
    signals: list[bool | None] = [merged["loss"] < base["loss"]]
    f1_base, f1_merged = _f1(evaluation, "base"), _f1(evaluation, "merged")
    if f1_base is not None and f1_merged is not None:
        n = evaluation["task_metrics"]["models"]["merged"]["n"]
        facts.append(
            f"task token F1 {f1_base:.1f} → {f1_merged:.1f} points "
            f"({f1_merged - f1_base:+.1f}, {n} prompts, no interval recorded)"
        )
        signals.append(f1_merged >= f1_base)
    c = _judged(evaluation, "merged", "base")
    if c is not None:
        facts.append(
            f"judge win rate {c['win_rate']:.3f} (95% CI {c['ci_low']:.3f} to {c['ci_high']:.3f}, "
            f"{c['n']} prompts{', no difference found' if c['ci_low'] <= 0.5 <= c['ci_high'] else ''})"
        )
        signals.append(True if c["ci_low"] > 0.5 else False if c["ci_high"] < 0.5 else None)
    elif (evaluation.get("judge") or {}).get("note"):
        facts.append(f"no judge verdict ({evaluation['judge']['note']})")
    preference = evaluation.get("preference") or {}
    accuracy = preference.get("reward_accuracy") or {}
    if finite(accuracy.get("start")) and finite(accuracy.get("trained")):
        facts.append(
            f"preference accuracy {accuracy['start']:.3f} → {accuracy['trained']:.3f} "
            f"({preference.get('pairs')} held-out pairs)"
        )
        signals.append(accuracy["trained"] > accuracy["start"])
    return f"{_yes_no(signals)}. Against the base: " + "; ".join(facts) + "."


def artefacts(evaluation: Mapping[str, Any]) -> list[str]:
    """The evaluated artefacts other than the base and merged models, largest first."""
    models = evaluation.get("models") or {}
    sizes = {n: m.get("size_bytes") or 0 for n, m in models.items()}
    return [n for n in model_order(models, sizes) if n not in ("base", "merged")]


def costs(evaluation: Mapping[str, Any]) -> str:
    """What each artefact costs against the merged model: size, perplexity change, F1 change."""
    models = evaluation.get("models") or {}
    merged = models.get("merged")
    built = artefacts(evaluation)
    if not merged or not built:
        return "Nothing to compare: the evaluation scored no quantized artefact beside the merged model."
    deltas = evaluation.get("delta_vs_merged_pct") or {}
    f1_merged = _f1(evaluation, "merged")
    parts = []
    for name in built:
        m = models[name]
        bits = [f"{model_label(name)} {size_text(m['size_bytes'])}"]
        if merged.get("size_bytes"):
            bits[0] += f" ({m['size_bytes'] / merged['size_bytes']:.0%} of merged)"
        if finite(deltas.get(name)):
            bits.append(f"perplexity {signed_pct(deltas[name])}")
        f1 = _f1(evaluation, name)
        if f1 is not None and f1_merged is not None:
            bits.append(f"token F1 {f1 - f1_merged:+.1f} points")
        parts.append(", ".join(bits))
    sentence = f"Against Merged ({size_text(merged['size_bytes'])}): " + "; ".join(parts)
    task = evaluation.get("task_metrics") or {}
    if not task.get("enabled"):
        sentence += f" (task F1 not measured: {task.get('note') or 'the evaluation has none'})"
    return sentence + "."


def gate_target(name: str) -> str | None:
    """The artefact a gate checks (`max_perplexity_delta_pct[gguf:q8_0]` → `gguf:q8_0`), or None
    for a gate on the fine-tune itself (`require_improvement`, `min_win_rate_vs_base`, …)."""
    if name.endswith("]") and "[" in name:
        return name[name.index("[") + 1 : -1]
    return None


def ship(evaluation: Mapping[str, Any]) -> str:
    """The smallest artefact that passes every gate that applies to it, or why there is none."""
    gates = evaluation.get("gates") or []
    if not gates:
        return "none: the recipe names no gate, so no artefact is proven fit to ship."
    run_gates = [g for g in gates if gate_target(g["name"]) is None]
    failed = [g for g in run_gates if not g["passed"]]
    if failed:
        names = ", ".join(f"`{g['name']}`" for g in failed)
        return f"none: gate {names} failed ({failed[0]['detail']})."
    models = evaluation.get("models") or {}
    candidates = sorted(
        (n for n in models if n != "base"), key=lambda n: (models[n].get("size_bytes") or 0, n)
    )
    passed_over: list[str] = []
    for name in candidates:
        own = [g for g in gates if gate_target(g["name"]) == name]
        checked_by = own if name != "merged" else run_gates
        lost = [g for g in own if not g["passed"]]
        if checked_by and not lost:
            checks = ", ".join(f"`{g['name']}`" for g in checked_by)
            found = f"{model_label(name)} ({size_text(models[name]['size_bytes'])}): the smallest "
            found += f"artefact that passes every gate that applies to it ({checks})"
            return found + (f"; passed over: {'; '.join(passed_over)}." if passed_over else ".")
        why = f"gate `{lost[0]['name']}` failed" if lost else "no gate of the recipe checks it"
        passed_over.append(f"{model_label(name)} ({why})")
    return "none: " + "; ".join(passed_over) + "."


def verdict_items(evaluation: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The three questions and their one-sentence answers, in reading order."""
    if not evaluation:
        return [("Not evaluated:", "the run has no evaluation yet, so nothing is decided.")]
    return [
        ("Did the fine-tune help?", helped(evaluation)),
        ("What does each artefact cost?", costs(evaluation)),
        ("Which to ship?", ship(evaluation)),
    ]
