"""Turn records into token ids and labels: the loss sees only what the model should learn to write.

Chat (and alpaca, as a one-turn chat) goes through the tokenizer's chat template; every token
outside an assistant turn gets label -100. Spans are found in characters on the rendered text
(each assistant turn is the difference between the conversation rendered up to it with a
generation prompt and rendered including it), then mapped to tokens by their offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapforge_runtime.data.reading import read_split_file

if TYPE_CHECKING:
    from gapforge_runtime.config import RecipeSettings

IGNORE_INDEX = -100
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


@dataclass
class Encoded:
    """One example as ids and labels (same length)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class EncodingStats:
    """What encoding did to a split; reported to the operator."""

    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    no_target_left: int = 0
    truncated_lines: list[int] = field(default_factory=list)


def alpaca_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """An alpaca record as a one-turn chat."""
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text: str = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    return text


def chat_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if full.startswith(upto) and upto.startswith(before):
            # The turn's own text, including its end-of-turn marker, so the model learns to stop.
            spans.append((len(before), len(upto)))
        else:
            # A template that rewrites earlier turns (some drop old reasoning): find the content.
            start = full.find(message["content"], cursor)
            if start < 0:
                continue
            spans.append((start, start + len(message["content"])))
        cursor = spans[-1][1]
    return full, spans


def prompt_text(tokenizer: Any, data_format: str, record: dict[str, Any]) -> str:
    """The prompt of a test example (everything before its last answer), for sample answers."""
    if data_format == "preference":
        from gapforge_runtime.data.preference import prompt_of

        return prompt_of(tokenizer, record)
    if data_format == "completion":
        words = record["text"].split()
        return " ".join(words[: max(1, len(words) // 2)])
    messages = alpaca_messages(record) if data_format == "alpaca" else record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if getattr(tokenizer, "chat_template", None):
        return _render(tokenizer, messages[:last], True)
    return ALPACA_PROMPT.format(instruction=messages[0]["content"], input_block="")


def reference_answer(data_format: str, record: dict[str, Any]) -> str:
    """The expected answer of a test example."""
    if data_format == "preference":
        from gapforge_runtime.data.preference import chosen_answer

        return chosen_answer(record)
    if data_format == "completion":
        words = record["text"].split()
        return " ".join(words[max(1, len(words) // 2) :])
    messages = alpaca_messages(record) if data_format == "alpaca" else record["messages"]
    return str([m for m in messages if m["role"] == "assistant"][-1]["content"])


def encode_record(
    tokenizer: Any, data_format: str, record: dict[str, Any], max_length: int
) -> Encoded:
    """Token ids and labels for one record, truncated to `max_length`."""
    if data_format == "preference":  # the prompt and its chosen answer; labels on the answer
        from gapforge_runtime.data.preference import completion_tokens

        ids, start = completion_tokens(tokenizer, record, "chosen")
        labels = [IGNORE_INDEX] * start + ids[start:]
        return Encoded(ids[:max_length], labels[:max_length], truncated=len(ids) > max_length)
    if data_format == "completion":
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        labels = list(ids)
    else:
        messages = alpaca_messages(record) if data_format == "alpaca" else record["messages"]
        if getattr(tokenizer, "chat_template", None):
            text, spans = chat_spans(tokenizer, messages)
        else:
            # No chat template: the classic alpaca prompt, answer followed by EOS.
            prompt = ALPACA_PROMPT.format(instruction=messages[0]["content"], input_block="")
            answer = messages[-1]["content"] + (tokenizer.eos_token or "")
            text, spans = prompt + answer, [(len(prompt), len(prompt) + len(answer))]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [
            token if any(s <= start < e for s, e in spans) else IGNORE_INDEX
            for token, (start, _end) in zip(ids, enc["offset_mapping"], strict=True)
        ]
    truncated = len(ids) > max_length
    return Encoded(input_ids=ids[:max_length], labels=labels[:max_length], truncated=truncated)


def encode_split(
    tokenizer: Any, data_format: str, records: list[dict[str, Any]], max_length: int
) -> tuple[list[Encoded], EncodingStats]:
    """Encode every record; count truncations and examples left with nothing to learn."""
    stats = EncodingStats()
    encoded = []
    for index, record in enumerate(records):
        item = encode_record(tokenizer, data_format, record, max_length)
        stats.examples += 1
        stats.tokens += len(item.input_ids)
        trained = sum(1 for label in item.labels if label != IGNORE_INDEX)
        stats.trained_tokens += trained
        if item.truncated:
            stats.truncated += 1
            stats.truncated_lines.append(index + 1)
        if trained == 0:
            stats.no_target_left += 1
            continue  # nothing to learn or measure: its answer lies past max_seq_length
        encoded.append(item)
    return encoded, stats


def encoded_split(recipe: RecipeSettings, tokenizer: Any, data_dir: Path, split: str) -> list[Any]:
    """One split written by the data step, encoded for training or scoring.

    Here rather than in the pipeline: the torchrun worker (distributed.py) needs it too, and the
    pipeline imports distributed.py.
    """
    records = read_split_file(data_dir / f"{split}.jsonl")
    items, _ = encode_split(tokenizer, recipe.data_format, records, recipe.train.max_seq_length)
    return items


def summarize_encoding(name: str, stats: EncodingStats, max_length: int) -> str:
    """One line about a split's encoding, with truncation counts the operator must know about."""
    line = f"[data] {name}: {stats.examples} examples, {stats.tokens} tokens ({stats.trained_tokens} trained)"
    if stats.truncated:
        line += f"; {stats.truncated} longer than max_seq_length {max_length} were truncated"
    if stats.no_target_left:
        line += f"; {stats.no_target_left} dropped (their answer lies beyond max_seq_length)"
    return line
