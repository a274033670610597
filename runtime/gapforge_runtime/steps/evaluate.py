"""The eval step: loss/perplexity of base, merged and every GGUF on the test split, sample
answers, the comparisons the recipe asks for (steps/comparisons.py), and the gates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge_runtime.data import reading
from gapforge_runtime.data.encoding import encode_split, prompt_text, reference_answer
from gapforge_runtime.evaluation.judge import question_text
from gapforge_runtime.files import describe_path, sha256_file, write_json_atomic
from gapforge_runtime.outputs import StepRecord, load_record, run_step
from gapforge_runtime.preflight import check_cpu_features
from gapforge_runtime.steps import comparisons
from gapforge_runtime.steps.context import RunContext, free_gpu, require, section_digest
from gapforge_runtime.steps.data import encoded
from gapforge_runtime.steps.quantize import gguf_targets, hf_targets


@dataclass
class TestSet:
    """The test split as every model sees it: the same token ids, prompts and references."""

    items: list[Any]
    records: list[dict[str, Any]]
    prompts_text: list[str]
    prompts: list[list[int]]
    stop_ids: set[int]


@dataclass
class Scored:
    """What scoring the models gave: loss per model, answers, preference and old-test scores."""

    scores: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, list[str]] = field(default_factory=dict)
    pair_scores: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    old_losses: dict[str, float] = field(default_factory=dict)


def step_eval(ctx: RunContext) -> StepRecord:
    """Loss/perplexity of base, merged and every GGUF on the test split; sample answers; gates."""
    require(ctx.out.merged / "config.json", "the merged model", "merge")
    ggufs = {t: ctx.out.gguf_file(ctx.recipe.name, t) for t in gguf_targets(ctx.recipe)}
    ggufs = {t: p for t, p in ggufs.items() if p.is_file()}
    if ggufs:
        check_cpu_features()  # before llama_cpp is imported to score them: not a SIGILL later
    quantized = {t: ctx.out.quantized_dir(t) for t in hf_targets(ctx.recipe)}
    quantized = {t: p for t, p in quantized.items() if (p / "config.json").is_file()}
    judge_file = comparisons.judge_file(ctx)
    lm_eval_tasks = comparisons.lm_eval_tasks(ctx)
    inputs = {
        "test": sha256_file(ctx.out.data / "test.jsonl"),
        "model": ctx.digest("model", ctx.model_dir),
        "merged": ctx.digest("merged", ctx.out.merged, refresh=True),
        "settings": section_digest(ctx.recipe.spec.evaluate.model_dump(mode="json")),
        **{t: sha256_file(p) for t, p in ggufs.items()},
        **{t: ctx.digest(t, p, refresh=True) for t, p in quantized.items()},
    }
    if judge_file is not None:
        inputs["judge"] = sha256_file(judge_file)
    if lm_eval_tasks is not None:
        inputs["lm_eval_tasks"] = ctx.digest("lm_eval_tasks", lm_eval_tasks)
    if ctx.parent is not None:
        inputs["parent_test"] = ctx.parent.digests["split:test"]
    if load_record(ctx.out, "quantize") is None:
        print("[eval] no GGUF files yet: scoring the base and merged models only", flush=True)

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        from gapforge_runtime.modelio import load_tokenizer

        tokenizer = load_tokenizer(ctx.model_dir)
        test = _test_set(ctx, tokenizer)
        old_items = _parent_test_items(ctx, tokenizer)
        scored = _score_transformers_models(ctx, tokenizer, test, quantized, old_items)
        _score_ggufs(ctx, tokenizer, test, ggufs, scored)
        outputs: dict[str, Any] = {"evaluation": {}}
        result = _results(
            ctx,
            test,
            scored,
            len(old_items),
            quantized,
            (judge_file, lm_eval_tasks, ggufs),
            outputs,
        )
        write_json_atomic(ctx.out.evaluation, result)
        outputs["evaluation"] = describe_path(ctx.out.evaluation)
        return outputs, {"passed": result["passed"]}

    record, _ = run_step(ctx.out, "eval", inputs, ctx.force, body)
    return record


def _test_set(ctx: RunContext, tokenizer: Any) -> TestSet:
    """The encoded test split, and the prompts of the examples whose answers are generated."""
    settings = ctx.recipe.evaluate
    fmt = ctx.recipe.data_format
    # The judge and the task metrics need more answers than the report shows.
    compares = settings.judge.enabled or settings.task_metrics
    answered = max(settings.sample_answers, settings.judge.prompts if compares else 0)
    records = reading.read_split_file(ctx.out.data / "test.jsonl")[:answered]
    prompts_text = [prompt_text(tokenizer, fmt, r) for r in records]
    prompts = [
        tokenizer(p, add_special_tokens=fmt == "completion")["input_ids"] for p in prompts_text
    ]
    stop_ids = {i for i in (tokenizer.eos_token_id,) if i is not None}
    return TestSet(encoded(ctx, tokenizer, "test"), records, prompts_text, prompts, stop_ids)


def _score_transformers_models(
    ctx: RunContext, tokenizer: Any, test: TestSet, quantized: dict[str, Path], old_items: list[Any]
) -> Scored:
    """Base, merged and each quantized checkpoint through transformers, one model at a time."""
    import torch

    from gapforge_runtime.evaluation import metrics as ev
    from gapforge_runtime.modelio import load_causal_lm

    settings = ctx.recipe.evaluate
    scored = Scored()
    pairs = comparisons.preference_pairs(ctx)
    # On a GPU the full-precision models are scored in bf16 there (a 7B in float32 on CPU is hours).
    on_gpu = torch.cuda.is_available()
    full = {"dtype": torch.bfloat16, "device_map": {"": 0}} if on_gpu else {"dtype": torch.float32}
    for label, folder in (("base", ctx.model_dir), ("merged", ctx.out.merged), *quantized.items()):
        print(f"[eval] scoring {label} ({len(test.items)} test examples)", flush=True)
        if label in quantized:
            from gapforge_runtime.export.quantize_hf import load_quantized

            model = load_quantized(folder, label)
        else:
            model = load_causal_lm(folder, **full)
        loss, count = ev.score_transformers(model, test.items)
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        scored.scores[label] = ev.ModelScore(label, loss, ev.perplexity(loss), count, size)
        outs = ev.greedy_transformers(model, test.prompts, settings.max_new_tokens, test.stop_ids)
        scored.answers[label] = [
            tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs
        ]
        if pairs and label in ("base", "merged"):
            scored.pair_scores[label] = comparisons.score_preference_pairs(
                ctx, model, tokenizer, pairs, label
            )
        if old_items and label in ("base", "merged"):
            scored.old_losses[label] = ev.score_transformers(model, old_items)[0]
        del model
        free_gpu()
    return scored


def _score_ggufs(
    ctx: RunContext, tokenizer: Any, test: TestSet, ggufs: dict[str, Path], scored: Scored
) -> None:
    """Each GGUF through llama-cpp-python, on the same token ids as the transformers models."""
    from gapforge_runtime.evaluation import metrics as ev

    max_new_tokens = ctx.recipe.evaluate.max_new_tokens
    longest = max((len(i.input_ids) for i in test.items), default=16)
    n_ctx = max(longest, max((len(p) for p in test.prompts), default=0) + max_new_tokens) + 8
    for target, path in ggufs.items():
        print(f"[eval] scoring {target} ({path.name})", flush=True)
        llm = ev.open_gguf(path, n_ctx)
        loss, count = ev.score_gguf(llm, test.items)
        scored.scores[target] = ev.ModelScore(
            target, loss, ev.perplexity(loss), count, path.stat().st_size
        )
        outs = ev.greedy_gguf(llm, test.prompts, max_new_tokens, test.stop_ids)
        scored.answers[target] = [
            tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs
        ]
        llm.close()


def _results(
    ctx: RunContext,
    test: TestSet,
    scored: Scored,
    old_examples: int,
    quantized: dict[str, Path],
    extras: tuple[Path | None, Path | None, dict[str, Path]],
    outputs: dict[str, Any],
) -> dict[str, Any]:
    """evaluation.json: the scores, the comparisons, the gates over them, and sample answers."""
    from gapforge_runtime.evaluation.gates import as_json, evaluation_gates

    judge_file, lm_eval_tasks, ggufs = extras
    settings = ctx.recipe.evaluate
    fmt = ctx.recipe.data_format
    references = [reference_answer(fmt, r) for r in test.records]
    questions = [question_text(fmt, r) for r in test.records]
    notes = [
        f"{t}: not evaluated (a quantized transformers checkpoint needs CUDA; none here)"
        for t in hf_targets(ctx.recipe)
        if t not in quantized
    ]
    found = {
        "task_metrics": comparisons.task_metrics(settings.task_metrics, scored.answers, references),
        "judge": comparisons.judge_comparisons(ctx, judge_file, questions, scored.answers, outputs),
        "lm_eval": comparisons.lm_eval_scores(ctx, lm_eval_tasks, ggufs),
        "preference": comparisons.preference_summary(ctx, scored.pair_scores),
        "continual": comparisons.continual_summary(
            ctx, scored.scores, scored.old_losses, old_examples
        ),
    }
    gates = evaluation_gates(settings, scored.scores, found)
    result = as_json(scored.scores, gates)
    result.update({k: v for k, v in found.items() if v is not None})
    result["notes"] = notes
    result["samples_shown"] = settings.sample_answers
    result["samples"] = [
        {
            "prompt": p,
            "question": questions[i],
            "reference": references[i],
            "answers": {m: a[i] for m, a in scored.answers.items()},
        }
        for i, p in enumerate(test.prompts_text)
    ]
    _print_results(scored.scores, gates, notes)
    return result


def _print_results(scores: dict[str, Any], gates: list[Any], notes: list[str]) -> None:
    for name, score in scores.items():
        print(
            f"[eval] {name:<12} loss {score.loss:.4f}  perplexity {score.perplexity:.3f}  {score.size_bytes / 1e6:.1f} MB",
            flush=True,
        )
    for gate in gates:
        print(
            f"[eval] gate {gate.name}: {'pass' if gate.passed else 'FAIL'} ({gate.detail})",
            flush=True,
        )
    for note in notes:
        print(f"[eval] note: {note}", flush=True)


def _parent_test_items(ctx: RunContext, tokenizer: Any) -> list[Any]:
    """The parent run's test split, encoded in the parent's data format (continual runs)."""
    if ctx.parent is None:
        return []
    records = reading.read_split_file(ctx.parent.test_split)
    items, _ = encode_split(
        tokenizer, ctx.parent.data_format, records, ctx.recipe.train.max_seq_length
    )
    return items
