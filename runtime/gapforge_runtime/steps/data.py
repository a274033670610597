"""The data step: validate the data (every bad line listed), dedupe, split, clean, measure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gapforge_runtime.data import reading
from gapforge_runtime.data.encoding import encode_split, encoded_split
from gapforge_runtime.files import describe_path, sha256_file
from gapforge_runtime.outputs import StepRecord, run_step
from gapforge_runtime.steps.context import RunContext, section_digest


def _inputs(ctx: RunContext, extra: dict[str, Path | None]) -> dict[str, str]:
    """What the split depends on: the data files, the settings that shape it, the tokenizer."""
    recipe = ctx.recipe
    inputs = {
        "data": sha256_file(ctx.data_file),
        "settings": section_digest(
            recipe.data_format,
            recipe.train.seed,
            recipe.train.max_seq_length,
            recipe.pii.model_dump(),
            recipe.dedupe.model_dump(),
        ),
        "tokenizer": section_digest(
            *(sha256_file(p) for p in sorted(ctx.model_dir.glob("tokenizer*")))
        ),
    }
    inputs.update({k: sha256_file(v) for k, v in extra.items() if v is not None})
    if ctx.parent is not None and recipe.replay_ratio > 0:
        inputs["replay"] = section_digest(recipe.replay_ratio, ctx.parent.digests["split:train"])
    return inputs


def step_data(ctx: RunContext) -> StepRecord:
    """Validate the data (every bad line listed), dedupe, split, clean it (PII, near-duplicates,
    test-into-training leaks), and measure its encoding."""
    extra = {"validation": ctx.validation_file, "test": ctx.test_file}

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        from gapforge_runtime.modelio import load_tokenizer

        tokenizer = load_tokenizer(ctx.model_dir)
        paths, details = _split_and_clean(ctx, extra, tokenizer)
        _encoding_details(ctx, paths, details, tokenizer)
        return {name: describe_path(path) for name, path in paths.items()}, details

    record, _ = run_step(ctx.out, "data", _inputs(ctx, extra), ctx.force, body)
    return record


def _split_and_clean(
    ctx: RunContext, extra: dict[str, Path | None], tokenizer: Any
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Read, split and clean the data, then write the split: a `fail` finding stops it unwritten."""
    from gapforge_runtime.data.hygiene import apply_hygiene
    from gapforge_runtime.data.hygiene import summary as hygiene_summary
    from gapforge_runtime.data.hygiene.lengths import measure_lengths

    recipe = ctx.recipe
    fmt = recipe.data_format
    examples = reading.read_examples(ctx.data_file, fmt)
    given = {
        k: reading.read_examples(v, fmt, label=f"--{k}") if v is not None else None
        for k, v in extra.items()
    }
    split = reading.split_examples(examples, recipe.train.seed, given["validation"], given["test"])
    sources = {
        "train": str(ctx.data_file),
        **{k: str(extra[k] if given[k] is not None else ctx.data_file) for k in extra},
    }
    # Before anything is written: a `fail` finding stops the run with no split on disk.
    hygiene = apply_hygiene(split, sources, recipe.pii, recipe.dedupe)
    replayed = _replay(ctx, split)
    paths = reading.write_split(split, ctx.out.data)
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
    details["hygiene"] = hygiene
    return paths, details


def _encoding_details(
    ctx: RunContext, paths: dict[str, Path], details: dict[str, Any], tokenizer: Any
) -> None:
    """Tokens, truncations and examples left without a target, per split (printed and recorded)."""
    from gapforge_runtime.data.encoding import summarize_encoding

    max_length = ctx.recipe.train.max_seq_length
    for name, path in paths.items():
        records = reading.read_split_file(path)
        _, stats = encode_split(tokenizer, ctx.recipe.data_format, records, max_length)
        print(summarize_encoding(name, stats, max_length), flush=True)
        details[f"{name}_tokens"] = stats.tokens
        details[f"{name}_truncated"] = stats.truncated
        details[f"{name}_dropped_no_target"] = stats.no_target_left


def _replay(ctx: RunContext, split: reading.DataSplit) -> int:
    """Mix the parent's training examples into the training split (already cleaned in its run)."""
    from gapforge_runtime.methods.continual import replay_records

    if ctx.parent is None or ctx.recipe.replay_ratio <= 0:
        return 0
    records = replay_records(
        ctx.parent, len(split.train), ctx.recipe.replay_ratio, ctx.recipe.train.seed
    )
    split.train += [reading.Example(line=0, record=r) for r in records]
    print(f"[data] replay: {len(records)} examples of the parent's training split "
          f"({ctx.recipe.replay_ratio:.0%} of the training set)", flush=True)  # fmt: skip
    return len(records)


def encoded(ctx: RunContext, tokenizer: Any, split: str) -> list[Any]:
    """A split of this run's data, encoded for the model (the eval and GPTQ calibration use it)."""
    return encoded_split(ctx.recipe, tokenizer, ctx.out.data, split)
