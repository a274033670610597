"""Data hygiene in the data step: personal data, near-duplicates and leakage, token lengths.

On by default; a recipe opts out per part with `enabled: false`, and the report then says the
data was not checked. Nothing here ever writes, logs or raises a found value: findings are kept
as (file, line, field, type, action).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gapforge_runtime.data.hygiene.dedupe import find_near_duplicates
from gapforge_runtime.data.hygiene.patterns import PLACEHOLDERS, redact
from gapforge_runtime.data.hygiene.pii import PiiDetector
from gapforge_runtime.data.reading import DataSplit, Example
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.recipe_schema import DedupeSpec, PiiSpec

SPLITS = ("train", "validation", "test")
OPTED_OUT = "not checked (the recipe opts out)"
MAX_LISTED = 200
ACTIONS = {"redact": "redacted", "drop": "dropped", "fail": "failed"}


def record_texts(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, text) for every text field of a canonical record, in any of the three formats."""
    if "chosen" in record:
        from gapforge_runtime.data.preference import texts

        return texts(record)
    if "messages" in record:
        return [(f"messages[{i}].content", m["content"]) for i, m in enumerate(record["messages"])]
    if "text" in record:
        return [("text", record["text"])]
    return [(k, record[k]) for k in ("instruction", "input", "output") if record.get(k)]


def _replace_texts(record: dict[str, Any], new: dict[str, str]) -> dict[str, Any]:
    if "chosen" in record:
        from gapforge_runtime.data.preference import replace_texts

        return replace_texts(record, new)
    if "messages" in record:
        messages = [
            {**m, "content": new.get(f"messages[{i}].content", m["content"])}
            for i, m in enumerate(record["messages"])
        ]
        return {**record, "messages": messages}
    return {**record, **new}


def example_text(example: Example) -> str:
    """The whole example as one text (for near-duplicate search)."""
    return "\n".join(text for _, text in record_texts(example.record))


@dataclass(frozen=True)
class PiiRow:
    """One finding as the report shows it: where, what type, what was done; never the value."""

    split: str
    file: str
    line: int
    field: str
    type: str
    action: str


def _policy(settings: PiiSpec) -> dict[str, str]:
    # A section that names only some types: the schema's defaults fill the rest.
    return {str(k): str(v) for k, v in {**PiiSpec().policy, **settings.policy}.items()}


def scan_pii(
    split: DataSplit, sources: dict[str, str], settings: PiiSpec, detector: PiiDetector
) -> dict[str, Any]:
    """Apply the per-type policy to every split in place; the report; RuntimeFailure on `fail`."""
    started = time.monotonic()
    policy = _policy(settings)
    rows: list[PiiRow] = []
    failed: list[PiiRow] = []
    changed: dict[str, dict[str, int]] = {"redacted": {}, "dropped": {}, "failed": {}}
    for name in SPLITS:
        kept: list[Example] = []
        for example in getattr(split, name):
            found = {f: detector.find(text) for f, text in record_texts(example.record)}
            types = {x.type for hits in found.values() for x in hits}
            if not types:
                kept.append(example)
                continue
            verdict = next(
                p for p in ("fail", "drop", "redact") if any(policy[t] == p for t in types)
            )
            action = ACTIONS[verdict]
            for field_name, hits in found.items():
                for hit in hits:
                    row = PiiRow(name, sources[name], example.line, field_name, hit.type, action)
                    rows.append(row)
                    if policy[hit.type] == "fail":
                        failed.append(row)
            changed[action][name] = changed[action].get(name, 0) + 1
            if verdict == "redact":
                texts = dict(record_texts(example.record))
                new = {f: redact(texts[f], hits) for f, hits in found.items() if hits}
                kept.append(Example(line=example.line, record=_replace_texts(example.record, new)))
        setattr(split, name, kept)
    if failed:
        shown = [
            f"{r.file} line {r.line}: {r.type} in {r.field} (data.pii.policy.{r.type}: fail)"
            for r in failed[:MAX_LISTED]
        ]
        raise RuntimeFailure(
            f"personal data or secrets found where the recipe's policy is 'fail': {len(failed)} "
            "finding(s); remove them from the data (or set data.pii.policy.<type> to redact or "
            "drop) and run again (nothing was trained):",
            shown,
        )
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row.type, {}).setdefault(row.split, 0)
        counts[row.type][row.split] += 1
    return {
        "status": "checked",
        "detectors": detector.detectors,
        "policy": policy,
        "placeholders": {t: PLACEHOLDERS[t] for t in policy},
        "counts": counts,
        "findings_total": len(rows),
        "findings": [vars(r) for r in rows[:MAX_LISTED]],
        "examples_redacted": changed["redacted"],
        "examples_dropped": changed["dropped"],
        "not_checked": detector.not_checked(),
        "seconds": round(time.monotonic() - started, 3),
    }


def dedupe_split(split: DataSplit, sources: dict[str, str], settings: DedupeSpec) -> dict[str, Any]:
    """Drop near-duplicates and leaks from training in place; the report."""
    started = time.monotonic()
    train = split.train
    result = find_near_duplicates(
        [example_text(e) for e in train],
        {name: [example_text(e) for e in getattr(split, name)] for name in SPLITS[1:]},
        threshold=settings.threshold,
        shingle_words=settings.shingle_words,
        num_perm=settings.num_perm,
        order=sorted(range(len(train)), key=lambda i: train[i].line),
    )
    dropped = result.dropped()
    split.train = [e for i, e in enumerate(train) if i not in dropped]
    groups = [
        {
            "kept_line": train[g.kept].line,
            "dropped": [{"line": train[i].line, "jaccard": j} for i, j in g.dropped],
        }
        for g in result.groups
    ]
    leaks = [
        {
            "split": leak.split,
            "held_out_file": sources[leak.split],
            "held_out_line": getattr(split, leak.split)[leak.held_out].line,
            "train_line": train[leak.train].line,
            "jaccard": leak.jaccard,
        }
        for leak in result.leaks
    ]
    return {
        "status": "checked",
        "threshold": settings.threshold,
        "shingle_words": settings.shingle_words,
        "num_perm": settings.num_perm,
        "train_file": sources["train"],
        "near_duplicates_dropped": sum(len(g.dropped) for g in result.groups),
        "leaks_dropped": len({leak.train for leak in result.leaks}),
        "groups": groups[:MAX_LISTED],
        "groups_total": len(groups),
        "leaks": leaks[:MAX_LISTED],
        "leaks_total": len(leaks),
        "seconds": round(time.monotonic() - started, 3),
    }


def apply_hygiene(
    split: DataSplit,
    sources: dict[str, str],
    pii: PiiSpec,
    dedupe: DedupeSpec,
    detector: PiiDetector | None = None,
) -> dict[str, Any]:
    """PII policy on every split, then near-duplicates and leaks out of training, in place.

    `sources` names the file each split came from (for the report's line numbers). Returns the
    report's `hygiene` section (without `lengths`, which the data step adds from its tokenizer).
    """
    report: dict[str, Any] = {"not_checked": []}
    if pii.enabled:
        found_by = detector or PiiDetector(presidio=pii.presidio, ner_model=pii.ner_model)
        report["pii"] = scan_pii(split, sources, pii, found_by)
        report["not_checked"] += report["pii"]["not_checked"]
    else:
        report["pii"] = {"status": OPTED_OUT}
        report["not_checked"].append(f"personal data: {OPTED_OUT}")
    if dedupe.enabled:
        report["dedupe"] = dedupe_split(split, sources, dedupe)
    else:
        report["dedupe"] = {"status": OPTED_OUT}
        report["not_checked"].append(f"near-duplicates and leakage: {OPTED_OUT}")
    if not split.train:
        raise RuntimeFailure(
            f"no training examples left after data hygiene ({summary(report)}). Check "
            "data.pii.policy (drop) and the data, and run again."
        )
    return report


def summary(report: dict[str, Any]) -> str:
    """One line of counts for the log (types and numbers only)."""
    parts = []
    pii = report.get("pii", {})
    if pii.get("status") == "checked":
        by_type = Counter({t: sum(s.values()) for t, s in pii["counts"].items()})
        shown = ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())) or "none"
        dropped = sum(pii["examples_dropped"].values())
        redacted = sum(pii["examples_redacted"].values())
        parts.append(f"PII found: {shown}; {redacted} examples redacted, {dropped} dropped")
    else:
        parts.append(f"PII {pii.get('status')}")
    dedupe = report.get("dedupe", {})
    if dedupe.get("status") == "checked":
        parts.append(
            f"{dedupe['near_duplicates_dropped']} near-duplicates and {dedupe['leaks_dropped']} "
            "held-out leaks dropped from training"
        )
    else:
        parts.append(f"near-duplicates {dedupe.get('status')}")
    return "; ".join(parts)
