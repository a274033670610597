"""sha256 of files and open binary streams: the one way gapforge hashes what it reads."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

CHUNK = 4 * 1024 * 1024


def sha256_stream(handle: IO[bytes], progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of what is left to read in an open binary stream (a zip member too), read in
    large chunks; `progress` is told the size of each."""
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        if progress is not None:
            progress(len(chunk))
    return digest.hexdigest()


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file (hashlib.file_digest; in chunks when `progress` is to be told)."""
    with open(path, "rb") as handle:
        if progress is None:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        return sha256_stream(handle, progress)
