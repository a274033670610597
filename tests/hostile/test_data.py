"""Hostile operator data (issue 22, item 7): JSONL that a lenient reader would silently change
(Latin-1 bytes replaced by U+FFFD), split in the wrong place (U+2028, U+0085 inside a string), or
die on with a traceback (deep nesting: RecursionError; a 5000-digit integer: ValueError). The
runtime's reader refuses each, naming the line (exit 2 through RuntimeFailure), or keeps the text
exactly as written."""

from __future__ import annotations

import json
import time

import pytest
from gapforge_runtime.data.reading import (
    MAX_DEPTH,
    Example,
    read_examples,
    read_split_file,
    split_examples,
    write_split,
)
from gapforge_runtime.errors import RuntimeFailure

from tests.hostile.conftest import Hostile

GOOD = '{"text": "a plain line"}\n'


def _refusal(hostile: Hostile, data: bytes) -> str:
    path = hostile.inputs / "data.jsonl"
    path.write_bytes(data)
    with pytest.raises(RuntimeFailure) as caught:
        read_examples(path, "completion")
    assert path.read_bytes() == data, "the operator's file was changed"
    return caught.value.render()


def test_a_latin1_file_is_refused_naming_line_and_byte(hostile: Hostile) -> None:
    data = (GOOD + GOOD + '{"text": "caf\xe9 au lait"}\n').encode("latin-1")
    text = _refusal(hostile, data)
    assert "line 3, byte 14 of the line" in text and "is 0xe9, which is not UTF-8" in text, text
    assert "iconv -f latin1" in text and "\ufffd" not in text


def test_an_invalid_byte_in_the_middle_of_a_utf8_file_is_named(hostile: Hostile) -> None:
    data = GOOD.encode() + b'{"text": "ok \xc3\x28"}\n' + GOOD.encode()
    assert "line 2, byte 14 of the line" in _refusal(hostile, data)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_line_separators_inside_a_string_stay_in_the_string(
    hostile: Hostile, separator: str
) -> None:
    path = hostile.inputs / "data.jsonl"
    texts = [f"before{separator}after", "second"]
    path.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    assert separator in path.read_text(encoding="utf-8"), (
        "written raw, as str.splitlines would split it"
    )
    examples = read_examples(path, "completion")
    assert [e.record["text"] for e in examples] == texts and [e.line for e in examples] == [1, 2]


def test_a_split_file_keeps_line_separators_too(hostile: Hostile) -> None:
    examples = [Example(n, {"text": f"x{n}\u2028y\u0085z"}) for n in range(1, 11)]
    hostile.out.mkdir()
    paths = write_split(split_examples(examples, seed=1), hostile.out)
    records = [r for name in ("train", "validation", "test") for r in read_split_file(paths[name])]
    assert sorted(r["text"] for r in records) == sorted(e.record["text"] for e in examples)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_names_the_line(hostile: Hostile, depth: int) -> None:
    deep = '{"text": "x", "meta": ' + "[" * depth + "]" * depth + "}\n"
    started = time.monotonic()
    text = _refusal(hostile, (GOOD + deep).encode())
    assert (
        f"line 2: nested more than {MAX_DEPTH} levels deep" in text
        and time.monotonic() - started < 1
    )


def test_brackets_inside_strings_are_not_nesting(hostile: Hostile) -> None:
    path = hostile.inputs / "data.jsonl"
    path.write_text(json.dumps({"text": "[{" * 500 + '\\"]'}) + "\n", encoding="utf-8")
    assert read_examples(path, "completion")[0].record["text"].startswith("[{[{")


@pytest.mark.parametrize(
    ("number", "needle"),
    [("7" * 5000, "a number of 5000 characters"), ("1" + "0" * 400 + ".5", "a number of 403"),
     ("NaN", "NaN is not JSON"), ("-Infinity", "-Infinity is not JSON")],
)  # fmt: skip
def test_numbers_past_the_bounds_name_the_line(hostile: Hostile, number: str, needle: str) -> None:
    text = _refusal(hostile, (GOOD + '{"text": "x", "n": ' + number + "}\n").encode())
    assert f"line 2: {needle}" in text, text
