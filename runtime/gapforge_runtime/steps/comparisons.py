"""What the eval step measures beyond loss: the judge, task metrics, lm-eval, preference accuracy
and forgetting, each only when the recipe asks for it, each a JSON section of evaluation.json."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gapforge_runtime.data import reading
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import describe_path
from gapforge_runtime.preflight import check_cpu_features, parameter_count
from gapforge_runtime.recipe_schema import GGUF_TARGETS
from gapforge_runtime.steps.context import RunContext


def judge_file(ctx: RunContext) -> Path | None:
    """The judge's GGUF when the recipe names one; None for no judge or `base` (made in the step)."""
    judge = ctx.recipe.evaluate.judge
    if not judge.enabled or judge.model == "base":
        return None
    from gapforge_runtime.config import shipped_model_dir

    folder = shipped_model_dir(judge.model)
    found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if len(found) != 1:
        raise RuntimeFailure(
            f"evaluate.judge.model: '{judge.model}' should be the image's models/{judge.model}/ with one "
            f"GGUF file; {folder} holds {len(found)}. Name an entry of the recipe's models: with a gguf "
            "source (the builder ships it there), or 'base', or set evaluate.judge.enabled: false."
        )
    return found[0]


def lm_eval_tasks(ctx: RunContext) -> Path | None:
    """The recipe's lm-eval task folder (beside recipe.json, where the builder ships it), or None."""
    spec = ctx.recipe.evaluate.lm_eval
    if spec is None:
        return None
    folder = (ctx.recipe.path.parent / spec.tasks).resolve()
    if not folder.is_dir():
        raise RuntimeFailure(
            f"evaluate.lm_eval.tasks: {spec.tasks} is not a folder beside the recipe "
            f"({folder}). The builder ships the task folder with the recipe: rebuild the image, "
            "or drop evaluate.lm_eval from the recipe."
        )
    return folder


def lm_eval_targets(ctx: RunContext) -> list[str]:
    """The models lm-eval runs on: the recipe's list, or merged plus the recipe's GGUF targets."""
    spec = ctx.recipe.evaluate.lm_eval
    if spec is None:
        return []
    if spec.targets is not None:
        return list(spec.targets)
    return ["merged", *[t for t in ctx.recipe.quantize if t in GGUF_TARGETS]]


def lm_eval_scores(
    ctx: RunContext, tasks: Path | None, ggufs: dict[str, Path]
) -> dict[str, Any] | None:
    """lm-evaluation-harness over the recipe's custom tasks (None when the recipe has none)."""
    from gapforge_runtime.evaluation.lmeval_run import run_lm_eval

    spec = ctx.recipe.evaluate.lm_eval
    if spec is None or tasks is None:
        return None
    models: dict[str, Path] = {}
    notes = []
    for target in lm_eval_targets(ctx):
        path = {"base": ctx.model_dir, "merged": ctx.out.merged}.get(target) or ggufs.get(target)
        if path is None:
            notes.append(f"{target}: not built by this run, so not evaluated by lm-eval")
            continue
        models[target] = path
    work = ctx.out.root / ".lm_eval"
    try:
        result = run_lm_eval(tasks, work, models, ctx.out.merged, spec.limit, spec.num_fewshot)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the copied tasks and the `datasets` cache
    result["notes"] = notes
    for note in notes:
        print(f"[eval] lm-eval note: {note}", flush=True)
    return result


def task_metrics(
    enabled: bool, answers: dict[str, list[str]], references: list[str]
) -> dict[str, Any]:
    """Exact match, token F1 and ROUGE-L per model, or why they were skipped."""
    from gapforge_runtime.evaluation.taskmetrics import score_models

    if not enabled:
        print("[eval] task metrics skipped (evaluate.task_metrics: false)", flush=True)
        return {"enabled": False, "note": "skipped: evaluate.task_metrics is false", "models": {}}
    models = score_models(answers, references)
    for name, m in models.items():
        print(
            f"[eval] {name:<12} EM {m['exact_match']:.1f}  F1 {m['token_f1']:.1f}  "
            f"ROUGE-L {m['rouge_l']:.1f}  (n={m['n']})",
            flush=True,
        )
    return {"enabled": True, "note": "", "prompts": len(references), "models": models}


def judge_comparisons(
    ctx: RunContext,
    judge_file: Path | None,
    questions: list[str],
    answers: dict[str, list[str]],
    outputs: dict[str, Any],
) -> dict[str, Any]:
    """Every model judged pairwise against the base (quantized ones also against merged)."""
    from gapforge_runtime.evaluation import judge as jd

    spec = ctx.recipe.evaluate.judge
    if not spec.enabled:
        print("[eval] judge skipped (evaluate.judge.enabled: false)", flush=True)
        return {"enabled": False, "note": "skipped: evaluate.judge.enabled is false"}
    weak = jd.too_weak_to_judge(spec.model, spec.force, parameter_count(ctx.model_dir))
    if weak is not None:
        print(f"[eval] judge skipped: {weak}", flush=True)
        return {"enabled": False, "note": f"skipped: {weak}"}
    started = time.monotonic()
    if judge_file is None:  # `base`: the base model's own GGUF f16, made here once per evaluation
        judge_file = _base_judge_gguf(ctx, outputs)
    n = min(spec.prompts, len(questions))
    pairs = jd.comparisons_for(list(answers))
    prompts = [(questions[i], answers[c][i], answers[r][i]) for c, r in pairs for i in range(n)]
    n_ctx, trained = jd.fitted_n_ctx(judge_file, prompts)
    llm_judge = jd.LlamaJudge(judge_file, n_ctx)
    try:
        found = [
            _compare(
                llm_judge,
                pair,
                questions[:n],
                {m: a[:n] for m, a in answers.items()},
                spec.bootstrap,
            )
            for pair in pairs
        ]
        calls, too_long = llm_judge.calls, llm_judge.too_long
    finally:
        llm_judge.close()
    limits = [
        "A small judge (the base model itself, for small recipes) is weak and position-biased: "
        "each pair is judged in both orders and disagreements are ties; read win rates near 0.5 "
        "as 'no difference found', not as equal quality."
    ]
    if n_ctx > trained:
        limits.append(f"judge context {n_ctx} exceeds its training context {trained}")
    if too_long:
        limits.append(f"{too_long} judge prompts did not fit the context (counted as unparseable)")
    return {
        "enabled": True,
        "note": "",
        "model": spec.model,
        "file": judge_file.name,
        "prompts": n,
        "orders": 2,
        "calls": calls,
        "n_ctx": n_ctx,
        "max_verdict_tokens": jd.MAX_VERDICT_TOKENS,
        "bootstrap": spec.bootstrap,
        "seconds": round(time.monotonic() - started, 2),
        "limits": limits,
        "comparisons": found,
    }


def _base_judge_gguf(ctx: RunContext, outputs: dict[str, Any]) -> Path:
    """The judge `base`: the base model converted to GGUF f16 here, recorded as an output."""
    from gapforge_runtime.export.quantize import check_llama_cpp, convert_to_f16

    path = ctx.out.gguf / f"{ctx.recipe.name}-base-f16.gguf"
    print(f"[eval] judge: base model → {path.name}", flush=True)
    check_cpu_features()
    convert_to_f16(check_llama_cpp(ctx.llama_cpp), ctx.model_dir, path)
    outputs["judge:base-gguf"] = describe_path(path)
    return path


def _compare(
    llm_judge: Any,
    pair: tuple[str, str],
    questions: list[str],
    answers: dict[str, list[str]],
    bootstrap: int,
) -> dict[str, Any]:
    """One candidate judged against one reference on every question, in both orders."""
    from gapforge_runtime.evaluation import judge as jd

    candidate, reference = pair
    c = jd.compare(
        candidate,
        reference,
        questions,
        answers[candidate],
        answers[reference],
        llm_judge.ask,
        bootstrap,
    )
    print(
        f"[eval] judge {candidate} vs {reference}: win rate {c.win_rate:.3f} "
        f"[{c.ci_low:.3f}, {c.ci_high:.3f}]  {c.wins}W {c.losses}L {c.ties}T "
        f"({c.inconsistent} inconsistent, {c.unparseable} unparseable)",
        flush=True,
    )
    return asdict(c)


def preference_pairs(ctx: RunContext) -> list[dict[str, Any]]:
    """The held-out preference pairs (the test split of a `preference` recipe), else none."""
    if ctx.recipe.data_format != "preference":
        return []
    return reading.read_split_file(ctx.out.data / "test.jsonl")


def score_preference_pairs(
    ctx: RunContext, model: Any, tokenizer: Any, pairs: list[dict[str, Any]], label: str
) -> list[tuple[float, float]]:
    from gapforge_runtime.methods.preference import score_pairs

    print(f"[eval] preference: {label} on {len(pairs)} held-out pairs", flush=True)
    return score_pairs(model, tokenizer, pairs, ctx.recipe.train.max_seq_length)


def preference_summary(
    ctx: RunContext, pair_scores: dict[str, list[tuple[float, float]]]
) -> dict[str, Any] | None:
    """Preference accuracy and margins, before (the starting model) and after training."""
    from gapforge_runtime.methods.preference import summarize

    if "base" not in pair_scores or "merged" not in pair_scores:
        return None
    summary = summarize(pair_scores["base"], pair_scores["merged"], ctx.recipe.train.dpo.beta)
    for key in ("logp_accuracy", "reward_accuracy", "reward_margin"):
        values = summary[key]
        print(f"[eval] preference {key}: start {values['start']:.3f} → trained "
              f"{values['trained']:.3f}", flush=True)  # fmt: skip
    return summary


def continual_summary(
    ctx: RunContext, scores: dict[str, Any], old_losses: dict[str, float], examples: int
) -> dict[str, Any] | None:
    """Loss on the parent's test set and on the new one, before (the parent) and after."""
    from gapforge_runtime.methods.continual import forgetting

    if ctx.parent is None or "base" not in old_losses or "merged" not in old_losses:
        return None
    pct = forgetting(old_losses["base"], old_losses["merged"])
    summary = {
        "parent": ctx.parent.lineage(),
        "replay_ratio": ctx.recipe.replay_ratio,
        "old_test": {"start": old_losses["base"], "trained": old_losses["merged"], "examples": examples},
        "new_test": {"start": scores["base"].loss, "trained": scores["merged"].loss},
        "forgetting_pct": pct,
    }  # fmt: skip
    print(f"[eval] parent's test set: loss {old_losses['base']:.4f} → {old_losses['merged']:.4f} "
          f"({pct:+.2f}%)", flush=True)  # fmt: skip
    return summary
