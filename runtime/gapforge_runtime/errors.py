"""The runtime's one error type: a message for the operator, never a traceback."""

from __future__ import annotations

EXIT_GATE_FAILED = 1
EXIT_USAGE = 2


class RuntimeFailure(Exception):
    """A problem the operator can fix; the message names the file, the bad value and the fix.

    The CLI prints it as one paragraph (or a list, for data files with many bad lines) and exits
    with status 2.
    """

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def render(self) -> str:
        """The error as the operator sees it."""
        lines = [f"error: {self.message}"]
        lines.extend(f"  {detail}" for detail in self.details)
        return "\n".join(lines)
