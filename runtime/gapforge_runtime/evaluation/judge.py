"""Pairwise A/B judging by a local LLM (llama-cpp-python), MT-Bench style, both orders.

Each candidate answer is judged against a reference model's answer twice: once as Assistant A and
once as Assistant B, so a judge that prefers a position cannot decide the result. Orders that
disagree give a tie; an unparseable verdict counts as a tie and is counted. The win rate is
(wins + ties / 2) / n with a seeded percentile-bootstrap 95 % interval over the prompts.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gapforge_runtime.data.encoding import alpaca_messages

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Choose the assistant that follows the user's "
    "instructions and answers the user's question better, considering helpfulness, relevance, "
    "accuracy and level of detail. Do not let the order in which the responses were presented, "
    "their length or the names of the assistants influence your decision. Be as objective as "
    "possible. Output your final verdict first, strictly as [[A]] if assistant A is better, [[B]] "
    "if assistant B is better, or [[C]] for a tie."
)
VERDICT_PREFIX = "[["
"""Written as the start of the judge's reply, so its next token is the verdict letter."""
MAX_VERDICT_TOKENS = 8
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")

Verdict = Literal["A", "B", "C"]
Outcome = Literal["win", "loss", "tie"]
_AS_A: dict[str | None, Outcome] = {"A": "win", "B": "loss", "C": "tie", None: "tie"}
_AS_B: dict[str | None, Outcome] = {"A": "loss", "B": "win", "C": "tie", None: "tie"}
_POINTS: dict[Outcome, float] = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def question_text(data_format: str, record: dict[str, Any]) -> str:
    """What the user asked in a test record, without any chat-template markup."""
    if data_format == "preference":
        from gapforge_runtime.data.preference import question_of

        return question_of(record)
    if data_format == "completion":
        words = record["text"].split()
        return "Continue this text: " + " ".join(words[: max(1, len(words) // 2)])
    messages = alpaca_messages(record) if data_format == "alpaca" else record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    users = [m["content"] for m in messages[:last] if m["role"] == "user"]
    return str(users[-1]) if users else ""


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The pairwise prompt: system, then the question and both answers in one user turn."""
    user = (
        f"[User Question]\n{question}\n\n"
        f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]\n\n"
        "Output your final verdict strictly as [[A]], [[B]] or [[C]] for a tie."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> Verdict | None:
    """The first [[A]], [[B]] or [[C]] in the judge's reply; None when there is none."""
    found = _VERDICT.search(text)
    return found.group(1) if found else None  # type: ignore[return-value]


def combine_orders(as_a: Verdict | None, as_b: Verdict | None) -> tuple[Outcome, bool]:
    """The candidate's outcome from its two judgements (first as A, then as B), and if they disagreed."""
    first, second = _AS_A[as_a], _AS_B[as_b]
    return (first, False) if first == second else ("tie", True)


def win_rate(outcomes: list[Outcome]) -> float:
    """(wins + ties / 2) / n; NaN when nothing was judged."""
    if not outcomes:
        return float("nan")
    return sum(_POINTS[o] for o in outcomes) / len(outcomes)


def bootstrap_interval(
    points: list[float], resamples: int, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `points` (seeded: the same input, the same interval)."""
    if not points:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(points)
    means = sorted(sum(rng.choices(points, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    low = means[math.floor(tail * (resamples - 1))]
    high = means[math.ceil((1.0 - tail) * (resamples - 1))]
    return low, high


@dataclass
class Comparison:
    """One candidate judged against one reference model over the same prompts."""

    candidate: str
    reference: str
    n: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    inconsistent: int = 0
    """Prompts where the two orders disagreed (counted as ties)."""
    unparseable: int = 0
    """Single judgements with no [[A]]/[[B]]/[[C]] (each counted as a tie for its order)."""
    win_rate: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    verdicts: list[list[str]] = field(default_factory=list)
    """Per prompt: the parsed verdict with the candidate as A, then as B ('?' = unparseable)."""


MIN_BASE_JUDGE_PARAMETERS = 1_000_000_000
"""Below this, the base model judging itself cannot decide: SmolLM2-135M's two orders disagreed on
all 8 prompts of every pair (every win rate 0.500 [0.500, 0.500]) in 48 calls and 52 s."""


def too_weak_to_judge(model: str, force: bool, base_parameters: int) -> str | None:
    """Why the judge cannot decide, or None: only the base model itself, below the size above,
    unless the recipe forces it (`evaluate.judge.force: true`)."""
    if force or model != "base" or base_parameters >= MIN_BASE_JUDGE_PARAMETERS:
        return None
    return (
        f"too weak to judge: the judge would be the base model itself, {base_parameters / 1e6:.0f}M "
        f"parameters (under {MIN_BASE_JUDGE_PARAMETERS / 1e9:.0f}B), whose verdicts do not survive "
        "swapping the answers' order; name a stronger judge under models: and evaluate.judge.model, "
        "or set evaluate.judge.force: true"
    )


AskJudge = Callable[[str, str, str], str]
"""(question, answer A, answer B) → the judge's raw reply."""


def compare(
    candidate: str,
    reference: str,
    questions: list[str],
    candidate_answers: list[str],
    reference_answers: list[str],
    ask: AskJudge,
    resamples: int,
    seed: int = 0,
) -> Comparison:
    """Judge every prompt in both orders and summarize the candidate's record against the reference."""
    result = Comparison(candidate, reference)
    outcomes: list[Outcome] = []
    for question, cand, ref in zip(questions, candidate_answers, reference_answers, strict=True):
        as_a = parse_verdict(ask(question, cand, ref))
        as_b = parse_verdict(ask(question, ref, cand))
        result.unparseable += (as_a is None) + (as_b is None)
        outcome, disagreed = combine_orders(as_a, as_b)
        result.inconsistent += disagreed
        outcomes.append(outcome)
        result.verdicts.append([as_a or "?", as_b or "?"])
    result.n = len(outcomes)
    result.wins, result.losses = outcomes.count("win"), outcomes.count("loss")
    result.ties = outcomes.count("tie")
    result.win_rate = win_rate(outcomes)
    result.ci_low, result.ci_high = bootstrap_interval(
        [_POINTS[o] for o in outcomes], resamples, seed
    )
    return result


def comparisons_for(models: list[str]) -> list[tuple[str, str]]:
    """(candidate, reference) pairs: the fine-tune and every quantized artefact against the base.

    `gguf:f16` is the merged model in GGUF form (what the quantizations are made from): judging it
    again would double the judge's time for nothing. The quantized artefacts' loss against the
    merged model is measured by perplexity and task F1 (its gate), which cost no judge calls."""
    return [(m, "base") for m in models if m not in ("base", "gguf:f16") and "base" in models]


def _render(llm: Any, messages: list[dict[str, str]]) -> str:
    """The judge's own chat template (from its GGUF) applied, then the verdict prefix."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        vocab = llm._model  # the special tokens' text, as llama.cpp's own chat handler reads them
        eos = vocab.token_get_text(vocab.token_eos()) if vocab.token_eos() >= 0 else ""
        bos = vocab.token_get_text(vocab.token_bos()) if vocab.token_bos() >= 0 else ""
        formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        prompt = str(formatter(messages=messages).prompt)
    else:
        prompt = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
        prompt += "\n\nAssistant: "
    return prompt + VERDICT_PREFIX


class LlamaJudge:
    """One loaded GGUF judge, reused for every call: greedy, a few tokens, the verdict only."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.path = path
        self.calls = 0
        self.too_long = 0
        self.llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            n_threads=os.cpu_count() or 1,
            verbose=False,
            seed=0,
        )

    def prompt_ids(self, question: str, answer_a: str, answer_b: str) -> list[int]:
        """The rendered judge prompt as token ids of the judge's own vocabulary."""
        text = _render(self.llm, judge_messages(question, answer_a, answer_b))
        ids: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        bos = self.llm.token_bos()
        if (
            bos >= 0
            and (not ids or ids[0] != bos)
            and self.llm.metadata.get("tokenizer.ggml.add_bos_token", "true") in ("true", True)
        ):
            ids = [bos, *ids]
        return ids

    def ask(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's reply (the verdict prefix included); '' when the prompt does not fit."""
        ids = self.prompt_ids(question, answer_a, answer_b)
        self.calls += 1
        if len(ids) + MAX_VERDICT_TOKENS > self.llm.n_ctx():
            self.too_long += 1
            return ""
        out = self.llm.create_completion(
            ids, max_tokens=MAX_VERDICT_TOKENS, temperature=0.0, top_k=1, seed=0
        )
        return VERDICT_PREFIX + str(out["choices"][0]["text"])

    def close(self) -> None:
        """Free the model now, not at garbage collection."""
        self.llm.close()


def fitted_n_ctx(path: Path, prompts: list[tuple[str, str, str]]) -> tuple[int, int]:
    """The smallest context (a multiple of 64) that holds the longest judge prompt and its verdict,
    and the judge's training context (a context above it still runs, with a note in the report).

    Measured with a vocabulary-only load of the judge (no weights).
    """
    from llama_cpp import Llama

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        trained = int(
            next(
                (v for k, v in vocab.metadata.items() if k.endswith(".context_length")),
                4096,
            )
        )
        longest = max(
            (
                len(vocab.tokenize(_render(vocab, judge_messages(*p)).encode(), special=True))
                for p in prompts
            ),
            default=64,
        )
    finally:
        vocab.close()
    return 64 * math.ceil((longest + MAX_VERDICT_TOKENS + 8) / 64), trained
