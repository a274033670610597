"""The serving image's sealed pretest: started with the network cut, read-only and non-root, a GGUF
mounted read-only; `/health` must answer, a streamed chat completion must return text (the same
greedy text twice: the first request after the start is the measured one), and a
connection to an outside address must fail. The client runs inside the container (`docker exec`),
since with `--network none` nothing outside can reach it. Time to first token and tokens/s go into
the evidence, bound to the image ID. Any step that cannot show success fails the pretest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gapforge.engine import SealedRun, engine_version, load, start_sealed
from gapforge.errors import BuildError
from gapforge.hashing import sha256_file
from gapforge.progress import note, step, waiting
from gapforge.serving.image import ServingImage, model_path

EVIDENCE = "serve-evidence.json"
OUTSIDE = ("192.0.2.1", 80)
"""TEST-NET-1 (RFC 5737): an outside address; with the network cut, connecting must fail."""
PROMPT = "Say hello in one short sentence."

# Runs in the image's own Python (stdlib only): `python -c CLIENT MODE PORT [ARGS]`; ARGS: chat
# MODEL PROMPT MAX_TOKENS, outside HOST PORT.
CLIENT = r"""
import json, socket, sys, time, urllib.request
mode, port = sys.argv[1], int(sys.argv[2])
base = "http://127.0.0.1:%d" % port
if mode == "health":
    with urllib.request.urlopen(base + "/health", timeout=5) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
elif mode == "outside":
    try:
        socket.create_connection((sys.argv[3], int(sys.argv[4])), timeout=3).close()
        print(json.dumps({"reached": True, "error": ""}))
    except OSError as e:
        print(json.dumps({"reached": False, "error": str(e)}))
else:
    body = {"model": sys.argv[3], "messages": [{"role": "user", "content": sys.argv[4]}],
            "max_tokens": int(sys.argv[5]), "temperature": 0, "stream": True}
    request = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start, first, pieces = time.monotonic(), None, []
    with urllib.request.urlopen(request, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
            if delta:
                first = first or time.monotonic()
                pieces.append(delta)
    end = time.monotonic()
    rate = (len(pieces) - 1) / (end - first) if first and len(pieces) > 1 and end > first else None
    print(json.dumps({"text": "".join(pieces), "tokens": len(pieces), "seconds": end - start,
                      "ttft_s": first - start if first else None, "tokens_per_s": rate}))
"""


def _client(container: Any, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    """Run the client in the container's network namespace: (exit status, its JSON, its output)."""
    result = container.exec_run(["python", "-c", CLIENT, *args], user="")
    output = result.output.decode(errors="replace") if result.output else ""
    try:
        parsed = json.loads(output.strip().splitlines()[-1]) if result.exit_code == 0 else None
    except (ValueError, IndexError):
        parsed = None
    return result.exit_code, parsed, output


def _wait_healthy(container: Any, port: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with waiting("the server loads the model and answers /health"):
        while time.monotonic() < deadline:
            container.reload()
            if container.status != "running":
                logs = container.logs().decode(errors="replace")[-3000:]
                raise BuildError(
                    f"the serving image stopped before /health answered "
                    f"(status {container.status}):\n{logs}"
                )
            _, health, _ = _client(container, "health", str(port))
            if health is not None and health.get("status") == 200:
                return health
            time.sleep(0.5)
    logs = container.logs().decode(errors="replace")[-3000:]
    raise BuildError(f"/health did not answer within {timeout:.0f} s:\n{logs}")


def _write_evidence(folder: Path, evidence: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{EVIDENCE}.partial"
    tmp.write_text(json.dumps(evidence, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / EVIDENCE)
    return folder / EVIDENCE


def pretest_serving(
    client: Any, image: ServingImage, gguf: Path, folder: Path, max_tokens: int = 32,
    timeout: float = 180.0,
) -> dict[str, Any]:  # fmt: skip
    """Load the image (by its ID), serve `gguf` as the first served artefact, and record what it
    did; raises BuildError (after writing the evidence, when it got that far) unless every check
    passed. Returns the evidence."""
    config_digest = image.manifest.config_digest
    load(client, image.tar_path, config_digest, image.ref)
    artefact, port = image.serve.artefacts[0], image.serve.port
    run = SealedRun(config_digest, [], read_only_mounts={str(gguf.resolve()): model_path(artefact)})
    step(f"serving pretest: {image.ref} (--network none --read-only, user {run.user}), {gguf.name}")
    started = time.monotonic()
    container = start_sealed(client, run)
    try:
        health = _wait_healthy(container, port, timeout)
        startup = time.monotonic() - started
        chat = ("chat", str(port), artefact, PROMPT, str(max_tokens))
        # Measured: the first request after the start (prompt processed in full). The same again
        # must give the same greedy answer (llama.cpp reuses the cached prompt, so its TTFT is not).
        status, completion, output = _client(container, *chat)
        _, repeat, _ = _client(container, *chat)
        _, outside, _ = _client(container, "outside", str(port), *map(str, OUTSIDE))
    finally:
        container.remove(force=True)
    evidence = {
        "image": {"ref": image.ref, "config_digest": config_digest,
                  "manifest_digest": image.manifest.manifest_digest},
        "engine": "llama.cpp", "engine_version": engine_version(client),
        "sandbox": run.describe(), "artefact": artefact,
        "model": {"file": gguf.name, "sha256": sha256_file(gguf)},
        "health": health, "startup_s": round(startup, 3), "prompt": PROMPT,
        "completion": completion, "repeat": repeat, "outside": {"address": f"{OUTSIDE[0]}:{OUTSIDE[1]}", **(outside or {})},
    }  # fmt: skip
    problems = []
    if repeat is None or completion is None or repeat.get("text") != completion.get("text"):
        problems.append(f"two greedy requests gave different answers: {completion} and {repeat}")
    if completion is None or not completion.get("text"):
        problems.append(f"the chat completion returned no text (status {status}): {output[-1500:]}")
    if outside is None or outside.get("reached") is not False:
        problems.append(
            f"the container's network was not shown cut (reaching {OUTSIDE[0]}: {outside})"
        )
    evidence["passed"] = not problems
    path = _write_evidence(folder, evidence)
    if problems:
        raise BuildError(f"serving pretest FAILED ({path}): " + "; ".join(problems))
    assert completion is not None and outside is not None and repeat is not None
    note(f"serving pretest PASS: ready in {startup:.1f} s; first token {completion['ttft_s']:.3f} s, "
         f"{completion['tokens_per_s'] or 0:.1f} tokens/s (repeated: {repeat['ttft_s']:.3f} s, prompt "
         f"cached); outside unreachable ({outside['error']})")  # fmt: skip
    note(f"answer: {completion['text'][:120]!r}; evidence {path}")
    return evidence
