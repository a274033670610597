"""The evaluation's detail sections: quality per model, gates, the judge, task metrics, the sample
answers, lm-eval, continual learning and preference accuracy, each built once as blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gapforge_runtime.report.document import Answer, Section, Subheading, Table, Text
from gapforge_runtime.report.labels import finite, model_label, model_order, signed_pct, size_text

ORDER_NOTE = (
    "Rows in pipeline order: the base, the merged fine-tune, then each artefact largest first."
)


def _sizes(evaluation: Mapping[str, Any]) -> dict[str, float]:
    return {n: m.get("size_bytes") or 0 for n, m in (evaluation.get("models") or {}).items()}


def _cell(value: Any, fmt: str) -> str:
    return format(value, fmt) if finite(value) else "not measured"


def quality_section(evaluation: Mapping[str, Any]) -> Section | None:
    """Test loss, perplexity and size of every model, with the changes against the merged one."""
    models = evaluation.get("models") or {}
    if not models:
        return None
    task = evaluation.get("task_metrics") or {}
    f1s = {n: m["token_f1"] for n, m in (task.get("models") or {}).items() if m.get("n")}
    with_f1 = bool(task.get("enabled")) and bool(f1s)
    merged = models.get("merged") or {}
    headers = ["model", "size", "test loss", "perplexity", "perplexity vs merged"]
    headers += ["token F1", "F1 vs merged"] if with_f1 else []
    rows = []
    for name in model_order(models, _sizes(evaluation)):
        m = models[name]
        change = "reference"
        if name != "merged":
            change = (
                signed_pct((m["perplexity"] - merged["perplexity"]) / merged["perplexity"] * 100)
                if finite(m["perplexity"]) and finite(merged.get("perplexity"))
                else "not measured"
            )
        row = [model_label(name), size_text(m["size_bytes"]) if m.get("size_bytes") else "not measured",
               _cell(m["loss"], ".4f"), _cell(m["perplexity"], ".3f"), change]  # fmt: skip
        if with_f1:
            f1, ref = f1s.get(name), f1s.get("merged")
            gap = (
                "reference"
                if name == "merged"
                else _cell(None if f1 is None or ref is None else f1 - ref, "+.1f")
            )
            row += [_cell(f1, ".1f"), gap]
        rows.append(row)
    tokens = merged.get("tokens") or next(iter(models.values())).get("tokens")
    about = f"{ORDER_NOTE} Loss is the mean negative log-likelihood per answer token"
    about += f" over {tokens:,} test tokens" if finite(tokens) else ""
    if with_f1:
        about += f"; token F1 in points (0-100) on {task.get('prompts', 'the')} test prompts"
    about += "."
    return Section("Test split quality", [Text(about), Table(headers, rows)])


def gates_section(evaluation: Mapping[str, Any]) -> Section | None:
    """Every gate of the recipe with its outcome; the gate's recipe key names what to change."""
    gates = evaluation.get("gates") or []
    if not gates:
        return None
    rows = [[f"`{g['name']}`", "pass" if g["passed"] else "FAIL", g["detail"]] for g in gates]
    return Section("Gates", [Table(["gate (recipe key)", "result", "detail"], rows)])


def judge_section(evaluation: Mapping[str, Any]) -> Section | None:
    """The judge's win rates, or why it did not judge."""
    judge = evaluation.get("judge") or {}
    if not judge:
        return None
    if not judge.get("enabled"):
        return Section("Judged against the base", [Text(f"No judge: {judge.get('note', '')}")])
    rows = [
        [f"{model_label(c['candidate'])} vs {model_label(c['reference'])}", f"{c['win_rate']:.3f}",
         f"{c['ci_low']:.3f} to {c['ci_high']:.3f}", *(str(c[k]) for k in
         ("wins", "losses", "ties", "inconsistent", "unparseable", "n"))]
        for c in judge.get("comparisons", [])
    ]  # fmt: skip
    about = (
        f"Judge: `{judge.get('model')}` ({judge.get('file')}), llama.cpp, greedy, "
        f"{judge.get('max_verdict_tokens')} verdict tokens, n_ctx {judge.get('n_ctx')}; "
        f"{judge.get('prompts')} prompts x 2 orders, {judge.get('calls')} calls in "
        f"{judge.get('seconds')} s. Win rate = (wins + ties/2) / n, 95% percentile bootstrap "
        f"({judge.get('bootstrap')} resamples). Limits: " + " ".join(judge.get("limits", []))
    )
    headers = ["pair", "win rate", "95% CI", "wins", "losses", "ties", "orders disagree",
               "unparseable verdicts", "prompts"]  # fmt: skip
    return Section("Judged against the base", [Text(about), Table(headers, rows)])


def task_section(evaluation: Mapping[str, Any]) -> Section | None:
    """Exact match, token F1 and ROUGE-L per model against the test split's references."""
    task = evaluation.get("task_metrics") or {}
    if not task:
        return None
    if not task.get("enabled"):
        return Section("Task metrics", [Text(f"Not measured: {task.get('note', '')}")])
    models = task.get("models", {})
    rows = [
        [model_label(n), _cell(m["exact_match"], ".1f"), _cell(m["token_f1"], ".1f"),
         _cell(m["rouge_l"], ".1f"), str(m["n"])]
        for n, m in ((n, models[n]) for n in model_order(models, _sizes(evaluation)))
    ]  # fmt: skip
    return Section(
        "Task metrics (points, against the test split's references)",
        [Text(ORDER_NOTE), Table(["model", "exact match", "token F1", "ROUGE-L", "prompts"], rows)],
    )


ANSWER_LIMIT = 2000
"""Characters of one answer shown (max_new_tokens bounds them already; this bounds a runaway)."""


def _whole(text: str) -> str:
    text = str(text).strip()
    return text if len(text) <= ANSWER_LIMIT else text[:ANSWER_LIMIT] + " … (cut here)"


def samples_section(evaluation: Mapping[str, Any]) -> Section | None:
    """One block per prompt: the prompt, the reference, then each model's answer whole."""
    samples = (evaluation.get("samples") or [])[: evaluation.get("samples_shown", 3)]
    if not samples:
        return None
    blocks: list[Any] = [
        Text("Greedy answers to the first test prompts, models in pipeline order.")
    ]
    for i, sample in enumerate(samples, start=1):
        answers = sample.get("answers") or {}
        blocks += [
            Subheading(f"Prompt {i}"),
            Answer("Prompt", _whole(sample.get("question") or sample["prompt"])),
            Answer("Reference", _whole(sample["reference"])),
        ]
        blocks += [
            Answer(model_label(m), _whole(answers[m]))
            for m in model_order(answers, _sizes(evaluation))
        ]
    return Section("Sample answers", blocks)


def lm_eval_section(evaluation: Mapping[str, Any]) -> Section | None:
    """lm-eval's scores: one row per task and metric, one column per model."""
    lm_eval = evaluation.get("lm_eval")
    if not lm_eval:
        return None
    targets = model_order(lm_eval.get("targets", {}), _sizes(evaluation))
    rows: list[list[str]] = []
    for task in lm_eval.get("tasks", []):
        found = {t: lm_eval["targets"][t].get(task, {}) for t in targets}
        for metric in sorted({m for f in found.values() for m in f.get("metrics", {})}):
            row = [task, metric]
            for f in found.values():
                value, err = f.get("metrics", {}).get(metric), f.get("stderr", {}).get(metric)
                cell = f"{value:.4f}" + (f" ± {err:.4f}" if finite(err) and err else "")
                row.append(cell if finite(value) else "not measured")
            n = next((f["n"] for f in found.values() if finite(f.get("n"))), None)
            rows.append([*row, "not recorded" if n is None else str(n)])
    text = (
        f"lm-evaluation-harness {lm_eval.get('lm_eval_version')}, custom tasks of "
        f"`{lm_eval.get('tasks_folder')}/` over local JSONL, offline; limit "
        f"{lm_eval.get('limit') or 'none'}, few-shot {lm_eval.get('num_fewshot') or 'as the tasks say'}; "
        "GGUF files through llama.cpp in process (greedy generation), with the merged model's "
        f"tokenizer; {lm_eval.get('total_seconds')} s. ± is lm-eval's standard error."
    )
    notes = " ".join(lm_eval.get("notes", []))
    text += f" Notes: {notes}" if notes else ""
    headers = ["task", "metric", *(model_label(t) for t in targets), "documents"]
    return Section("lm-evaluation-harness tasks", [Text(text), Table(headers, rows)])


def continual_section(evaluation: Mapping[str, Any]) -> Section | None:
    """Loss on the parent's test set and the new one, before (the parent) and after."""
    continual = evaluation.get("continual")
    if not continual:
        return None
    old, new = continual["old_test"], continual["new_test"]
    change = (new["trained"] - new["start"]) / new["start"] * 100 if new["start"] else None
    rows = [
        ["parent's test set (forgetting)", f"{old['start']:.4f}", f"{old['trained']:.4f}",
         signed_pct(continual["forgetting_pct"])],
        ["this run's test set", f"{new['start']:.4f}", f"{new['trained']:.4f}",
         signed_pct(change) if change is not None else "not measured"],
    ]  # fmt: skip
    parent = continual["parent"]
    note = (
        f"Continued from {parent['recipe']['name']} {parent['recipe']['version']} "
        f"({parent['path']}; manifest sha256 {parent['manifest_sha256'][:16]}, adapter "
        f"{parent['adapter_sha256'][:16]}); {continual['replay_ratio']:.0%} of the training set "
        "replayed from its training split. Here Base is the parent's merged model."
    )
    table = Table(["test set", "loss of the parent", "loss after", "change"], rows)
    return Section("Continual learning", [table, Text(note)])


PREFERENCE_MEASURES = (
    ("reward_accuracy", "preference accuracy (implicit reward, chosen above rejected)"),
    ("reward_margin", "mean reward margin (beta x log-ratio, chosen minus rejected)"),
    ("logp_accuracy", "log-prob accuracy (the model alone: log p(chosen) > log p(rejected))"),
    ("logp_margin", "mean log-prob margin (chosen minus rejected)"),
)


def preference_section(evaluation: Mapping[str, Any]) -> Section | None:
    """DPO's held-out pairs, before (the starting model) and after training."""
    preference = evaluation.get("preference")
    if not preference:
        return None
    rows = [
        [label, _cell(preference[key]["start"], ".4f"), _cell(preference[key]["trained"], ".4f")]
        for key, label in PREFERENCE_MEASURES
    ]
    note = (
        f"{preference['pairs']} held-out pairs, beta {preference['beta']}. The reference of the "
        "implicit reward is the starting model, so before training every margin is 0 and the "
        "accuracy 0.5 (ties count half)."
    )
    return Section(
        "Preference accuracy", [Table(["measure", "starting model", "trained"], rows), Text(note)]
    )
