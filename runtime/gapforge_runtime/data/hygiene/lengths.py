"""Tokens per example, and what `train.max_seq_length` cuts off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def percentile(sorted_values: list[int], fraction: float) -> int:
    """The nearest-rank percentile of already sorted values."""
    rank = max(1, -(-len(sorted_values) * fraction // 1))
    return sorted_values[int(rank) - 1]


def length_stats(lengths: list[int], max_seq_length: int) -> dict[str, Any]:
    """min/median/p95/max tokens, and how many examples (and tokens in all) the limit cuts."""
    if not lengths:
        return {"examples": 0}
    ordered = sorted(lengths)
    over = [n - max_seq_length for n in ordered if n > max_seq_length]
    return {
        "examples": len(ordered),
        "min": ordered[0],
        "median": percentile(ordered, 0.5),
        "p95": percentile(ordered, 0.95),
        "max": ordered[-1],
        "cut_examples": len(over),
        "cut_tokens": sum(over),
    }


def token_counter(tokenizer: Any, data_format: str) -> tuple[Callable[[dict[str, Any]], int], str]:
    """A function counting one record's tokens, and what it counts.

    With a tokenizer: the tokens training sees (the chat template included); without one, words.
    """
    if tokenizer is None:

        def words(record: dict[str, Any]) -> int:
            from gapforge_runtime.data.hygiene import record_texts

            return sum(len(text.split()) for _, text in record_texts(record))

        return words, "whitespace words (no tokenizer in the data step)"
    from gapforge_runtime.data.encoding import encode_record

    def tokens(record: dict[str, Any]) -> int:
        # A limit no example reaches: the full length, before truncation.
        return len(encode_record(tokenizer, data_format, record, 1 << 30).input_ids)

    return tokens, "tokens of the base model's tokenizer"


def measure_lengths(
    splits: dict[str, list[dict[str, Any]]],
    data_format: str,
    tokenizer: Any,
    max_seq_length: int,
) -> dict[str, Any]:
    """Length stats per split, and what was counted."""
    count, unit = token_counter(tokenizer, data_format)
    report: dict[str, Any] = {"unit": unit, "max_seq_length": max_seq_length}
    for name, records in splits.items():
        report[name] = length_stats([count(r) for r in records], max_seq_length)
    return report
