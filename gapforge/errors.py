"""One base error for everything the user can fix; each message names the fix."""

from __future__ import annotations

from collections.abc import Sequence


class GapforgeError(Exception):
    """An error the user can act on: the CLI prints it as one paragraph and exits with status 2."""

    exit_status = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RecipeError(GapforgeError):
    """A recipe has one or more problems; all of them are listed at once."""

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{path}: {count} problem{'s' if count != 1 else ''} in this recipe:"]
        lines += [f"  {path}: {problem}" for problem in self.problems]
        lines.append("Fix each line above in the recipe and run the command again.")
        super().__init__("\n".join(lines))


class LockError(GapforgeError):
    """A lockfile is missing, stale or unreadable."""


class FetchError(GapforgeError):
    """An input could not be fetched, or its bytes do not match the lock."""


class ModelSourceError(GapforgeError):
    """A model source is unusable (pickle weights, missing files, wrong revision)."""


class BuildError(GapforgeError):
    """Assembling, loading or smoke-running the image failed."""


class EnvironmentProblem(GapforgeError):
    """A tool the build needs (docker, mmdebstrap, unshare) is missing or not answering."""


class BundleError(GapforgeError):
    """A bundle, a key or an operator command's input is unusable (not a failed check: see verify)."""
