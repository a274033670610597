"""Distillation (`train.method: distill`): a teacher model answers the training split's prompts, the
answers are filtered (empty, cut off at max_new_tokens, degenerate repetition), and the student's
LoRA adapter is trained on what is kept through the normal SFT path (train.train_adapter).

The teacher is a Hugging Face folder (batched greedy generation with transformers) or a GGUF file
(llama.cpp through llama-cpp-python). Its digest and the generated data's sha256 enter the train
step's inputs and the lineage manifest. Logit distillation (`mode: gkd`, TRL's GKDTrainer from
trl.experimental) needs the teacher and the student to share one vocabulary; a mismatch is refused
before any model loads.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import describe_path, sha256_file, write_json_atomic, write_text_atomic
from gapforge_runtime.recipe_schema import DistillSpec

DISTILL_DIR = "distill"
TEACHER_DATA = "teacher_train.jsonl"
SUMMARY = "distill.json"
NGRAM = 4


def settings(recipe: Any) -> DistillSpec:
    """The recipe's `train.distill` as the schema validated it (the schema refuses `method:
    distill` without it, so it is there)."""
    spec: DistillSpec | None = recipe.spec.train.distill
    if spec is None:  # not a distill recipe: a caller's mistake, not the operator's
        raise RuntimeFailure(f"recipe {recipe.path}: train.distill is not set (train.method is "
                             f"{recipe.train.method!r}, not 'distill').")  # fmt: skip
    return spec


def teacher_path(recipe: Any, spec: DistillSpec) -> Path:
    """The teacher: the recipe's `models:` entry of that name, shipped by the builder under
    models/<name>/ (a model folder, or one GGUF file), or else a folder or .gguf file relative to the
    recipe's folder. It must be there."""
    if spec.teacher in recipe.spec.models:
        from gapforge_runtime.config import shipped_model_dir

        folder = shipped_model_dir(spec.teacher)
        ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        if (folder / "config.json").is_file():
            return folder
        if len(ggufs) == 1:
            return ggufs[0]
        raise RuntimeFailure(
            f"recipe {recipe.path}: train.distill.teacher: '{spec.teacher}' names the recipe's "
            f"models: entry, which the image should hold at {folder} (a model folder with "
            f"config.json, or one .gguf file); it holds {len(ggufs)} GGUF files and no config.json. "
            "Rebuild the image (the builder ships models: entries), or point teacher at a folder."
        )
    path = (Path(recipe.path).parent / spec.teacher).resolve()
    usable = (
        (path / "config.json").is_file()
        if path.is_dir()
        else path.suffix == ".gguf" and path.is_file()
    )
    if not usable:
        raise RuntimeFailure(
            f"recipe {recipe.path}: train.distill.teacher: {spec.teacher!r} ({path}) is neither a "
            "model folder with config.json nor a .gguf file. Point it at the teacher shipped in the "
            "image (relative to the recipe's folder, or an absolute path)."
        )
    return path


def check_vocabularies(student_dir: Path, teacher: Path) -> None:
    """GKD compares the two models' next-token distributions: one vocabulary, the same ids."""
    from gapforge_runtime.modelio import load_tokenizer

    if teacher.suffix == ".gguf":
        raise RuntimeFailure(
            f"train.distill.mode 'gkd' with teacher {teacher}: logit distillation needs the teacher "
            "as a Hugging Face folder (its logits through transformers), not a GGUF file. Ship the "
            "teacher as a folder, or use mode: sequence."
        )
    student_vocab = load_tokenizer(student_dir).get_vocab()
    teacher_vocab = load_tokenizer(teacher).get_vocab()
    if student_vocab != teacher_vocab:
        differ = len(set(student_vocab.items()) ^ set(teacher_vocab.items()))
        raise RuntimeFailure(
            f"train.distill.mode 'gkd': the teacher {teacher} ({len(teacher_vocab)} tokens) and the "
            f"student {student_dir} ({len(student_vocab)} tokens) do not share a vocabulary "
            f"({differ} token/id pairs differ), so their logits cannot be compared token by token. "
            "Use mode: sequence (the student learns the teacher's answers as text), or a teacher "
            "of the student's own family (the same tokenizer)."
        )


def most_repeated_ngram(text: str, n: int = NGRAM) -> int:
    """How often the most frequent n-word sequence of `text` occurs (0 for fewer than n words)."""
    words = text.split()
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(grams.values(), default=0)


def drop_reason(answer: str, truncated: bool, spec: DistillSpec) -> str | None:
    """Why a teacher's answer is not kept (`empty`, `truncated`, `repeated`), or None to keep it."""
    if not answer.strip():
        return "empty"
    if truncated and not spec.keep_truncated:
        return "truncated"
    if most_repeated_ngram(answer) > spec.max_ngram_repeats:
        return "repeated"
    return None


def with_answer(data_format: str, record: dict[str, Any], answer: str) -> dict[str, Any]:
    """The record with its last answer replaced by the teacher's."""
    if data_format == "alpaca":
        return {**record, "output": answer}
    messages = [dict(m) for m in record["messages"]]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages[last]["content"] = answer
    return {**record, "messages": messages[: last + 1]}


def generate_transformers(
    teacher: Path, prompts: list[str], max_new_tokens: int, batch_size: int
) -> list[tuple[str, bool]]:
    """Greedy answers of an HF teacher, batched with left padding: (text, cut off at the limit)."""
    import torch

    from gapforge_runtime.modelio import device_and_dtype, load_causal_lm, load_tokenizer

    device, dtype = device_and_dtype()
    tokenizer = load_tokenizer(teacher)
    tokenizer.padding_side = "left"
    model = load_causal_lm(teacher, dtype=dtype).to(device).eval()
    eos = tokenizer.eos_token_id
    answers: list[tuple[str, bool]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = {k: v.to(device) for k, v in encoded.items()}
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)  # fmt: skip
        for row in out[:, encoded["input_ids"].shape[1] :].tolist():
            ended = eos in row
            ids = row[: row.index(eos)] if ended else row
            answers.append((tokenizer.decode(ids, skip_special_tokens=True).strip(), not ended))
        print(f"[distill] teacher answered {len(answers)}/{len(prompts)} prompts", flush=True)
    del model
    import gc

    gc.collect()
    if device == "cuda":  # the student trains next, on the same GPU
        torch.cuda.empty_cache()
    return answers


def generate_gguf(teacher: Path, prompts: list[str], max_new_tokens: int) -> list[tuple[str, bool]]:
    """Greedy answers of a GGUF teacher through llama.cpp: (text, cut off at the limit)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(teacher), n_ctx=4096, verbose=False, seed=0)
    answers: list[tuple[str, bool]] = []
    try:
        for i, prompt in enumerate(prompts, 1):
            result = llm.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0)
            choice = result["choices"][0]
            answers.append((str(choice["text"]).strip(), choice.get("finish_reason") == "length"))
            if i % 16 == 0 or i == len(prompts):
                print(f"[distill] teacher answered {i}/{len(prompts)} prompts", flush=True)
    finally:
        llm.close()
    return answers


def teacher_answers(
    recipe: Any,
    spec: DistillSpec,
    teacher: Path,
    records: list[dict[str, Any]],
    out: Path,
    student_dir: Path,
) -> dict[str, Any]:
    """The teacher's answers to `records`' prompts, filtered, written as JSONL; returns the summary."""
    from gapforge_runtime.data.encoding import prompt_text
    from gapforge_runtime.modelio import load_tokenizer

    if recipe.data_format == "completion":
        raise RuntimeFailure(
            f"recipe {recipe.path}: train.method 'distill' needs prompts and answers (data.format "
            "chat or alpaca), not completion text. Convert the data, or use method: lora."
        )
    # The teacher's own chat template where it has one (an HF teacher); the student's otherwise.
    tokenizer = load_tokenizer(teacher if teacher.is_dir() else student_dir)
    prompts = [prompt_text(tokenizer, recipe.data_format, r) for r in records]
    started = time.monotonic()
    if teacher.suffix == ".gguf":
        answers = generate_gguf(teacher, prompts, spec.max_new_tokens)
    else:
        answers = generate_transformers(teacher, prompts, spec.max_new_tokens, spec.batch_size)
    kept, dropped = [], []
    for line, (record, (answer, truncated)) in enumerate(zip(records, answers, strict=True), 1):
        reason = drop_reason(answer, truncated, spec)
        if reason is None:
            kept.append(with_answer(recipe.data_format, record, answer))
        else:
            dropped.append({"line": line, "reason": reason})
    data_file = out / TEACHER_DATA
    write_text_atomic(data_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    counts = Counter(d["reason"] for d in dropped)
    summary = {
        "teacher": {"path": str(teacher), "sha256": describe_path(teacher)["sha256"],
                    "kind": "gguf" if teacher.suffix == ".gguf" else "transformers"},
        "mode": spec.mode,
        "prompts": len(records),
        "kept": len(kept),
        "dropped": {reason: counts.get(reason, 0) for reason in ("empty", "truncated", "repeated")},
        "dropped_lines": dropped[:200],
        "data": {"path": str(data_file), "sha256": sha256_file(data_file), "size": data_file.stat().st_size},
        "settings": spec.model_dump(mode="json"),
        "seconds": round(time.monotonic() - started, 2),
    }  # fmt: skip
    write_json_atomic(out / SUMMARY, summary)
    print(f"[distill] kept {len(kept)} of {len(records)} teacher answers; dropped "
          f"{summary['dropped']}", flush=True)  # fmt: skip
    if not kept:
        raise RuntimeFailure(
            f"train.distill: the teacher {teacher} gave no usable answer ({summary['dropped']} "
            f"dropped of {len(records)}; see {out / SUMMARY}). Raise train.distill.max_new_tokens, "
            "set keep_truncated: true, or check the teacher."
        )
    return summary


def _messages(data_format: str, record: dict[str, Any]) -> list[dict[str, str]]:
    from gapforge_runtime.data.encoding import alpaca_messages

    return alpaca_messages(record) if data_format == "alpaca" else list(record["messages"])


def train_gkd(
    ctx: Any, spec: DistillSpec, teacher: Path, out: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Logit distillation with TRL's GKDTrainer: the student's LoRA adapter learns the teacher's
    next-token distributions on the training split (and, for a `gkd_lmbda` share of batches, on its
    own sampled answers). The validation loss of the adapter is measured as for any run."""
    import os

    from peft import LoraConfig

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # known: GKD lives in trl.experimental
    from datasets import Dataset
    from trl.experimental.gkd import GKDTrainer

    from gapforge_runtime.data.encoding import encode_split
    from gapforge_runtime.data.reading import read_split_file
    from gapforge_runtime.evaluation.metrics import score_transformers
    from gapforge_runtime.modelio import device_and_dtype, load_causal_lm, load_tokenizer

    recipe = ctx.recipe
    if recipe.data_format == "completion":
        raise RuntimeFailure(
            f"recipe {recipe.path}: train.distill.mode 'gkd' needs prompts and answers (data.format "
            "chat or alpaca), not completion text."
        )
    settings_ = recipe.train
    device, dtype = device_and_dtype()
    tokenizer = load_tokenizer(ctx.model_dir)
    records = read_split_file(ctx.out.data / "train.jsonl")
    dataset = Dataset.from_list([{"messages": _messages(recipe.data_format, r)} for r in records])
    lora = recipe.lora
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    args = _gkd_arguments(ctx, spec, device, dtype)
    from transformers import set_seed

    set_seed(settings_.seed)
    student = load_causal_lm(ctx.model_dir, dtype=dtype)
    teacher_model = load_causal_lm(teacher, dtype=dtype)
    trainer = GKDTrainer(model=student, teacher_model=teacher_model, args=args,
                         train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)  # fmt: skip
    print(f"[distill] GKD: {len(records)} prompts, teacher {teacher.name}, lmbda {spec.gkd_lmbda}, "
          f"beta {spec.gkd_beta}", flush=True)  # fmt: skip
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    _save_gkd(ctx, trainer, tokenizer)
    validation, _ = encode_split(tokenizer, recipe.data_format,
                                 read_split_file(ctx.out.data / "validation.jsonl"), settings_.max_seq_length)  # fmt: skip
    loss, _ = score_transformers(trainer.model, validation)
    summary = {
        "teacher": {"path": str(teacher), "sha256": describe_path(teacher)["sha256"], "kind": "transformers"},
        "mode": "gkd", "prompts": len(records), "data": None,
        "settings": spec.model_dump(mode="json"), "seconds": round(seconds, 2),
    }  # fmt: skip
    write_json_atomic(out / SUMMARY, summary)
    details = {"global_step": trainer.state.global_step, "train_seconds": round(seconds, 3),
               "device": device, "validation_loss": loss,
               "distill": {"mode": "gkd", "teacher": summary["teacher"], "prompts": len(records)}}  # fmt: skip
    print(
        f"[distill] GKD done: {trainer.state.global_step} steps, validation loss {loss:.4f}",
        flush=True,
    )
    return {"adapter": describe_path(ctx.out.adapter)}, details


def _gkd_arguments(ctx: Any, spec: DistillSpec, device: str, dtype: Any) -> Any:
    """GKDConfig from the recipe's train settings and its distill section."""
    from trl.experimental.gkd import GKDConfig

    settings_ = ctx.recipe.train
    return GKDConfig(
        output_dir=str(ctx.out.checkpoints), per_device_train_batch_size=settings_.batch_size,
        gradient_accumulation_steps=settings_.gradient_accumulation,
        learning_rate=settings_.learning_rate, lr_scheduler_type=settings_.scheduler,
        warmup_steps=settings_.warmup_steps, num_train_epochs=settings_.epochs or 1.0,
        max_steps=settings_.max_steps or -1, seed=settings_.seed, data_seed=settings_.seed,
        max_length=settings_.max_seq_length, max_new_tokens=spec.max_new_tokens,
        lmbda=spec.gkd_lmbda, beta=spec.gkd_beta, logging_steps=1, report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, use_cpu=device == "cpu",
        bf16=device == "cuda" and str(dtype) == "torch.bfloat16", dataloader_pin_memory=False,
        gradient_checkpointing=settings_.uses_gradient_checkpointing,
    )  # fmt: skip


def _save_gkd(ctx: Any, trainer: Any, tokenizer: Any) -> None:
    """The student's adapter with the tokenizer, and the training's log and history."""
    import shutil

    from gapforge_runtime.files import atomic_dir

    with atomic_dir(ctx.out.adapter) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    history = list(trainer.state.log_history)
    write_text_atomic(
        ctx.out.train_log,
        "".join(json.dumps({"step": h.get("step", 0), **h}) + "\n" for h in history),
    )
    write_text_atomic(ctx.out.root / "train_history.json", json.dumps(history, indent=1) + "\n")
    shutil.rmtree(ctx.out.checkpoints, ignore_errors=True)
