"""Near-duplicate examples by MinHash LSH over word shingles, rechecked with exact Jaccard.

Within the training set the first example (by source line) of each group is kept. A training example
that is a near-copy of a held-out (validation or test) example is dropped from training: the
held-out sets are what the model is judged on, so they stay as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from datasketch import MinHash, MinHashLSH

SEED = 1
PUNCTUATION = re.compile(r"[^\w\s]+")
LSH_MARGIN = 0.1
"""LSH runs this much below the threshold: it only proposes candidates, and each is rechecked
exactly, so a lower LSH threshold costs a few rechecks and misses fewer true pairs near the line."""


def normalize(text: str) -> str:
    """Lower-case, punctuation removed, whitespace collapsed."""
    return " ".join(PUNCTUATION.sub(" ", text.lower()).split())


def shingles(text: str, words: int) -> frozenset[str]:
    """The set of `words`-word shingles of the normalized text (the whole text if shorter)."""
    tokens = normalize(text).split()
    if len(tokens) <= words:
        return frozenset([" ".join(tokens)]) if tokens else frozenset()
    return frozenset(" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Shared shingles over all shingles of the two (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass(frozen=True)
class DuplicateGroup:
    """Training examples (by index) that are near-copies of the one kept."""

    kept: int
    dropped: list[tuple[int, float]]
    """(index, Jaccard with the kept example)."""


@dataclass(frozen=True)
class Leak:
    """A held-out example and the training example that nearly copies it."""

    split: str
    held_out: int
    train: int
    jaccard: float


@dataclass
class DedupeResult:
    """What to drop from training, and why."""

    groups: list[DuplicateGroup] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)

    def dropped(self) -> set[int]:
        """Training indices to drop: near-duplicates and leaks."""
        return {i for g in self.groups for i, _ in g.dropped} | {leak.train for leak in self.leaks}


class _Index:
    """Shingle sets and an LSH index over the kept training examples."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - LSH_MARGIN), num_perm=num_perm)

    def signature(self, items: frozenset[str]) -> MinHash:
        sig = MinHash(num_perm=self.num_perm, seed=SEED)
        sig.update_batch([s.encode("utf-8") for s in sorted(items)])
        return sig


def find_near_duplicates(
    train: list[str],
    held_out: dict[str, list[str]],
    threshold: float = 0.8,
    shingle_words: int = 5,
    num_perm: int = 128,
    order: list[int] | None = None,
) -> DedupeResult:
    """Near-duplicate groups within `train` and leaks from each held-out split into it.

    `order` is the order in which training examples claim to be "first" (default: as given);
    the result is deterministic for the same inputs (seeded MinHash, sorted candidates).
    """
    sets = [shingles(t, shingle_words) for t in train]
    index = _Index(threshold, num_perm)
    groups: dict[int, list[tuple[int, float]]] = {}
    for i in order if order is not None else range(len(train)):
        if not sets[i]:
            continue
        sig = index.signature(sets[i])
        scored = [(jaccard(sets[i], sets[k]), -k) for k in index.lsh.query(sig)]
        best = max((s for s in scored if s[0] >= threshold), default=None)
        if best is None:
            index.lsh.insert(i, sig)
            groups[i] = []
        else:
            groups[-best[1]].append((i, round(best[0], 4)))
    result = DedupeResult(
        groups=[DuplicateGroup(kept=k, dropped=v) for k, v in groups.items() if v]
    )
    for split, texts in held_out.items():
        for h, text in enumerate(texts):
            items = shingles(text, shingle_words)
            if not items:
                continue
            for k in sorted(index.lsh.query(index.signature(items))):
                score = jaccard(items, sets[k])
                if score >= threshold:
                    result.leaks.append(Leak(split, h, k, round(score, 4)))
    return result
