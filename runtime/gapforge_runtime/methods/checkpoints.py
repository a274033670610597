"""Trainer's checkpoints and resuming: which checkpoint is complete, and where training resumes.

A checkpoint is complete once its `.complete` marker is written (after every rank saved); a
folder without it was cut short by a kill and is neither used nor kept by --resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import write_text_atomic

COMPLETE_MARKER = ".complete"
"""Written into a checkpoint folder once Trainer has saved all of it. A process killed while saving
leaves a folder without it (model saved, optimizer or trainer_state.json missing or cut short)."""


def world() -> tuple[int, int]:
    """(local rank, world size) of this process: (0, 1) unless started by torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _checkpoint_folders(folder: Path) -> list[Path]:
    """checkpoint-N folders in `folder`, oldest step first."""
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def checkpoints_found(folder: Path) -> tuple[Path | None, list[Path]]:
    """The newest complete checkpoint in `folder` (one whose save finished), and the folders whose
    save was cut short: resuming must neither use nor keep those."""
    complete: list[Path] = []
    unfinished: list[Path] = []
    for checkpoint in _checkpoint_folders(folder):
        (complete if (checkpoint / COMPLETE_MARKER).is_file() else unfinished).append(checkpoint)
    return (complete[-1] if complete else None), unfinished


def mark_checkpoint_complete(checkpoints: Path, step: int) -> None:
    """Called on every process after Trainer saved checkpoint-`step`; rank 0 writes the marker."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank's shards are on disk before the checkpoint is called complete
    if world()[0] == 0:
        write_text_atomic(checkpoints / f"checkpoint-{step}" / COMPLETE_MARKER, f"{step}\n")


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a checkpoint was saved at (its trainer_state.json)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])


def resume_point(checkpoints: Path, resume: bool) -> tuple[Path | None, int | None]:
    """The checkpoint training continues from (and its step), or none; refuses to start over a
    killed training's checkpoints without --resume or --force, and drops half-saved ones."""
    previous, unfinished = checkpoints_found(checkpoints)
    if (previous is not None or unfinished) and not resume:
        last = f"last complete: {previous.name}" if previous else "none complete"
        raise RuntimeFailure(
            f"{checkpoints}: checkpoints of an interrupted training exist ({last}). "
            "Pass --resume to continue from the last complete one, or --force to start training over."
        )
    if resume and unfinished and world()[0] == 0:
        # killed while saving: its files are a mix of two steps or cut short
        for partial in unfinished:
            print(
                f"[train] --resume: removing {partial.name}, whose save did not finish", flush=True
            )
            shutil.rmtree(partial)
    resumed_from = checkpoint_step(previous) if previous is not None else None
    if resume and previous is None:
        print("[train] --resume: no checkpoint found, starting from step 0", flush=True)
    elif resumed_from is not None:
        print(f"[train] resuming from {previous} (step {resumed_from})", flush=True)
    return previous, resumed_from
