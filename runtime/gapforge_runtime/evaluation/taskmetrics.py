"""Task metrics of generated answers against reference answers: exact match, token F1, ROUGE-L.

Pure Python, no dependency. Normalization follows the SQuAD evaluation script: lower-case, drop
punctuation, drop the articles a/an/the, collapse whitespace. Scores are in points (0-100), as
SQuAD reports them, so a "drop in points" gate reads directly off them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normal form: lower-case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalized tokens (bag of words, counts clipped), as in SQuAD."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        # Both empty is a perfect match; one empty shares nothing with the other.
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (two rows of the DP table)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(
                previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1])
            )
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) on normalized tokens."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class TaskScores:
    """One model's mean task metrics over the answered prompts, in points (0-100)."""

    exact_match: float
    token_f1: float
    rouge_l: float
    n: int


def score_answers(predictions: list[str], references: list[str]) -> TaskScores:
    """Mean EM, token F1 and ROUGE-L of aligned predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(predictions)
    if n == 0:
        return TaskScores(float("nan"), float("nan"), float("nan"), 0)
    pairs = list(zip(predictions, references, strict=True))
    return TaskScores(
        exact_match=100.0 * sum(exact_match(p, r) for p, r in pairs) / n,
        token_f1=100.0 * sum(token_f1(p, r) for p, r in pairs) / n,
        rouge_l=100.0 * sum(rouge_l(p, r) for p, r in pairs) / n,
        n=n,
    )


def score_models(answers: dict[str, list[str]], references: list[str]) -> dict[str, dict[str, Any]]:
    """Task metrics per model, as JSON data: {model: {exact_match, token_f1, rouge_l, n}}."""
    return {name: asdict(score_answers(outs, references)) for name, outs in answers.items()}
