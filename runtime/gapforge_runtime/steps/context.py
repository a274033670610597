"""What every step shares: the run's context, the checks before any step, and small helpers.

Each step is a function of one `RunContext`; it checks its inputs, is skipped when its recorded
inputs are unchanged (outputs.run_step), and writes its outputs atomically.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge_runtime.config import RecipeSettings
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import describe_path, sha256_file
from gapforge_runtime.launch.nodes import Nodes
from gapforge_runtime.outputs import Layout, claim_output
from gapforge_runtime.preflight import check_model_dir


@dataclass
class RunContext:
    """Everything a step needs: the recipe, the inputs, the output folder and the options."""

    recipe: RecipeSettings
    model_dir: Path
    data_file: Path
    out: Layout
    llama_cpp: Path | None = None
    validation_file: Path | None = None
    test_file: Path | None = None
    force: bool = False
    resume: bool = False
    nproc: int = 1
    """Training processes (torchrun); 1 trains in this process."""
    nodes: Nodes = field(default_factory=Nodes)
    """This node's place in a job across nodes (gapforge_runtime.launch.nodes); one node by default."""
    observers: list[Any] = field(default_factory=list)
    """TrainingObservers (MLflow, Prometheus) that see every logging step of training."""
    parent: Any = None
    """continual.Parent: the earlier run this one continues (`--parent`); `model_dir` is then its
    merged model, and `base_dir` the image's base model."""
    base_dir: Path | None = None
    _digests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self, name: str, path: Path, refresh: bool = False) -> dict[str, Any]:
        """sha256/size of an input or output, cached for the life of this process."""
        if refresh or name not in self._digests:
            self._digests[name] = describe_path(path)
        return self._digests[name]

    def digest(self, name: str, path: Path, refresh: bool = False) -> str:
        """Just the sha256 of `describe`."""
        return str(self.describe(name, path, refresh)["sha256"])


def section_digest(*parts: Any) -> str:
    """One digest of JSON-able settings: a step's record compares it to know what changed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_identity(ctx: RunContext) -> dict[str, str]:
    """What makes a run this run: the recipe, the data and the base model."""
    identity = {"recipe_sha256": ctx.recipe.sha256, "data_sha256": sha256_file(ctx.data_file)}
    if ctx.parent is not None:
        identity["parent_manifest_sha256"] = ctx.parent.manifest_sha256
    for label, path in (("validation_sha256", ctx.validation_file), ("test_sha256", ctx.test_file)):
        if path is not None:
            identity[label] = sha256_file(path)
    return identity


def prepare(ctx: RunContext) -> None:
    """Checks shared by every step, then claim the output folder."""
    check_model_dir(ctx.model_dir)
    if not ctx.data_file.is_file():
        raise RuntimeFailure(
            f"--data {ctx.data_file}: no such file. Pass your JSONL data file with --data."
        )
    _check_parent(ctx)
    claim_output(ctx.out, data_identity(ctx), ctx.force)


def _check_parent(ctx: RunContext) -> None:
    """A continual run: the parent was trained on this base, and its data can be replayed."""
    from gapforge_runtime.methods.continual import check_replay, check_same_base

    check_replay(ctx.parent, ctx.recipe.replay_ratio, ctx.recipe.data_format)
    if ctx.parent is not None and ctx.base_dir is not None:
        check_same_base(ctx.parent, ctx.digest("base", ctx.base_dir), ctx.base_dir)


def require(path: Path, what: str, command: str) -> None:
    """A step's input from an earlier step must be there; the message names the step to run."""
    if not path.exists():
        raise RuntimeFailure(
            f"{path}: {what} is missing. Run `gapforge-runtime {command}` first (or `gapforge-runtime run`)."
        )


def free_gpu() -> None:
    """Give a finished model's GPU memory back before the next one loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Record in `seconds[key]` how long the block took."""
    started = time.monotonic()
    yield
    seconds[key] = round(time.monotonic() - started, 3)


@contextmanager
def observed_run(
    ctx: RunContext, tracking: bool = True, metrics_port: int | None = None
) -> Iterator[None]:
    """Wrap a run's steps: an MLflow run (tracking.py) and training metrics (monitoring.py) for
    their whole length; the MLflow run ends FINISHED, FAILED or KILLED with the steps."""
    from gapforge_runtime.monitoring import TEXTFILE, TrainingMetrics
    from gapforge_runtime.tracking import Tracker

    recipe = ctx.recipe
    metrics = TrainingMetrics(recipe.name, recipe.version, ctx.out.root / TEXTFILE, metrics_port)
    # Continue the recorded MLflow run unless every step is redone (--force without --resume).
    tracker = (
        Tracker(ctx.out.root, recipe, continue_run=ctx.resume or not ctx.force)
        if tracking
        else None
    )
    ctx.observers.extend([metrics, *([tracker] if tracker else [])])
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        metrics.close()
        if tracker is not None:
            tracker.finish(status)
        ctx.observers.clear()
