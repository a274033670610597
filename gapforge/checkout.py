"""The builder's own checkout: which commit built a bundle, and whether it had local changes.

Both the bundle's provenance and the build report record it, so it lives below the stages that
write them (neither stage imports the other for it).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
"""The folder above the gapforge package: the git checkout, when the builder runs from one."""


def git_state() -> dict[str, str]:
    """The builder checkout's commit and whether it had local changes (empty outside git)."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True,
                                text=True, check=False)  # fmt: skip
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    return {
        "commit": commit,
        "dirty": "true" if git("status", "--porcelain", "--untracked-files=no") else "false",
    }
