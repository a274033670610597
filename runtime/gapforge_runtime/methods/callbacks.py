"""Trainer's callbacks of every training: the JSON-lines log, complete-checkpoint markers, and the
progress line with the observers (MLflow, Prometheus) on rank 0.

Imported only once a training starts: it imports transformers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from gapforge_runtime.methods.checkpoints import mark_checkpoint_complete
from gapforge_runtime.monitoring import ProgressLine, TrainingObserver, TrainingUpdate


class UpdateMaker:
    """Turns Trainer's log entries into TrainingUpdates: pace, tokens/s and GPU memory added."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.started = time.monotonic()
        self.first_step = 0
        self.last: tuple[float, int] | None = None
        """(monotonic time, tokens seen) at the previous training entry."""

    def begin(self, step: int, tokens: int) -> None:
        """Training (re)starts at `step` with `tokens` already seen (a resumed run)."""
        self.started = time.monotonic()
        self.first_step = step
        self.last = (self.started, tokens)

    def update(self, step: int, total: int, tokens: int, logs: dict[str, Any]) -> TrainingUpdate:
        """The update of one log entry (numbers only: Trainer's entries hold a few strings)."""
        now = time.monotonic()
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        done = step - self.first_step
        pace = (now - self.started) / done if done > 0 else None
        rate = None
        if "loss" in numbers and self.last is not None and now > self.last[0]:
            rate = (tokens - self.last[1]) / (now - self.last[0])
            self.last = (now, tokens)
        allocated = reserved = None
        if self.device == "cuda":
            import torch

            allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        return TrainingUpdate(step=step, total_steps=total, logs=numbers, seconds_per_step=pace,
                              tokens_per_second=rate, gpu_memory_allocated=allocated,
                              gpu_memory_reserved=reserved)  # fmt: skip


class LogToFile(TrainerCallback):  # type: ignore[misc]
    """Append every log entry to the training log as one JSON line (one writer per node)."""

    def __init__(self, log_file: Path, nnodes: int) -> None:
        self.log_file = log_file
        self.nnodes = nnodes

    def on_log(self, _args: Any, state: Any, _control: Any, logs: Any = None, **_: Any) -> None:
        if not (state.is_local_process_zero if self.nnodes > 1 else state.is_world_process_zero):
            return
        entry = {"step": state.global_step, "time": round(time.time(), 3), **(logs or {})}
        with self.log_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


class MarkComplete(TrainerCallback):  # type: ignore[misc]
    """Mark each checkpoint complete once saved, so --resume never picks a half-written one."""

    def __init__(self, checkpoints: Path) -> None:
        self.checkpoints = checkpoints

    def on_save(self, _args: Any, state: Any, _control: Any, **_: Any) -> None:
        mark_checkpoint_complete(self.checkpoints, state.global_step)


class Observe(TrainerCallback):  # type: ignore[misc]
    """The progress line and the observers, on rank 0, at every log entry."""

    def __init__(self, device: str, observers: Sequence[TrainingObserver]) -> None:
        self.progress = ProgressLine()
        self.maker = UpdateMaker(device)
        self.observers = observers

    def on_train_begin(self, _args: Any, state: Any, _control: Any, **_: Any) -> None:
        self.maker.begin(state.global_step, int(getattr(state, "num_input_tokens_seen", 0) or 0))

    def on_log(self, _args: Any, state: Any, _control: Any, logs: Any = None, **_: Any) -> None:
        logs = logs or {}
        if not state.is_world_process_zero or not ({"loss", "eval_loss"} & set(logs)):
            return  # the end-of-training summary (train_runtime...) goes to the log file only
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        update = self.maker.update(state.global_step, state.max_steps, tokens, logs)
        self.progress(update)
        for observer in self.observers:
            try:
                observer(update)
            except Exception as exc:  # monitoring never stops a training
                print(f"[train] {type(observer).__name__} failed at step {update.step}: {exc}", flush=True)  # fmt: skip

    def on_train_end(self, _args: Any, _state: Any, _control: Any, **_: Any) -> None:
        self.progress.finish()


def training_callbacks(
    log_file: Path,
    checkpoints: Path,
    device: str,
    observers: Sequence[TrainingObserver],
    nnodes: int,
    patience: int,
) -> list[Any]:
    """Every training's callbacks, with early stopping when the recipe sets a patience."""
    from transformers import EarlyStoppingCallback

    callbacks: list[Any] = [
        LogToFile(log_file, nnodes),
        MarkComplete(checkpoints),
        Observe(device, observers),
    ]
    if patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return callbacks
