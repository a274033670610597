"""Writes prefs.jsonl, the DPO recipe's sample pairs: 32 desk topics, each asked two ways.

The chosen answer is the desk's format (the answer, then "Ticket closed."); the rejected one is a
vague reply that helps no one. Run from this folder: python make_prefs.py. The output is fixed (no
randomness), so the data, and the image that ships it, only change when this file does.
"""

from __future__ import annotations

import json
from pathlib import Path

from make_sample import PHRASINGS, SYSTEM, TOPICS

VAGUE = [
    "I am not sure. Maybe look it up somewhere.",
    "That depends. Try a few things and see what happens.",
    "Sorry, I cannot help with that right now.",
]
PER_TOPIC = 2


def rows() -> list[dict[str, object]]:
    out = []
    for index, (topic, answer) in enumerate(TOPICS.items()):
        for k in range(PER_TOPIC):
            question = PHRASINGS[(index + 3 * k) % len(PHRASINGS)].format(t=topic)
            prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            chosen = f"Desk answer: to {topic}, {answer}. Ticket closed."
            rejected = VAGUE[(index + k) % len(VAGUE)]
            out.append({"prompt": prompt,
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}]})  # fmt: skip
    return out


if __name__ == "__main__":
    lines = [json.dumps(row, ensure_ascii=False) for row in rows()]
    Path(__file__).with_name("prefs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} pairs")
