"""Writing so that nothing half-written is ever seen under the final name: a file through a temporary
sibling and a rename; a folder by renaming a complete work folder into place."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """`data` to a temporary sibling of `path`, then renamed over it (removed if the write fails)."""
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def swap_in(work: Path, final: Path) -> None:
    """Replace the folder `final` by the complete folder `work` with renames only; the old one is
    removed afterwards."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(work, final)
    shutil.rmtree(old, ignore_errors=True)
