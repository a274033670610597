"""Problems with a recipe, worded the same on both sides: `dotted.path: message (got value)`,
prefixed with `line N: ` where the YAML's line map is known.

The builder words its recipe YAML's problems with these, the runtime its recipe.json's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

Location = tuple[str | int, ...]
LineMap = Mapping[tuple[str, ...], int]
"""Each YAML path (keys, and list indices as strings) to the 1-based line where it starts."""


@dataclass(frozen=True)
class Problem:
    """One problem with a recipe, worded for the person who fixes it."""

    loc: Location
    """Where, as the recipe spells it."""
    line: int
    """The YAML line (0 where unknown or without a line map)."""
    text: str
    """`line N: dotted.path: message (got value)`; without a line map, no `line N: `."""


_UNION_TAGS = ("gguf", "hf", "local")


def schema_location(loc: Location) -> Location:
    """A pydantic error location as the recipe spells it: without the model-source union's tags."""
    return tuple(p for p in loc if p not in _UNION_TAGS)


def dotted(loc: Location) -> str:
    """`train.max_steps`, `quantize[1]`; `(top level)` for the recipe itself."""
    text = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")
    return text or "(top level)"


def show_value(value: Any) -> str:
    """A value as the problem quotes it, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def line_of(loc: Location, lines: LineMap) -> int:
    """The line of `loc`, or of its nearest enclosing value the map knows; 0 if none."""
    keys = tuple(str(p) for p in loc)
    for depth in range(len(keys), -1, -1):
        if keys[:depth] in lines:
            return lines[keys[:depth]]
    return 0


def problem(
    loc: Location,
    message: str,
    value: Any = None,
    *,
    show: bool = True,
    fix: str = "",
    lines: LineMap | None = None,
) -> Problem:
    """A problem at `loc`; with `lines` (the YAML's line map) its text starts with `line N: `."""
    line = 0 if lines is None else line_of(loc, lines)
    text = f"{dotted(loc)}: {message}"
    if lines is not None:
        text = f"line {line}: {text}"
    if show:
        text += f" (got {show_value(value)})"
    if fix:
        text += f": {fix}"
    return Problem(loc, line, text)


def error_message(error: Mapping[str, Any]) -> str:
    """A pydantic error's message, as a fix where one is obvious."""
    kind = error["type"]
    msg = str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown field: remove it or check its spelling"
    if kind == "missing":
        return "required field is missing: add it"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"must be one of {expected}"
    if kind == "string_pattern_mismatch":
        return f"does not match the pattern {error['ctx']['pattern']}"
    if kind == "union_tag_invalid":
        return f"type must be one of {error['ctx']['expected_tags']}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def schema_problems(error: ValidationError, lines: LineMap | None = None) -> list[Problem]:
    """Every problem of a failed validation, in pydantic's order."""
    return [
        problem(
            schema_location(item["loc"]),
            error_message(item),
            item.get("input"),
            show=item["type"] != "missing",
            lines=lines,
        )
        for item in error.errors(include_url=False)
    ]
