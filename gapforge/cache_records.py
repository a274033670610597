"""The cache's own records that it hashed an entry (verified/ under the cache root): what lets a
read skip rehashing a file this cache hashed itself while it is unchanged since (gapforge.cache)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import suppress
from pathlib import Path

from gapforge.hashing import sha256_file


class Records:
    """verified/blobs/<hex> and verified/files/<hex>/<name>: digest, size, mtime, ctime, inode and
    device of the file hashed. `verify_all` rehashes every entry read."""

    def __init__(self, root: Path, verify_all: bool = False) -> None:
        self.root = root
        self.verify_all = verify_all

    def marker(self, path: Path) -> Path | None:
        """Where the record that this cache hashed `path` lives (a folder, for a named-file entry)."""
        relative = path.relative_to(self.root)
        if relative.parts[:2] == ("blobs", "sha256"):
            return self.root / "verified" / "blobs" / relative.parts[-1]
        if relative.parts[:2] == ("files", "sha256"):
            return self.root / "verified" / "files" / Path(*relative.parts[2:])
        return None

    def record(self, path: Path, hexdigest: str) -> None:
        """Record that `path`, as it is now on disk, holds bytes that hash to `hexdigest`: called
        only right after this cache hashed them, or moved in bytes hashed as they were written."""
        marker = self.marker(path)
        if marker is None:
            return
        try:
            stat = path.stat()
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_name(f".{marker.name}.partial-{os.getpid()}")
            tmp.write_text(json.dumps({"sha256": hexdigest, **identity(stat)}), encoding="utf-8")
            os.replace(tmp, marker)
        except OSError:  # a read-only cache: the entry is simply rehashed next time
            return

    def recorded(self, path: Path, hexdigest: str) -> bool:
        """Whether this cache recorded `path` verified and it is the same file, unchanged since."""
        marker = self.marker(path)
        if marker is None:
            return False
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            stat = path.stat()
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(record, dict) and record == {"sha256": hexdigest, **identity(stat)}

    def verified(self, path: Path, hexdigest: str) -> bool:
        """Whether the bytes at `path` hash to `hexdigest`: trusted from this cache's own record
        when the file is unchanged since (unless `verify_all`), rehashed (and recorded) otherwise."""
        if not self.verify_all and self.recorded(path, hexdigest):
            return True
        if sha256_file(path) != hexdigest:
            return False
        self.record(path, hexdigest)
        return True

    def hit(self, path: Path, hexdigest: str, verified: bool) -> None:
        """Mark an entry as used now. Its record follows the new mtime: at once when `verified`
        (`_verified` just trusted or wrote it), else only if it held before the touch."""
        recorded = verified or self.recorded(path, hexdigest)
        touch(path)
        if recorded:
            self.record(path, hexdigest)

    def forget(self, path: Path) -> None:
        """Remove the record that this cache hashed `path` (a folder of them, for a named-file
        entry's folder)."""
        marker = self.marker(path)
        if marker is not None:
            with suppress(OSError):
                remove_path(marker)


def identity(stat: os.stat_result) -> dict[str, int]:
    """What says a file is still the one hashed: any write, truncation or replacement changes it."""
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,  # no utime() can set it back
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }


def remove_path(path: Path) -> None:
    """Remove a file, or a folder and what it holds, if there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def touch(path: Path) -> None:
    """Mark a cache hit (last use) for `prune`; a read-only cache simply keeps its old times."""
    with suppress(OSError):
        os.utime(path)
