"""Preference pairs as data: TRL's two forms checked and read, and the views of a pair the rest
of the pipeline takes (its prompt, its chosen answer, its texts for the PII scan).

A preference record is `prompt`, `chosen`, `rejected`: conversational (`prompt` a list of messages,
`chosen`/`rejected` lists of assistant messages) or plain strings. `check_messages` checks a list
of chat messages for these pairs and for data's chat examples alike. This module imports no other
runtime module (data, encoding, hygiene and judge import it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLES = ("system", "user", "assistant")
FORMS = ("conversational", "string")


def check_messages(value: Any, field: str, roles: Sequence[str] = ROLES) -> list[str]:
    """Problems of a list of chat messages, each {role, content} with a role from `roles`."""
    if not isinstance(value, list) or not value:
        return [f"field '{field}' must be a non-empty list of {{role, content}} objects"]
    problems: list[str] = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where} is not an object")
            continue
        role, content = message.get("role"), message.get("content")
        if role is None:
            problems.append(f"{where} has no 'role'")
        elif role not in roles:
            # a known role in the wrong place (a user message as a chosen answer) is not "unknown"
            unknown = "" if role in ROLES else "unknown "
            problems.append(f"{where} has {unknown}role {role!r} (use one of {', '.join(roles)})")
        if "content" not in message:
            problems.append(f"{where} has no 'content'")
        elif not isinstance(content, str) or not content.strip():
            problems.append(f"{where} has empty content")
    return problems


def check_preference(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """A preference record in canonical form (prompt/chosen/rejected only), or its problems."""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
    if missing:
        return None, [f"missing field '{k}'" for k in missing]
    prompt = obj["prompt"]
    problems: list[str] = []
    if isinstance(prompt, str):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(obj[key], str) or not obj[key].strip():
                problems.append(
                    f"field '{key}' must be a non-empty string when 'prompt' is a string "
                    f"(got {obj[key]!r:.40})"
                )
    elif isinstance(prompt, list):
        problems += check_messages(prompt, "prompt")
        for key in ("chosen", "rejected"):
            if isinstance(obj[key], str):
                problems.append(
                    f"field '{key}' must be a list of assistant messages when 'prompt' is a "
                    f'message list: write [{{"role": "assistant", "content": ...}}]'
                )
            else:
                problems += check_messages(obj[key], key, ("assistant",))
    else:
        problems.append(
            f"field 'prompt' must be a string or a list of messages (got {prompt!r:.40})"
        )
    if not problems and obj["chosen"] == obj["rejected"]:
        problems.append("'chosen' and 'rejected' are the same: a pair must differ")
    if problems:
        return None, problems
    keep = ("role", "content")
    if isinstance(prompt, str):
        return {k: obj[k] for k in ("prompt", "chosen", "rejected")}, []
    return {
        k: [{r: m[r] for r in keep} for m in obj[k]] for k in ("prompt", "chosen", "rejected")
    }, []


def form_of(record: dict[str, Any]) -> str:
    """`conversational` or `string`."""
    return "string" if isinstance(record["prompt"], str) else "conversational"


# --- the rest of the pipeline's view: prompt + chosen answer ------------------------------------


def completion_tokens(tokenizer: Any, record: dict[str, Any], which: str) -> tuple[list[int], int]:
    """Token ids of prompt + `which` answer and where the answer starts, tokenized as TRL's DPO
    trainer does (chat template for the conversational form; EOS appended to a string answer)."""
    if form_of(record) == "conversational":
        prompt = tokenizer.apply_chat_template(
            record["prompt"], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(record["prompt"] + record[which], tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    else:
        answer = record[which]
        eos = tokenizer.eos_token or ""
        if eos and not answer.endswith(eos):
            answer += eos
        prompt_ids = tokenizer(record["prompt"])["input_ids"]
        ids = tokenizer(record["prompt"] + answer)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    return list(ids), start


def prompt_of(tokenizer: Any, record: dict[str, Any]) -> str:
    """The prompt as the model sees it before answering (for sample answers)."""
    if form_of(record) == "string":
        return str(record["prompt"])
    text: str = tokenizer.apply_chat_template(
        record["prompt"], tokenize=False, add_generation_prompt=True
    )
    return text


def chosen_answer(record: dict[str, Any]) -> str:
    """The chosen answer's text (the reference of the task metrics)."""
    chosen = record["chosen"]
    return chosen if isinstance(chosen, str) else str(chosen[-1]["content"])


def question_of(record: dict[str, Any]) -> str:
    """The question as a judge reads it: the prompt's last user turn, or the string prompt."""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return str(users[-1] if users else prompt[-1]["content"])


def texts(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, text) of every text in a preference record, for the PII scan."""
    found = []
    for key in ("prompt", "chosen", "rejected"):
        value = record[key]
        if isinstance(value, str):
            found.append((key, value))
        else:
            found += [(f"{key}[{i}].content", m["content"]) for i, m in enumerate(value)]
    return found


def replace_texts(record: dict[str, Any], new: dict[str, str]) -> dict[str, Any]:
    """The record with the texts named by `texts()` fields replaced (PII redaction)."""
    out: dict[str, Any] = {}
    for key in ("prompt", "chosen", "rejected"):
        value = record[key]
        if isinstance(value, str):
            out[key] = new.get(key, value)
        else:
            out[key] = [
                {**m, "content": new.get(f"{key}[{i}].content", m["content"])}
                for i, m in enumerate(value)
            ]
    return out
