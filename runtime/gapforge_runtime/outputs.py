"""The output folder: its layout, which run owns it, and the record each finished step leaves.

A step is skipped when its record exists and lists the same input digests as now (re-running a
finished step is a no-op unless --force). Records live in `steps/<name>.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import write_json_atomic

RUN_FILE = "run.json"
GGUF_SUFFIX = {"gguf:f16": "f16", "gguf:q8_0": "q8_0", "gguf:q4_k_m": "q4_k_m"}


@dataclass(frozen=True)
class Layout:
    """Where everything goes inside the output folder."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def gguf(self) -> Path:
        return self.root / "gguf"

    @property
    def steps(self) -> Path:
        return self.root / "steps"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def quantized(self) -> Path:
        return self.root / "quantized"

    def quantized_dir(self, target: str) -> Path:
        """The folder of a quantized transformers checkpoint (gptq:int4, bnb:nf4, bnb:int8)."""
        return self.quantized / target.replace(":", "-")

    def gguf_file(self, name: str, target: str) -> Path:
        """The GGUF file of a quantization target."""
        return self.gguf / f"{name}-{GGUF_SUFFIX[target]}.gguf"

    def adapter_gguf(self, name: str) -> Path:
        """The adapter alone as GGUF (for llama.cpp's --lora)."""
        return self.gguf / f"{name}-adapter-f16.gguf"


def claim_output(layout: Layout, identity: dict[str, str], force: bool) -> None:
    """Make sure the output folder is this run's (same recipe and data) or empty; record the claim."""
    run_file = layout.root / RUN_FILE
    if run_file.is_file():
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
        different = {k: (recorded.get(k), v) for k, v in identity.items() if recorded.get(k) != v}
        if different and not force:
            what = ", ".join(
                f"{k} {old and old[:12]}… ≠ {new[:12]}…" for k, (old, new) in different.items()
            )
            raise RuntimeFailure(
                f"--out {layout.root}: the folder holds the outputs of another run ({what}). "
                "Choose a new --out folder, or pass --force to replace those outputs."
            )
    elif layout.root.is_dir() and any(layout.root.iterdir()) and not force:
        raise RuntimeFailure(
            f"--out {layout.root}: the folder is not empty and was not written by gapforge-runtime "
            "(no run.json). Choose a new or empty --out folder, or pass --force to write into it."
        )
    write_json_atomic(run_file, identity)


@dataclass
class StepRecord:
    """What a finished step consumed and produced."""

    name: str
    inputs: dict[str, str]
    """Input name → sha256."""
    outputs: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def load_record(layout: Layout, name: str) -> StepRecord | None:
    """The record of a finished step, if any."""
    path = layout.steps / f"{name}.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    return StepRecord(**raw)


def save_record(layout: Layout, record: StepRecord) -> None:
    """Write a step's record (atomically: a killed step leaves no record and runs again)."""
    write_json_atomic(layout.steps / f"{record.name}.json", record.__dict__)


def run_step(
    layout: Layout,
    name: str,
    inputs: dict[str, str],
    force: bool,
    body: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
) -> tuple[StepRecord, bool]:
    """Run `body` unless a record with the same inputs exists; return the record and whether it ran.

    `body` returns (outputs, details) to record.
    """
    previous = load_record(layout, name)
    if previous is not None and previous.inputs == inputs and not force:
        missing = [
            k
            for k, v in previous.outputs.items()
            if isinstance(v, dict) and not Path(v["path"]).exists()
        ]
        if not missing:
            print(f"[{name}] up to date (inputs unchanged); pass --force to redo it", flush=True)
            return previous, False
    started = time.monotonic()
    print(f"[{name}] starting", flush=True)
    outputs, details = body()
    record = StepRecord(
        name=name,
        inputs=inputs,
        outputs=outputs,
        details=details,
        seconds=round(time.monotonic() - started, 3),
    )
    save_record(layout, record)
    print(f"[{name}] done in {record.seconds:.1f}s", flush=True)
    return record, True
