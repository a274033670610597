"""Operator data: read JSONL, list every bad line at once, drop exact duplicates, split by seed.

The operator's data is read strictly, since it was written by someone else and silently changing it
would train on text nobody wrote: the bytes must be UTF-8 (a bad byte is named by line and offset,
never replaced), lines end at `\n` only (U+2028, U+0085 and the other separators `str.splitlines`
would split at belong to the JSON strings that hold them), and each line is bounded in nesting
depth and in the digits of its numbers, so a hostile line is named instead of ending the run in a
RecursionError or ValueError.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge_runtime.data.preference import check_messages, check_preference, form_of
from gapforge_runtime.errors import RuntimeFailure

FORMATS = ("alpaca", "chat", "completion", "preference")
SMALL_DATASET = 10_000
MAX_LISTED = 200
MAX_DEPTH = 64
"""Nested arrays and objects in one line; a chat example goes 3 deep."""
MAX_NUMBER_CHARS = 100
"""Characters of one number; Python refuses integers of over 4300 digits with a ValueError."""
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class LineProblem(ValueError):
    """A line that parses as JSON but is past a bound (depth, digits); its message names why."""


def _bounded(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise LineProblem(
            f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS}): {text[:20]}..."
        )
    return text


def _constant(text: str) -> float:
    raise LineProblem(f"{text} is not JSON (JavaScript's constants are not allowed)")


_DECODER = json.JSONDecoder(
    parse_int=lambda text: int(_bounded(text)),
    parse_float=lambda text: float(_bounded(text)),
    parse_constant=_constant,
)
"""One decoder for every line (json.loads with hooks would build one per line)."""


def _depth(line: str) -> int:
    """The deepest nesting of arrays and objects in `line`, brackets inside strings not counted."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(line):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def parse_line(line: str) -> Any:
    """One JSONL line as data: json.JSONDecodeError for bad JSON, LineProblem past a bound."""
    if line.count("[") + line.count("{") > MAX_DEPTH and _depth(line) > MAX_DEPTH:
        raise LineProblem(f"nested more than {MAX_DEPTH} levels deep")
    return _DECODER.decode(line)


def jsonl_lines(path: Path, label: str) -> list[str]:
    """The lines of a JSONL file: strict UTF-8, split at `\n` only (a `\r` before it is kept
    and ignored by JSON as whitespace). RuntimeFailure names the line and byte of a bad byte."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        number = data.count(b"\n", 0, exc.start) + 1
        raise RuntimeFailure(
            f"{label} {path}: line {number}, byte {exc.start - start + 1} of the line (offset "
            f"{exc.start} in the file) is 0x{data[exc.start]:02x}, which is not UTF-8 "
            f"({exc.reason}). The data must be UTF-8; nothing is guessed or replaced. Convert "
            f"the file (for Latin-1: iconv -f latin1 -t utf-8 {path.name} > "
            f"{path.stem}.utf8{path.suffix}) and run again (nothing was trained)."
        ) from None
    return text.split("\n")


@dataclass(frozen=True)
class Example:
    """One validated example in a canonical shape, and where it came from."""

    line: int
    record: dict[str, Any]
    """alpaca: instruction/input/output; chat: messages; completion: text."""

    def key(self) -> str:
        """The exact-duplicate key: canonical JSON of the record."""
        return json.dumps(self.record, sort_keys=True, ensure_ascii=False)


@dataclass
class DataSplit:
    """Train/validation/test examples and what happened on the way."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    duplicates_removed: int = 0
    source_lines: dict[str, int] = field(default_factory=dict)
    ratios: tuple[float, float, float] = (0.9, 0.05, 0.05)


def _non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _check_alpaca(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    problems = []
    for key in ("instruction", "output"):
        if key not in obj:
            problems.append(f"missing field '{key}'")
        elif not _non_empty_str(obj[key]):
            problems.append(f"field '{key}' is empty or not a string (got {obj[key]!r:.40})")
    if "input" in obj and obj["input"] is not None and not isinstance(obj["input"], str):
        problems.append(f"field 'input' must be a string (got {obj['input']!r:.40})")
    if problems:
        return None, problems
    return {
        "instruction": obj["instruction"],
        "input": obj.get("input") or "",
        "output": obj["output"],
    }, []


def _check_chat(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    key = "messages" if "messages" in obj else "conversations" if "conversations" in obj else None
    if key is None:
        return None, ["missing field 'messages' (or 'conversations')"]
    problems = check_messages(obj[key], key)
    if problems:
        return None, problems
    clean = [{"role": m["role"], "content": m["content"]} for m in obj[key]]
    if not any(m["role"] == "assistant" for m in clean):
        return None, [f"field '{key}' has no assistant message to learn from"]
    return {"messages": clean}, []


def _check_completion(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    if "text" not in obj:
        return None, ["missing field 'text'"]
    if not _non_empty_str(obj["text"]):
        return None, ["field 'text' is empty or not a string"]
    return {"text": obj["text"]}, []


CHECKS = {
    "alpaca": _check_alpaca,
    "chat": _check_chat,
    "completion": _check_completion,
    "preference": check_preference,
}


def _mixed_forms(examples: list[Example]) -> list[str]:
    """Preference pairs in both TRL forms in one file: the lines of the rarer form."""
    lines: dict[str, list[int]] = {}
    for example in examples:
        lines.setdefault(form_of(example.record), []).append(example.line)
    if len(lines) < 2:
        return []
    common, rare = sorted(lines, key=lambda form: -len(lines[form]))
    return [
        f"line {n}: a {rare} pair among {common} ones: write every pair in one form "
        "(all strings, or all message lists)"
        for n in lines[rare]
    ]


def read_examples(path: Path, data_format: str, *, label: str = "--data") -> list[Example]:
    """Read and validate a JSONL file; raise one RuntimeFailure listing every bad line."""
    if data_format not in FORMATS:
        raise RuntimeFailure(
            f"recipe data.format {data_format!r} is unknown: use one of {', '.join(FORMATS)}."
        )
    if not path.is_file():
        raise RuntimeFailure(
            f"{label} {path}: no such file. Pass the path of your JSONL data file."
        )
    lines = jsonl_lines(path, label)
    if not any(line.strip() for line in lines):
        raise RuntimeFailure(
            f"{label} {path}: the file is empty. It must hold one JSON object per line "
            f"in the recipe's '{data_format}' format."
        )
    check = CHECKS[data_format]
    examples: list[Example] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, say) carry no example
        try:
            obj = parse_line(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except LineProblem as exc:
            problems.append(f"line {number}: {exc}")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {number}: expected a JSON object, got {type(obj).__name__}")
            continue
        record, found = check(obj)
        problems.extend(f"line {number}: {p}" for p in found)
        if record is not None:
            examples.append(Example(line=number, record=record))
    if data_format == "preference" and not problems:
        problems = _mixed_forms(examples)
    if problems:
        shown = problems[:MAX_LISTED]
        if len(problems) > MAX_LISTED:
            shown.append(f"... and {len(problems) - MAX_LISTED} more")
        raise RuntimeFailure(
            f"{label} {path}: {len(problems)} problem(s) in the '{data_format}' data; fix these lines "
            "and run again (nothing was trained):",
            shown,
        )
    if not examples:
        raise RuntimeFailure(f"{label} {path}: no examples found. Add one JSON object per line.")
    return examples


def deduplicate(examples: list[Example]) -> tuple[list[Example], int]:
    """Drop exact duplicates (same canonical record), keeping the first; return the count dropped."""
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = example.key()
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


def split_ratios(count: int) -> tuple[float, float, float]:
    """80/10/10, or 90/5/5 for small data sets (under 10,000 examples)."""
    return (0.9, 0.05, 0.05) if count < SMALL_DATASET else (0.8, 0.1, 0.1)


def _held_out_count(total: int, fraction: float) -> int:
    return max(1, round(total * fraction))


def split_examples(
    examples: list[Example],
    seed: int,
    validation: list[Example] | None = None,
    test: list[Example] | None = None,
) -> DataSplit:
    """Dedupe, then shuffle with `seed` and carve the held-out sets not given by the operator."""
    unique, removed = deduplicate(examples)
    ratios = split_ratios(len(unique))
    need = (validation is None) + (test is None)
    if len(unique) < need + 1:
        raise RuntimeFailure(
            f"only {len(unique)} distinct example(s): a train/validation/test split needs at least "
            f"{need + 1}. Add examples, or pass --validation FILE and --test FILE."
        )
    shuffled = list(unique)
    random.Random(seed).shuffle(shuffled)
    if test is None:
        n = _held_out_count(len(unique), ratios[2])
        test, shuffled = shuffled[:n], shuffled[n:]
    if validation is None:
        n = _held_out_count(len(unique), ratios[1])
        validation, shuffled = shuffled[:n], shuffled[n:]
    return DataSplit(
        train=shuffled, validation=validation, test=test, duplicates_removed=removed, ratios=ratios
    )


def write_split(split: DataSplit, folder: Path) -> dict[str, Path]:
    """Write train/validation/test JSONL files (records only) into `folder`; return their paths."""
    from gapforge_runtime.files import write_text_atomic

    paths = {}
    for name, rows in (
        ("train", split.train),
        ("validation", split.validation),
        ("test", split.test),
    ):
        path = folder / f"{name}.jsonl"
        write_text_atomic(
            path, "".join(json.dumps(e.record, ensure_ascii=False) + "\n" for e in rows)
        )
        paths[name] = path
    return paths


def read_split_file(path: Path) -> list[dict[str, Any]]:
    """Read a split file written by `write_split` (split at `\n` only: a record's own U+2028
    stays in its string)."""
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
    ]
