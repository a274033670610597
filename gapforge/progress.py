"""Progress bars and status lines for long steps (rich), quiet when output is not a terminal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)

HEARTBEAT_SECONDS = 8.0
"""Where output is not a terminal (a log, CI), a long step prints a line this often instead of a
bar, so a log never sits silent for more than a few seconds."""


def step(message: str) -> None:
    """One line saying which step starts now."""
    console.print(f"[bold cyan]==>[/] {message}")


def note(message: str) -> None:
    console.print(f"    {message}")


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar over bytes (hashing, writing layers, loading); yields `advance(n_bytes)`."""
    with byte_progress_group() as add:
        yield add(description, total)


@contextmanager
def byte_progress_group() -> Iterator[Callable[[str, int | None], Callable[[int], None]]]:
    """One display for several byte bars filled at once (layers written in parallel): yields
    `add(description, total)`, which adds a bar and returns its `advance(n_bytes)`; any thread may
    advance any bar."""
    columns = (
        TextColumn("    {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as bar:

        def add(description: str, total: int | None) -> Callable[[int], None]:
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        with _heartbeat(lambda: _bar_status(bar, "bytes")):
            yield add


@contextmanager
def count_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar over items (wheels installed, files checked); yields `advance(n_items)`."""
    columns = (
        TextColumn("    {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(description, total=total)
        with _heartbeat(lambda: _bar_status(bar, "")):
            yield lambda n: bar.advance(task, n)


@contextmanager
def waiting(description: str, estimate: str = "") -> Iterator[None]:
    """A step with nothing to count (a compiler, a venv install, mmdebstrap): a spinner with the
    elapsed time on a terminal, a line every HEARTBEAT_SECONDS elsewhere, and its time at the end."""
    start = time.monotonic()
    suffix = f" ({estimate})" if estimate else ""
    if not console.is_terminal:  # a log gets the start at once, not only after the first beat
        note(f"{description}{suffix} …")
    columns = (SpinnerColumn(), TextColumn(f"{description}{suffix}"), TimeElapsedColumn())
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        bar.add_task(description, total=None)
        with _heartbeat(lambda: f"{description}: {time.monotonic() - start:.0f} s so far{suffix}"):
            yield
    note(f"{description}: done in {time.monotonic() - start:.1f} s")


def _bar_status(bar: Progress, unit: str) -> str:
    """One line of every bar of a display: `description: done/total unit, elapsed`."""
    parts = []
    for task in bar.tasks:
        total = "?" if task.total is None else f"{task.total:,.0f}"
        parts.append(
            f"{task.description}: {task.completed:,.0f}/{total}{' ' + unit if unit else ''}"
        )
    elapsed = max((task.elapsed or 0.0 for task in bar.tasks), default=0.0)
    return f"{'; '.join(parts)} ({elapsed:.0f} s)"


@contextmanager
def _heartbeat(status: Callable[[], str]) -> Iterator[None]:
    """Print `status()` every HEARTBEAT_SECONDS while the block runs, where no bar is shown."""
    if console.is_terminal:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            note(status())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
