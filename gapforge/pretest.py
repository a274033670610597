"""The sealed pretest: the recipe end to end inside its own image, network cut, on its sample data.

`docker run --network none --read-only`, tmpfs for /tmp and HOME, one mounted output folder, as the
image's non-root user, no capabilities. What it ran and what came out (steps, losses, quantization
deltas, gates, durations, the runtime's manifest) is written as evidence naming the image digest;
the bundle carries it. A pretest that fails (a gate, or an error) fails the build: no bundle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rich.markup import escape

from gapforge.bundle import PRETEST_SCHEMA
from gapforge.engine import SealedRun, engine_version, run_sealed
from gapforge.errors import BuildError
from gapforge.fetch.rootfs import IMAGE_USER, USER_ID
from gapforge.progress import note, step

OUTPUTS = "/outputs"
EVIDENCE = "evidence.json"
LOG = "log.txt"
REPORT = "report.md"
_BAR = re.compile(r"\d+%\|")
_SHOWN = re.compile(
    r"^(\[(data|train|merge|quantize|eval)\]|\{'(loss|eval_loss|train_runtime)'|verdict|error)"
)
"""Lines worth a console line: step progress, losses, the verdict, errors (the log keeps all)."""


@dataclass(frozen=True)
class PretestResult:
    passed: bool
    exit_status: int
    seconds: float
    folder: Path
    """evidence.json, log.txt, report.md and the runtime's outputs/."""
    evidence: dict[str, Any]


class ProgressLines:
    """Splits a container's byte stream into lines for the console (progress bars dropped) while
    keeping every byte in the log file."""

    def __init__(self, log: BinaryIO, show: bool = True) -> None:
        self.log = log
        self.show = show
        self.pending = b""
        self.tail: list[str] = []

    def __call__(self, chunk: bytes) -> None:
        self.log.write(chunk)
        self.log.flush()
        self.pending += chunk
        *lines, self.pending = re.split(rb"[\r\n]", self.pending)
        for raw in lines:
            self._line(raw.decode(errors="replace").rstrip())

    def _line(self, line: str) -> None:
        if not line.strip() or _BAR.search(line):
            return
        self.tail = [*self.tail[-39:], line]
        if self.show and _SHOWN.match(line):
            note(escape(line))

    def close(self) -> None:
        if self.pending:
            self._line(self.pending.decode(errors="replace").rstrip())
            self.pending = b""


def prepare_outputs(folder: Path) -> Path:
    """An empty output folder the image's user (IMAGE_USER) can write."""
    outputs = folder / "outputs"
    shutil.rmtree(folder, ignore_errors=True)
    outputs.mkdir(parents=True)
    try:
        os.chown(outputs, USER_ID, USER_ID)
    except PermissionError:  # not root: let the image's user in anyway
        outputs.chmod(0o777)
    return outputs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _losses(outputs: Path) -> dict[str, list[list[float]]]:
    history = _read_json(outputs / "train_history.json") or []
    train = [[e["step"], e["loss"]] for e in history if "loss" in e and "step" in e]
    evals = [[e["step"], e["eval_loss"]] for e in history if "eval_loss" in e and "step" in e]
    return {"train": train, "eval": evals}


def collect_evidence(
    outputs: Path, image: dict[str, str], sandbox: dict[str, Any], exit_status: int,
    started: float, seconds: float, engine: str,
) -> dict[str, Any]:  # fmt: skip
    """The pretest evidence from the runtime's output folder: what ran, what came out, verdict."""
    manifest = _read_json(outputs / "manifest.json") or {}
    evaluation = manifest.get("evaluation") or {}
    passed = exit_status == 0 and manifest.get("passed") is True
    verdict = "PASS" if passed else ("FAIL" if exit_status == 1 else "ERROR")
    return {
        "schema": PRETEST_SCHEMA,
        "image": image,
        "passed": passed,
        "verdict": verdict,
        "exit_status": exit_status,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(seconds, 2),
        "sandbox": {**sandbox, "engine": engine},
        "command": ["run"],
        "data": manifest.get("inputs", {}).get("data"),
        "steps": manifest.get("timings", {}),
        "losses": _losses(outputs),
        "training": manifest.get("training", {}),
        "models": evaluation.get("models", {}),
        "deltas_vs_merged_pct": evaluation.get("delta_vs_merged_pct", {}),
        "gates": evaluation.get("gates", []),
        "outputs": {
            k: {"sha256": v["sha256"], "size": v["size"]}
            for k, v in sorted(manifest.get("outputs", {}).items())
        },
        "runtime_manifest": manifest,
    }


def run_pretest(
    client: Any, ref: str, manifest_digest: str, config_digest: str, folder: Path,
    timeout: float | None = None,
) -> PretestResult:  # fmt: skip
    """Run the recipe in its sealed image; write evidence.json, log.txt and report.md to `folder`."""
    step(f"sealed pretest: {ref} run (--network none --read-only, user {IMAGE_USER}, sample data)")
    outputs = prepare_outputs(folder)
    # By image ID, never by tag: the tag could have moved since the load compared the ID.
    run = SealedRun(
        image=config_digest, command=["run"], mounts={str(outputs): OUTPUTS}, user=IMAGE_USER
    )
    started = time.time()
    clock = time.monotonic()
    with open(folder / LOG, "wb") as log:
        lines = ProgressLines(log)
        status = run_sealed(client, run, lines, timeout)
        lines.close()
    seconds = time.monotonic() - clock
    image = {"ref": ref, "manifest_digest": manifest_digest, "config_digest": config_digest}
    evidence = collect_evidence(
        outputs, image, run.describe(), status, started, seconds, engine_version(client)
    )
    if (outputs / "report.md").is_file():
        shutil.copyfile(outputs / "report.md", folder / REPORT)
    tmp = folder / f".{EVIDENCE}.partial"
    tmp.write_text(json.dumps(evidence, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / EVIDENCE)
    result = PretestResult(evidence["passed"], status, seconds, folder, evidence)
    if not result.passed:
        raise BuildError(failure_message(result, lines.tail))
    gates = ", ".join(g["name"] for g in evidence["gates"]) or "none"
    note(
        escape(
            f"pretest PASS in {seconds:.1f} s (gates passed: {gates}); evidence {folder / EVIDENCE}"
        )
    )
    for line in step_table(evidence):
        note(escape(line))
    return result


def step_table(evidence: dict[str, Any]) -> list[str]:
    """Where the pretest's time went: each runtime step's seconds and share, slowest first, and
    what the sandbox itself took (start, imports, the checks between steps)."""
    steps = {name: float(value) for name, value in (evidence.get("steps") or {}).items()}
    total = float(evidence.get("seconds") or 0.0)
    if not steps or total <= 0:
        return []
    rows = sorted(steps.items(), key=lambda item: -item[1])
    rows.append(("(start, imports, between steps)", max(0.0, total - sum(steps.values()))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'step':<{width}}  {'seconds':>8}  {'share':>6}"]
    lines += [f"{name:<{width}}  {value:8.1f}  {100 * value / total:5.1f}%" for name, value in rows]
    return lines


def failure_message(result: PretestResult, tail: list[str]) -> str:
    evidence = result.evidence
    failed = [g for g in evidence["gates"] if not g.get("passed")]
    if failed:
        what = "; ".join(f"{g['name']}: {g.get('detail', '')}" for g in failed)
        reason = f"a gate failed ({what})"
        fix = ("fix the recipe's data or training settings, or loosen the gate in its evaluate.gates "
               "if the new value is acceptable")  # fmt: skip
    elif result.exit_status == 137:
        reason, fix = (
            "it was killed (timeout or out of memory)",
            "give it more time (--pretest-timeout) or memory",
        )
    else:
        reason = f"the runtime exited with status {result.exit_status}"
        fix = "read the log's last lines above, fix the recipe or its sample data"
    last = "\n".join(f"  {line}" for line in tail[-15:])
    return (
        f"the sealed pretest of {evidence['image']['ref']} failed: {reason}. No bundle was written. "
        f"Evidence: {result.folder / EVIDENCE}, full log: {result.folder / LOG}. Fix: {fix}, then "
        f"build again.\nLast lines of the log:\n{last}"
    )
