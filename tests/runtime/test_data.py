"""Data formats, every data error (all listed with line numbers), dedupe, split, prompt masking."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import chat_examples, write_jsonl
from gapforge_runtime.data.encoding import IGNORE_INDEX, encode_record
from gapforge_runtime.data.reading import read_examples, split_examples, split_ratios
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.modelio import load_tokenizer


def test_each_format_reads(tmp_path: Path) -> None:
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "Add", "input": "1+1", "output": "2"}])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, *chat_examples(2)])
    completion = write_jsonl(tmp_path / "t.jsonl", [{"text": "some text"}])
    assert [e.record["output"] for e in read_examples(alpaca, "alpaca")] == ["hi", "2"]
    assert [len(e.record["messages"]) for e in read_examples(chat, "chat")] == [2, 3, 3]
    assert read_examples(completion, "completion")[0].record == {"text": "some text"}


def test_every_bad_line_is_listed(tmp_path: Path) -> None:
    rows = [
        chat_examples(1)[0],
        "{not json",
        {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
        {"text": "wrong format"},
        "[1, 2]",
        {"messages": [{"role": "user", "content": "only a question"}]},
    ]
    with pytest.raises(RuntimeFailure) as caught:
        read_examples(write_jsonl(tmp_path / "bad.jsonl", rows), "chat")
    details = "\n".join(caught.value.details)
    assert "6 problem(s)" in caught.value.message
    assert "line 2: not valid JSON" in details
    assert "line 3: messages[1] has unknown role 'robot'" in details
    assert "line 4: messages[0] has empty content" in details
    assert "line 5: missing field 'messages'" in details
    assert "line 6: expected a JSON object" in details
    assert "line 7: field 'messages' has no assistant message" in details


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"input": "x", "output": "y"}, "missing field 'instruction'"),
        ({"instruction": "x", "output": "  "}, "field 'output' is empty"),
        ({"instruction": "x", "input": 3, "output": "y"}, "field 'input' must be a string"),
    ],
)
def test_alpaca_errors(tmp_path: Path, row: dict[str, object], expected: str) -> None:
    with pytest.raises(RuntimeFailure) as caught:
        read_examples(write_jsonl(tmp_path / "bad.jsonl", [row]), "alpaca")
    assert caught.value.details[0].startswith(f"line 1: {expected}")


def test_completion_error_and_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure) as caught:
        read_examples(write_jsonl(tmp_path / "t.jsonl", [{"body": "x"}]), "completion")
    assert caught.value.details == ["line 1: missing field 'text'"]
    with pytest.raises(RuntimeFailure, match="no such file"):
        read_examples(tmp_path / "missing.jsonl", "chat")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(RuntimeFailure, match="the file is empty"):
        read_examples(tmp_path / "empty.jsonl", "chat")


def test_dedupe_and_seeded_split(tmp_path: Path) -> None:
    rows = chat_examples(40) + chat_examples(5)  # five exact duplicates
    examples = read_examples(write_jsonl(tmp_path / "d.jsonl", rows), "chat")
    first = split_examples(examples, seed=3)
    again = split_examples(examples, seed=3)
    other = split_examples(examples, seed=4)
    assert first.duplicates_removed == 5
    assert (len(first.train), len(first.validation), len(first.test)) == (36, 2, 2)
    assert [e.line for e in first.test] == [e.line for e in again.test]
    assert [e.line for e in first.train] != [e.line for e in other.train]
    keys = [e.key() for e in first.train + first.validation + first.test]
    assert len(keys) == len(set(keys)) == 40
    assert split_ratios(9_999) == (0.9, 0.05, 0.05) and split_ratios(10_000) == (0.8, 0.1, 0.1)


def test_operator_split_files_are_used(tmp_path: Path) -> None:
    rows = chat_examples(30)
    train = read_examples(write_jsonl(tmp_path / "t.jsonl", rows[:20]), "chat")
    val = read_examples(write_jsonl(tmp_path / "v.jsonl", rows[20:25]), "chat")
    test = read_examples(write_jsonl(tmp_path / "s.jsonl", rows[25:]), "chat")
    split = split_examples(train, seed=1, validation=val, test=test)
    assert (len(split.train), len(split.validation), len(split.test)) == (20, 5, 5)


def test_chat_loss_only_on_assistant_tokens(tiny_model: Path) -> None:
    tokenizer = load_tokenizer(tiny_model)
    record = chat_examples(1)[0]
    item = encode_record(tokenizer, "chat", record, max_length=512)
    trained = [t for t, label in zip(item.input_ids, item.labels, strict=True) if label != IGNORE_INDEX]
    text = tokenizer.decode(trained)
    assert text.startswith("Desk answer") and "<|im_end|>" in text
    assert "How do I" not in text and "system" not in text
    prompt_part = item.labels[: item.labels.index(trained[0])]
    assert all(label == IGNORE_INDEX for label in prompt_part)


def test_alpaca_and_completion_encoding(tiny_model: Path) -> None:
    tokenizer = load_tokenizer(tiny_model)
    alpaca = encode_record(tokenizer, "alpaca", {"instruction": "Say hi", "input": "", "output": "hi there"}, 512)
    trained = [t for t, label in zip(alpaca.input_ids, alpaca.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained).strip().startswith("hi there")
    completion = encode_record(tokenizer, "completion", {"text": "the desk answers"}, 512)
    assert completion.labels == completion.input_ids


def test_over_length_is_truncated_and_counted(tiny_model: Path) -> None:
    from gapforge_runtime.data.encoding import encode_split

    tokenizer = load_tokenizer(tiny_model)
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "answer"}]}
    items, stats = encode_split(tokenizer, "chat", [chat_examples(1)[0], long], max_length=80)
    assert stats.truncated == 1 and stats.no_target_left == 1 and len(items) == 1
    assert all(len(i.input_ids) <= 80 for i in items)
