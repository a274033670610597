"""What training shows while it runs: one progress line on the terminal, and Prometheus metrics.

Training (train.py) turns each of Trainer's log entries into a `TrainingUpdate` and hands it to its
observers: a `ProgressLine` always (rank 0), and `TrainingMetrics` when the run asks for it, which
keeps prometheus-client gauges, writes them as a node_exporter textfile (`OUT/metrics/gapforge.prom`)
at each logging step and, with `--metrics-port`, serves them over HTTP.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gapforge_runtime.errors import RuntimeFailure

TEXTFILE = Path("metrics") / "gapforge.prom"
"""The textfile, relative to the output folder (node_exporter's --collector.textfile.directory)."""


@dataclass(frozen=True)
class TrainingUpdate:
    """One logging step of training (or one evaluation), as every observer sees it."""

    step: int
    total_steps: int
    logs: dict[str, float]
    """Trainer's log entry: loss, learning_rate, grad_norm (training) or eval_loss (evaluation)."""
    seconds_per_step: float | None = None
    """Mean wall time of a step in this process so far (None before the first step is timed)."""
    tokens_per_second: float | None = None
    """Input tokens (non-padding) a second since the previous logging step."""
    time: float = field(default_factory=time.time)
    """Unix time of the update."""
    gpu_memory_allocated: int | None = None
    gpu_memory_reserved: int | None = None

    @property
    def is_eval(self) -> bool:
        """True for an evaluation's entry (eval_loss), False for a training step's."""
        return "eval_loss" in self.logs

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the pace so far; None until the pace is known."""
        if self.seconds_per_step is None:
            return None
        return max(self.total_steps - self.step, 0) * self.seconds_per_step


TrainingObserver = Callable[[TrainingUpdate], None]


def format_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`; `?` when not known yet."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_progress(update: TrainingUpdate, eval_loss: float | None = None) -> str:
    """The progress line: step of total, loss, tokens/s, time left (and the last eval loss)."""
    width = len(str(update.total_steps))
    parts = [f"[train] step {update.step:>{width}}/{update.total_steps}"]
    if update.is_eval:
        parts.append(f"eval loss {update.logs['eval_loss']:.4f}")
    else:
        loss = update.logs.get("loss")
        parts.append(f"loss {loss:.4f}" if loss is not None else "loss ?")
        if eval_loss is not None:
            parts.append(f"eval {eval_loss:.4f}")
        rate = update.tokens_per_second
        parts.append(f"{rate:,.0f} tok/s" if rate is not None else "? tok/s")
        parts.append(f"eta {format_duration(update.eta_seconds)}")
    return "  ".join(parts)


class ProgressLine:
    """One updating line on a terminal; one plain line per logging step anywhere else (a log file).

    On a terminal the line is rewritten in place (carriage return, clear to end of line); `finish`
    ends it with a newline so what is printed next starts on its own line.
    """

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.eval_loss: float | None = None
        self._last: TrainingUpdate | None = None
        self._open = False

    def __call__(self, update: TrainingUpdate) -> None:
        if update.is_eval:
            self.eval_loss = update.logs["eval_loss"]
            if self.tty:  # the step's line again, with the new eval loss on it
                if self._last is not None:
                    self(self._last)
                return
        else:
            self._last = update
        line = format_progress(update, None if update.is_eval else self.eval_loss)
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the line being rewritten (a terminal only)."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


GAUGES: dict[str, tuple[str, Callable[[TrainingUpdate], float | None]]] = {
    # name → (help, how to read it from an update)
    "gapforge_train_step": ("Optimizer steps done", lambda u: u.step),
    "gapforge_train_total_steps": ("Optimizer steps planned", lambda u: u.total_steps),
    "gapforge_train_loss": ("Training loss at the last logging step", lambda u: u.logs.get("loss")),
    "gapforge_train_eval_loss": ("Validation loss at the last evaluation", lambda u: u.logs.get("eval_loss")),
    "gapforge_train_learning_rate": ("Learning rate", lambda u: u.logs.get("learning_rate")),
    "gapforge_train_grad_norm": ("Gradient norm before clipping", lambda u: u.logs.get("grad_norm")),
    "gapforge_train_tokens_per_second": ("Input tokens a second", lambda u: u.tokens_per_second),
    "gapforge_train_eta_seconds": ("Estimated seconds left", lambda u: u.eta_seconds),
    "gapforge_gpu_memory_allocated_bytes": ("torch.cuda.memory_allocated()", lambda u: u.gpu_memory_allocated),
    "gapforge_gpu_memory_reserved_bytes": ("torch.cuda.memory_reserved()", lambda u: u.gpu_memory_reserved),
    "gapforge_train_last_step_timestamp_seconds": ("Unix time of the last logging step", lambda u: u.time),
}  # fmt: skip
LABELS = ("recipe", "version")


class TrainingMetrics:
    """prometheus-client gauges of training, labelled with the recipe's name and version.

    Every update rewrites `textfile` atomically (prometheus-client writes a temporary file and
    renames it). With `port`, an HTTP server on `host:port` serves `/metrics` until `close`.
    """

    def __init__(
        self,
        recipe: str,
        version: str,
        textfile: Path | None,
        port: int | None = None,
        host: str = "0.0.0.0",
    ) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        # A registry of our own: no process/platform collectors, nothing another import registered.
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = (recipe, version)
        self.textfile = textfile
        self.gauges = {
            name: Gauge(name, text, LABELS, registry=self.registry)
            for name, (text, _) in GAUGES.items()
        }
        self._server: Any = None
        if port is not None:
            from prometheus_client import start_http_server

            try:
                self._server, _ = start_http_server(port, addr=host, registry=self.registry)
            except OSError as exc:
                raise RuntimeFailure(
                    f"--metrics-port {port}: cannot serve metrics on {host}:{port} ({exc.strerror or exc}). "
                    "Choose a free port, or leave --metrics-port out (OUT/metrics/gapforge.prom is written either way)."
                ) from None
            self.port = self._server.server_port
            print(f"[train] metrics on http://{host}:{self.port}/metrics", flush=True)

    def __call__(self, update: TrainingUpdate) -> None:
        for name, (_, read) in GAUGES.items():
            value = read(update)
            if value is not None:
                self.gauges[name].labels(*self.labels).set(float(value))
        if self.textfile is not None:
            self.write_textfile()

    def write_textfile(self) -> None:
        """Write every gauge to the textfile (atomically: node_exporter never reads half a file)."""
        from prometheus_client import write_to_textfile

        assert self.textfile is not None
        self.textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.textfile), self.registry)

    def close(self) -> None:
        """Stop the HTTP server, if one was started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
