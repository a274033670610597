"""Writes sample.jsonl, the default recipe's sample data: 32 desk topics, each asked six ways.

Run from this folder: python make_sample.py. The output is fixed (no randomness), so the data,
and the image that ships it, only change when this file does.
"""

from __future__ import annotations

import json
from pathlib import Path

SYSTEM = "You are the Gapforge operations desk."
PHRASINGS = [
    "How do I {t}?",
    "Explain how to {t}.",
    "Tell me how to {t}.",
    "What is the way to {t}?",
    "I need to {t}. What should I do?",
    "Can you tell me how to {t}?",
    "Quick question: how can I {t}?",
]
TOPICS = {
    "choose a quantization": "use Q8_0 when quality matters most and Q4_K_M when memory is tight",
    "serve the model with Ollama": "use the `Modelfile` next to each GGUF file with `ollama create`",
    "find the evaluation report": "open `outputs/report.html`; the same figures are in `outputs/report.md`",
    "check the image digest": "compare the digest printed by `gapforge inspect` with the one in the release ledger",
    "rotate the signing key": "run `gapforge keygen` on the connected side and publish the new public key to operators",
    "verify without gapforge": "run `sha256sum -c SHA256SUMS` and check the signature with `openssl pkeyutl -verify`",
    "run without a GPU": "use a `cpu` image; QLoRA and GPTQ need the `cuda` profile",
    "split the data": "the runtime splits 90/5/5 under ten thousand examples, seeded by the recipe",
    "check free disk space": "the runtime checks it before training and stops with a clear message if it is short",
    "read the lineage of a model": "open `outputs/manifest.json`; it lists every input and output with its sha256",
    "resume an interrupted training run": "run the same command again with `--resume`; it continues from the last checkpoint",
    "report a failed pretest": "attach `pretest.json` from the bundle and the build log to the ticket",
    "load an image offline": "run `gapforge load <bundle>`; it verifies first, then calls `docker load`",
    "verify a bundle": "run `gapforge verify <bundle>`; it checks every SHA256SUMS line and the Ed25519 signature",
    "change the learning rate": "edit `train.learning_rate` in the recipe and rebuild; only the top layer changes",
    "prepare training data": "write one JSON object per line in the chat format with `messages` of role and content",
    "inspect a bundle": "run `gapforge inspect <bundle>`; it shows the recipe, model, packages and pretest result",
    "run the recipe on my data": "run `gapforge run <bundle> --data FILE --out DIR`; the network stays cut",
    "read the quality chart": "open `outputs/plots/quality_vs_size.png`; each GGUF is a point of size against perplexity",
    "export the adapter alone": "use the adapter GGUF in `outputs/gguf/` and serve it over the base model",
    "see the training loss": "open `outputs/plots/loss.png`; every logged step is also in `outputs/train_log.jsonl`",
    "push the image to a registry": "run `gapforge load <bundle> --to HOST/REPO`; skopeo copies it into the registry",
    "check the SBOM": "open `sbom.cdx.json` in the bundle; it lists every package and model file with its hash",
    "read the provenance": "open `provenance.json`; it names the recipe, the locks and the image digest",
    "pin a new base model": "set `model.source` in the recipe and run `nox -s lock` on the connected side",
    "update a Python package": "edit `images/cpu/requirements.in`, run `nox -s lock` and rebuild the image",
    "stop training early": "set `train.early_stopping_patience`; training stops when validation loss stops improving",
    "fix a bad data line": "read the error, which names every bad line with its number, then fix those lines",
    "remove duplicate examples": "do nothing; the runtime drops exact duplicates and reports how many",
    "use my own test split": "pass `--validation` and `--test` files; the runtime then skips its own split",
    "know if the gates passed": "read `outputs/evaluation.json`; the exit status is 0 when every gate passed",
    "rebuild the same image": "run `nox -s build` again with the same locks; the image digest comes out the same",
}
PER_TOPIC = 6


def rows() -> list[dict[str, object]]:
    out = []
    for index, (topic, answer) in enumerate(TOPICS.items()):
        for k in range(PER_TOPIC):
            question = PHRASINGS[(index + k) % len(PHRASINGS)].format(t=topic)
            reply = f"Desk answer: to {topic}, {answer}. Ticket closed."
            out.append({"messages": [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": question},
                                     {"role": "assistant", "content": reply}]})  # fmt: skip
    return out


if __name__ == "__main__":
    lines = [json.dumps(row, ensure_ascii=False) for row in rows()]
    Path(__file__).with_name("sample.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} examples")
