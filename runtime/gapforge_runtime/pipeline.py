"""The steps of a run, in order: data → train → merge → quantize → eval → report.

Each step is a function of one `RunContext`; it checks its inputs, is skipped when its recorded
inputs are unchanged, and writes its outputs atomically.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gapforge_runtime.config import GGUF_TARGETS, HF_TARGETS, RecipeSettings
from gapforge_runtime.data import reading as data_mod
from gapforge_runtime.data.encoding import (
    encode_split,
    encoded_split,
    prompt_text,
    reference_answer,
)
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.evaluation.judge import question_text
from gapforge_runtime.files import describe_path, sha256_file, write_json_atomic
from gapforge_runtime.launch.nodes import Nodes
from gapforge_runtime.outputs import Layout, StepRecord, claim_output, load_record, run_step
from gapforge_runtime.preflight import (
    check_cpu_features,
    check_free_space,
    check_method,
    check_model_dir,
    check_targets,
    estimate_output_bytes,
    parameter_count,
)


@dataclass
class RunContext:
    """Everything a step needs: the recipe, the inputs, the output folder and the options."""

    recipe: RecipeSettings
    model_dir: Path
    data_file: Path
    out: Layout
    llama_cpp: Path | None = None
    validation_file: Path | None = None
    test_file: Path | None = None
    force: bool = False
    resume: bool = False
    nproc: int = 1
    """Training processes (torchrun); 1 trains in this process."""
    nodes: Nodes = field(default_factory=Nodes)
    """This node's place in a job across nodes (gapforge_runtime.launch.nodes); one node by default."""
    observers: list[Any] = field(default_factory=list)
    """TrainingObservers (MLflow, Prometheus) that see every logging step of training."""
    parent: Any = None
    """continual.Parent: the earlier run this one continues (`--parent`); `model_dir` is then its
    merged model, and `base_dir` the image's base model."""
    base_dir: Path | None = None
    _digests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self, name: str, path: Path, refresh: bool = False) -> dict[str, Any]:
        """sha256/size of an input or output, cached for the life of this process."""
        if refresh or name not in self._digests:
            self._digests[name] = describe_path(path)
        return self._digests[name]

    def digest(self, name: str, path: Path, refresh: bool = False) -> str:
        """Just the sha256 of `describe`."""
        return str(self.describe(name, path, refresh)["sha256"])


def _section_digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_identity(ctx: RunContext) -> dict[str, str]:
    """What makes a run this run: the recipe, the data and the base model."""
    identity = {"recipe_sha256": ctx.recipe.sha256, "data_sha256": sha256_file(ctx.data_file)}
    if ctx.parent is not None:
        identity["parent_manifest_sha256"] = ctx.parent.manifest_sha256
    for label, path in (("validation_sha256", ctx.validation_file), ("test_sha256", ctx.test_file)):
        if path is not None:
            identity[label] = sha256_file(path)
    return identity


def prepare(ctx: RunContext) -> None:
    """Checks shared by every step, then claim the output folder."""
    check_model_dir(ctx.model_dir)
    if not ctx.data_file.is_file():
        raise RuntimeFailure(
            f"--data {ctx.data_file}: no such file. Pass your JSONL data file with --data."
        )
    _check_parent(ctx)
    claim_output(ctx.out, data_identity(ctx), ctx.force)


def _check_parent(ctx: RunContext) -> None:
    """A continual run: the parent was trained on this base, and its data can be replayed."""
    from gapforge_runtime.methods.continual import check_replay, check_same_base

    check_replay(ctx.parent, ctx.recipe.replay_ratio, ctx.recipe.data_format)
    if ctx.parent is not None and ctx.base_dir is not None:
        check_same_base(ctx.parent, ctx.digest("base", ctx.base_dir), ctx.base_dir)


# --- data ---------------------------------------------------------------------------------------


def step_data(ctx: RunContext) -> StepRecord:
    """Validate the data (every bad line listed), dedupe, split, clean it (PII, near-duplicates,
    test-into-training leaks), and measure its encoding."""
    from gapforge_runtime.data.hygiene import apply_hygiene
    from gapforge_runtime.data.hygiene import summary as hygiene_summary
    from gapforge_runtime.data.hygiene.lengths import measure_lengths
    from gapforge_runtime.methods.sft import summarize_encoding
    from gapforge_runtime.modelio import load_tokenizer

    recipe = ctx.recipe
    inputs = {
        "data": sha256_file(ctx.data_file),
        "settings": _section_digest(
            recipe.data_format,
            recipe.train.seed,
            recipe.train.max_seq_length,
            asdict(recipe.pii),
            asdict(recipe.dedupe),
        ),
        "tokenizer": _section_digest(
            *(sha256_file(p) for p in sorted(ctx.model_dir.glob("tokenizer*")))
        ),
    }
    extra = {"validation": ctx.validation_file, "test": ctx.test_file}
    inputs.update({k: sha256_file(v) for k, v in extra.items() if v is not None})
    if ctx.parent is not None and recipe.replay_ratio > 0:
        inputs["replay"] = _section_digest(recipe.replay_ratio, ctx.parent.digests["split:train"])

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        fmt = recipe.data_format
        examples = data_mod.read_examples(ctx.data_file, fmt)
        given = {
            k: data_mod.read_examples(v, fmt, label=f"--{k}") if v is not None else None
            for k, v in extra.items()
        }
        split = data_mod.split_examples(
            examples, recipe.train.seed, given["validation"], given["test"]
        )
        sources = {
            "train": str(ctx.data_file),
            **{k: str(extra[k] if given[k] is not None else ctx.data_file) for k in extra},
        }
        # Before anything is written: a `fail` finding stops the run with no split on disk.
        hygiene = apply_hygiene(split, sources, recipe.pii, recipe.dedupe)
        replayed = _replay(ctx, split)
        paths = data_mod.write_split(split, ctx.out.data)
        tokenizer = load_tokenizer(ctx.model_dir)
        hygiene["lengths"] = measure_lengths(
            {k: [e.record for e in getattr(split, k)] for k in paths},
            fmt,
            tokenizer,
            recipe.train.max_seq_length,
        )
        details: dict[str, Any] = {
            "format": fmt,
            "examples_read": len(examples),
            "duplicates_removed": split.duplicates_removed,
            "train_examples": len(split.train),
            "validation_examples": len(split.validation),
            "test_examples": len(split.test),
            "split": "operator files"
            if any(given.values())
            else "{:.0%}/{:.0%}/{:.0%}".format(*split.ratios),
            "seed": recipe.train.seed,
        }
        if replayed:
            details["replay_examples"] = replayed
            details["replay_ratio"] = recipe.replay_ratio
        print(
            f"[data] {len(examples)} examples read, {split.duplicates_removed} exact duplicates removed",
            flush=True,
        )
        print(f"[data] hygiene: {hygiene_summary(hygiene)}", flush=True)
        for name, path in paths.items():
            records = data_mod.read_split_file(path)
            _, stats = encode_split(tokenizer, fmt, records, recipe.train.max_seq_length)
            print(summarize_encoding(name, stats, recipe.train.max_seq_length), flush=True)
            details[f"{name}_tokens"] = stats.tokens
            details[f"{name}_truncated"] = stats.truncated
            details[f"{name}_dropped_no_target"] = stats.no_target_left
        details["hygiene"] = hygiene
        outputs = {name: describe_path(path) for name, path in paths.items()}
        return outputs, details

    record, _ = run_step(ctx.out, "data", inputs, ctx.force, body)
    return record


def _replay(ctx: RunContext, split: data_mod.DataSplit) -> int:
    """Mix the parent's training examples into the training split (already cleaned in its run)."""
    from gapforge_runtime.methods.continual import replay_records

    if ctx.parent is None or ctx.recipe.replay_ratio <= 0:
        return 0
    records = replay_records(
        ctx.parent, len(split.train), ctx.recipe.replay_ratio, ctx.recipe.train.seed
    )
    split.train += [data_mod.Example(line=0, record=r) for r in records]
    print(f"[data] replay: {len(records)} examples of the parent's training split "
          f"({ctx.recipe.replay_ratio:.0%} of the training set)", flush=True)  # fmt: skip
    return len(records)


def _encoded(ctx: RunContext, tokenizer: Any, split: str) -> list[Any]:
    return encoded_split(ctx.recipe, tokenizer, ctx.out.data, split)


# --- train --------------------------------------------------------------------------------------


def step_train(ctx: RunContext) -> StepRecord:
    """Train the LoRA adapter (resumable), after checking the method's hardware and the free disk."""
    from gapforge_runtime.methods.sft import TrainResult, train_adapter, training_items
    from gapforge_runtime.modelio import load_tokenizer

    check_method(ctx.recipe.train.adapter_method)
    check_targets(ctx.recipe.quantize)
    if gguf_targets(ctx.recipe):
        check_cpu_features()  # before hours of training, not at the first quantization
    step_data(ctx)
    check_memory(ctx)
    inputs = {
        "model": ctx.digest("model", ctx.model_dir),
        "train": sha256_file(ctx.out.data / "train.jsonl"),
        "validation": sha256_file(ctx.out.data / "validation.jsonl"),
        "settings": _section_digest(ctx.recipe.raw.get("lora"), ctx.recipe.raw.get("train")),
    }

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        check_free_space(ctx.out.root, estimate_output_bytes(ctx.model_dir, ctx.recipe.quantize))
        if ctx.force and not ctx.resume:
            shutil.rmtree(ctx.out.checkpoints, ignore_errors=True)
        if not ctx.resume:
            ctx.out.train_log.unlink(missing_ok=True)
        if ctx.nproc > 1 or ctx.nodes.multi:
            from gapforge_runtime.launch.torchrun import launch_training

            spec = {
                "recipe": str(ctx.recipe.path), "model_dir": str(ctx.model_dir), "data_dir": str(ctx.out.data),
                "checkpoints": str(ctx.out.checkpoints), "adapter": str(ctx.out.adapter),
                "log_file": str(ctx.out.train_log), "resume": ctx.resume,
            }  # fmt: skip
            result = TrainResult(**launch_training(spec, ctx.nproc, ctx.out.steps, ctx.nodes))
            replay_train_log(ctx.out.train_log, result.global_step, ctx.observers)
        else:
            tokenizer = load_tokenizer(ctx.model_dir)
            result = train_adapter(
                ctx.recipe,
                ctx.model_dir,
                tokenizer,
                training_items(ctx.recipe, tokenizer, ctx.out.data, "train"),
                training_items(ctx.recipe, tokenizer, ctx.out.data, "validation"),
                ctx.out.checkpoints,
                ctx.out.adapter,
                ctx.out.train_log,
                ctx.resume,
                ctx.observers,
            )
        if result.resumed_from_step is not None:
            print(
                f"[train] resumed from step {result.resumed_from_step}; finished at step {result.global_step}",
                flush=True,
            )
        details = {k: v for k, v in asdict(result).items() if k != "log_history"}
        return {"adapter": describe_path(ctx.out.adapter)}, details

    record, _ = run_step(ctx.out, "train", inputs, ctx.force, body)
    return record


def replay_train_log(log: Path, total: int, observers: list[Any]) -> None:
    """Hand the training log's entries to the observers afterwards: the ranks of a torchrun training
    are other processes, so MLflow and the textfile get the steps once it is over."""
    from gapforge_runtime.monitoring import TrainingUpdate

    if not observers or not log.is_file():
        return
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "loss" not in entry and "eval_loss" not in entry:
            continue
        numbers = {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        update = TrainingUpdate(
            step=int(entry["step"]), total_steps=total, logs=numbers, time=entry["time"]
        )
        for observer in observers:
            observer(update)


@contextmanager
def observed_run(
    ctx: RunContext, tracking: bool = True, metrics_port: int | None = None
) -> Iterator[None]:
    """Wrap a run's steps: an MLflow run (tracking.py) and training metrics (monitoring.py) for
    their whole length; the MLflow run ends FINISHED, FAILED or KILLED with the steps."""
    from gapforge_runtime.monitoring import TEXTFILE, TrainingMetrics
    from gapforge_runtime.tracking import Tracker

    recipe = ctx.recipe
    metrics = TrainingMetrics(recipe.name, recipe.version, ctx.out.root / TEXTFILE, metrics_port)
    # Continue the recorded MLflow run unless every step is redone (--force without --resume).
    tracker = (
        Tracker(ctx.out.root, recipe, continue_run=ctx.resume or not ctx.force)
        if tracking
        else None
    )
    ctx.observers.extend([metrics, *([tracker] if tracker else [])])
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        metrics.close()
        if tracker is not None:
            tracker.finish(status)
        ctx.observers.clear()


def check_memory(ctx: RunContext) -> None:
    """Say before training what the memory planner expects, and stop if it cannot fit the GPUs."""
    from gapforge_runtime import memplan

    plan = memplan.plan_for_run(ctx.model_dir, ctx.recipe, ctx.nproc)
    if plan is None:
        return
    print(memplan.describe(plan), flush=True)
    if not plan.fits and os.environ.get("GAPFORGE_SKIP_MEMORY_CHECK") != "1":
        raise RuntimeFailure(memplan.refusal(plan))


# --- merge --------------------------------------------------------------------------------------


def _require(path: Path, what: str, command: str) -> None:
    if not path.exists():
        raise RuntimeFailure(
            f"{path}: {what} is missing. Run `gapforge-runtime {command}` first (or `gapforge-runtime run`)."
        )


def step_merge(ctx: RunContext) -> StepRecord:
    """Merge the adapter into the base model (full precision) and save safetensors + tokenizer."""
    from gapforge_runtime.export.merge import merge_adapter

    _require(ctx.out.adapter / "adapter_config.json", "the trained adapter", "train")
    inputs = {
        "model": ctx.digest("model", ctx.model_dir),
        "adapter": ctx.digest("adapter", ctx.out.adapter, refresh=True),
    }

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        details = merge_adapter(
            ctx.model_dir, ctx.out.adapter, ctx.out.merged, ctx.recipe.train.adapter_method
        )
        return {"merged": describe_path(ctx.out.merged)}, details

    record, _ = run_step(ctx.out, "merge", inputs, ctx.force, body)
    return record


# --- quantize -----------------------------------------------------------------------------------


def gguf_targets(recipe: RecipeSettings) -> list[str]:
    """Every GGUF file to write: f16 always (the source of the others), then the recipe's targets."""
    return ["gguf:f16", *[t for t in recipe.quantize if t in GGUF_TARGETS and t != "gguf:f16"]]


def hf_targets(recipe: RecipeSettings) -> list[str]:
    """The recipe's quantized transformers checkpoints (GPU only), in the recipe's order."""
    return [t for t in recipe.quantize if t in HF_TARGETS]


def _quantize_hf(ctx: RunContext, target: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One GPTQ / bitsandbytes checkpoint from the merged model; calibration from the train split."""
    from gapforge_runtime.export import quantize_hf
    from gapforge_runtime.modelio import load_tokenizer

    folder = ctx.out.quantized_dir(target)
    if target == "gptq:int4":
        settings = ctx.recipe.gptq
        calibration = quantize_hf.calibration_examples(
            _encoded(ctx, load_tokenizer(ctx.out.merged), "train"), settings.calibration_samples
        )
        print(f"[quantize] merged → {folder.name} (GPTQModel, group size {settings.group_size}, "
              f"desc_act {settings.desc_act}, {len(calibration)} calibration samples)", flush=True)  # fmt: skip
        details = quantize_hf.quantize_gptq(ctx.out.merged, folder, settings, calibration)
    else:
        print(f"[quantize] merged → {folder.name} (bitsandbytes)", flush=True)
        details = quantize_hf.quantize_bnb(ctx.out.merged, folder, target)
    _free_gpu()
    print(f"[quantize] {target} done in {details['quantize_seconds']:.1f}s", flush=True)
    return describe_path(folder), details


def _free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Record in `seconds[key]` how long the block took."""
    started = time.monotonic()
    yield
    seconds[key] = round(time.monotonic() - started, 3)


def step_quantize(ctx: RunContext) -> StepRecord:
    """merged → GGUF f16 → each quantization, the adapter as GGUF, and a Modelfile beside each."""
    from gapforge_runtime.export.quantize import (
        check_llama_cpp,
        convert_adapter,
        convert_to_f16,
        ollama_template,
        quantize_gguf,
        write_modelfile,
    )
    from gapforge_runtime.modelio import load_tokenizer

    check_targets(ctx.recipe.quantize)
    check_cpu_features()  # before quantize_gguf imports llama_cpp
    llama_cpp = check_llama_cpp(ctx.llama_cpp)
    _require(ctx.out.merged / "config.json", "the merged model", "merge")
    targets = gguf_targets(ctx.recipe)
    inputs = {
        "merged": ctx.digest("merged", ctx.out.merged, refresh=True),
        "adapter": ctx.digest("adapter", ctx.out.adapter, refresh=True),
        "targets": _section_digest(targets),
        "converter": sha256_file(llama_cpp / "convert_hf_to_gguf.py"),
    }
    if hf_targets(ctx.recipe):
        inputs["hf_targets"] = _section_digest(hf_targets(ctx.recipe), asdict(ctx.recipe.gptq))
        inputs["train"] = sha256_file(ctx.out.data / "train.jsonl")
    name = ctx.recipe.name

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        template, stops = ollama_template(load_tokenizer(ctx.out.merged))
        outputs: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        f16 = ctx.out.gguf_file(name, "gguf:f16")
        print(f"[quantize] {ctx.out.merged} → {f16.name}", flush=True)
        with _timed(seconds, "gguf:f16"):
            convert_to_f16(llama_cpp, ctx.out.merged, f16)
        for target in targets:
            path = ctx.out.gguf_file(name, target)
            if target != "gguf:f16":
                print(f"[quantize] {f16.name} → {path.name}", flush=True)
                with _timed(seconds, target):
                    quantize_gguf(f16, target, path)
            outputs[target] = describe_path(path)
            outputs[f"{target}:Modelfile"] = describe_path(write_modelfile(path, template, stops))
        adapter_gguf = ctx.out.adapter_gguf(name)
        print(f"[quantize] adapter → {adapter_gguf.name}", flush=True)
        with _timed(seconds, "adapter:gguf"):
            convert_adapter(llama_cpp, ctx.out.adapter, ctx.model_dir, adapter_gguf)
        outputs["adapter:gguf"] = describe_path(adapter_gguf)
        details: dict[str, Any] = {"targets": targets, "stop": stops, "seconds": seconds}
        for target in hf_targets(ctx.recipe):  # GPTQ / bitsandbytes checkpoints (GPU)
            outputs[target], details[target] = _quantize_hf(ctx, target)
            seconds[target] = details[target]["quantize_seconds"]
        return outputs, details

    record, _ = run_step(ctx.out, "quantize", inputs, ctx.force, body)
    return record


# --- eval ---------------------------------------------------------------------------------------


def step_eval(ctx: RunContext) -> StepRecord:
    """Loss/perplexity of base, merged and every GGUF on the test split; sample answers; gates."""
    from gapforge_runtime.evaluation import metrics as ev
    from gapforge_runtime.modelio import load_causal_lm, load_tokenizer

    _require(ctx.out.merged / "config.json", "the merged model", "merge")
    quantize = load_record(ctx.out, "quantize")
    ggufs = {t: ctx.out.gguf_file(ctx.recipe.name, t) for t in gguf_targets(ctx.recipe)}
    ggufs = {t: p for t, p in ggufs.items() if p.is_file()}
    if ggufs:
        check_cpu_features()  # before llama_cpp is imported to score them: not a SIGILL later
    quantized = {t: ctx.out.quantized_dir(t) for t in hf_targets(ctx.recipe)}
    quantized = {t: p for t, p in quantized.items() if (p / "config.json").is_file()}
    settings = ctx.recipe.evaluate
    judge_file = _judge_file(ctx)
    inputs = {
        "test": sha256_file(ctx.out.data / "test.jsonl"),
        "model": ctx.digest("model", ctx.model_dir),
        "merged": ctx.digest("merged", ctx.out.merged, refresh=True),
        "settings": _section_digest(asdict(settings)),
        **{t: sha256_file(p) for t, p in ggufs.items()},
        **{t: ctx.digest(t, p, refresh=True) for t, p in quantized.items()},
    }
    if judge_file is not None:
        inputs["judge"] = sha256_file(judge_file)
    lm_eval_tasks = _lm_eval_tasks(ctx)
    if lm_eval_tasks is not None:
        inputs["lm_eval_tasks"] = ctx.digest("lm_eval_tasks", lm_eval_tasks)
    if ctx.parent is not None:
        inputs["parent_test"] = ctx.parent.digests["split:test"]
    if quantize is None:
        print("[eval] no GGUF files yet: scoring the base and merged models only", flush=True)

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        tokenizer = load_tokenizer(ctx.model_dir)
        items = _encoded(ctx, tokenizer, "test")
        # The judge and the task metrics need more answers than the report shows.
        compares = settings.judge.enabled or settings.task_metrics
        answered = max(settings.sample_answers, settings.judge.prompts if compares else 0)
        records = data_mod.read_split_file(ctx.out.data / "test.jsonl")[:answered]
        prompts_text = [prompt_text(tokenizer, ctx.recipe.data_format, r) for r in records]
        prompts = [
            tokenizer(p, add_special_tokens=ctx.recipe.data_format == "completion")["input_ids"]
            for p in prompts_text
        ]
        stop_ids = {i for i in (tokenizer.eos_token_id,) if i is not None}
        scores: dict[str, ev.ModelScore] = {}
        answers: dict[str, list[str]] = {}
        pairs = _preference_pairs(ctx)
        pair_scores: dict[str, list[tuple[float, float]]] = {}
        old_items = _parent_test_items(ctx, tokenizer)
        old_losses: dict[str, float] = {}
        # On a GPU the full-precision models are scored in bf16 there (a 7B in float32 on CPU is hours).
        on_gpu = torch.cuda.is_available()
        full = (
            {"dtype": torch.bfloat16, "device_map": {"": 0}} if on_gpu else {"dtype": torch.float32}
        )
        for label, folder in (
            ("base", ctx.model_dir),
            ("merged", ctx.out.merged),
            *quantized.items(),
        ):
            print(f"[eval] scoring {label} ({len(items)} test examples)", flush=True)
            if label in quantized:
                from gapforge_runtime.export.quantize_hf import load_quantized

                model = load_quantized(folder, label)
            else:
                model = load_causal_lm(folder, **full)
            loss, count = ev.score_transformers(model, items)
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            scores[label] = ev.ModelScore(label, loss, ev.perplexity(loss), count, size)
            outs = ev.greedy_transformers(model, prompts, settings.max_new_tokens, stop_ids)
            answers[label] = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
            if pairs and label in ("base", "merged"):
                pair_scores[label] = _score_pairs(ctx, model, tokenizer, pairs, label)
            if old_items and label in ("base", "merged"):
                old_losses[label] = ev.score_transformers(model, old_items)[0]
            del model
            _free_gpu()
        longest = max((len(i.input_ids) for i in items), default=16)
        n_ctx = (
            max(longest, max((len(p) for p in prompts), default=0) + settings.max_new_tokens) + 8
        )
        for target, path in ggufs.items():
            print(f"[eval] scoring {target} ({path.name})", flush=True)
            llm = ev.open_gguf(path, n_ctx)
            loss, count = ev.score_gguf(llm, items)
            scores[target] = ev.ModelScore(
                target, loss, ev.perplexity(loss), count, path.stat().st_size
            )
            outs = ev.greedy_gguf(llm, prompts, settings.max_new_tokens, stop_ids)
            answers[target] = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
            llm.close()
        references = [reference_answer(ctx.recipe.data_format, r) for r in records]
        questions = [question_text(ctx.recipe.data_format, r) for r in records]
        outputs: dict[str, Any] = {"evaluation": {}}
        notes = [
            f"{t}: not evaluated (a quantized transformers checkpoint needs CUDA; none here)"
            for t in hf_targets(ctx.recipe)
            if t not in quantized
        ]
        task = _task_metrics(settings.task_metrics, answers, references)
        judged = _judge(ctx, judge_file, questions, answers, outputs)
        harness = _lm_eval(ctx, lm_eval_tasks, ggufs)
        gates = ev.decide_gates(
            scores, settings.require_improvement, settings.max_perplexity_delta_pct
        ) + ev.decide_comparison_gates(
            settings.min_win_rate_vs_base, settings.max_task_f1_drop_pts, judged, task
        )
        gates += ev.decide_lm_eval_gates(settings.max_lm_eval_drop_pts, harness)
        from gapforge_runtime.methods.continual import forgetting_gate
        from gapforge_runtime.methods.preference import preference_gate

        preference = _preference_summary(ctx, pair_scores)
        gates += preference_gate(preference, settings.min_preference_accuracy)
        continual = _continual_summary(ctx, scores, old_losses, len(old_items))
        gates += forgetting_gate(continual, settings.max_forgetting_pct)
        result = ev.as_json(scores, gates)
        if harness is not None:
            result["lm_eval"] = harness
        if continual is not None:
            result["continual"] = continual
        if preference is not None:
            result["preference"] = preference
        result["task_metrics"], result["judge"], result["notes"] = task, judged, notes
        result["samples_shown"] = settings.sample_answers
        result["samples"] = [
            {
                "prompt": p,
                "question": questions[i],
                "reference": references[i],
                "answers": {m: a[i] for m, a in answers.items()},
            }
            for i, (p, r) in enumerate(zip(prompts_text, records, strict=True))
        ]
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
        write_json_atomic(ctx.out.evaluation, result)
        outputs["evaluation"] = describe_path(ctx.out.evaluation)
        return outputs, {"passed": result["passed"]}

    record, _ = run_step(ctx.out, "eval", inputs, ctx.force, body)
    return record


def _parent_test_items(ctx: RunContext, tokenizer: Any) -> list[Any]:
    """The parent run's test split, encoded in the parent's data format (continual runs)."""
    if ctx.parent is None:
        return []
    records = data_mod.read_split_file(ctx.parent.test_split)
    items, _ = encode_split(
        tokenizer, ctx.parent.data_format, records, ctx.recipe.train.max_seq_length
    )
    return items


def _continual_summary(
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


def _preference_pairs(ctx: RunContext) -> list[dict[str, Any]]:
    """The held-out preference pairs (the test split of a `preference` recipe), else none."""
    if ctx.recipe.data_format != "preference":
        return []
    return data_mod.read_split_file(ctx.out.data / "test.jsonl")


def _score_pairs(
    ctx: RunContext, model: Any, tokenizer: Any, pairs: list[dict[str, Any]], label: str
) -> list[tuple[float, float]]:
    from gapforge_runtime.methods.preference import score_pairs

    print(f"[eval] preference: {label} on {len(pairs)} held-out pairs", flush=True)
    return score_pairs(model, tokenizer, pairs, ctx.recipe.train.max_seq_length)


def _preference_summary(
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


def _judge_file(ctx: RunContext) -> Path | None:
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


def _lm_eval_tasks(ctx: RunContext) -> Path | None:
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


def _lm_eval(ctx: RunContext, tasks: Path | None, ggufs: dict[str, Path]) -> dict[str, Any] | None:
    """lm-evaluation-harness over the recipe's custom tasks (None when the recipe has none)."""
    from gapforge_runtime.evaluation.lmeval import run_lm_eval

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


def _task_metrics(
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


def _judge(
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
        from gapforge_runtime.export.quantize import check_llama_cpp, convert_to_f16

        judge_file = ctx.out.gguf / f"{ctx.recipe.name}-base-f16.gguf"
        print(f"[eval] judge: base model → {judge_file.name}", flush=True)
        check_cpu_features()
        convert_to_f16(check_llama_cpp(ctx.llama_cpp), ctx.model_dir, judge_file)
        outputs["judge:base-gguf"] = describe_path(judge_file)
    n = min(spec.prompts, len(questions))
    pairs = jd.comparisons_for(list(answers))
    prompts = [(questions[i], answers[c][i], answers[r][i]) for c, r in pairs for i in range(n)]
    n_ctx, trained = jd.fitted_n_ctx(judge_file, prompts)
    judge = jd.LlamaJudge(judge_file, n_ctx)
    try:
        comparisons = []
        for candidate, reference in pairs:
            c = jd.compare(
                candidate,
                reference,
                questions[:n],
                answers[candidate][:n],
                answers[reference][:n],
                judge.ask,
                spec.bootstrap,
            )
            print(
                f"[eval] judge {candidate} vs {reference}: win rate {c.win_rate:.3f} "
                f"[{c.ci_low:.3f}, {c.ci_high:.3f}]  {c.wins}W {c.losses}L {c.ties}T "
                f"({c.inconsistent} inconsistent, {c.unparseable} unparseable)",
                flush=True,
            )
            comparisons.append(asdict(c))
        calls, too_long = judge.calls, judge.too_long
    finally:
        judge.close()
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
        "comparisons": comparisons,
    }


def evaluation_passed(ctx: RunContext) -> bool | None:
    """The recorded verdict of the last evaluation, if any."""
    if not ctx.out.evaluation.is_file():
        return None
    return bool(json.loads(ctx.out.evaluation.read_text(encoding="utf-8"))["passed"])
