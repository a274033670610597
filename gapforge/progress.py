"""Progress bars and status lines for long steps (rich), quiet when output is not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)


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
        yield lambda n: bar.advance(task, n)
