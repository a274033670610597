"""What the TUF client reads inside the gap, and what it has verified.

`FolderFetcher` serves the Updater's metadata requests from a folder (media, a bundle's
release/metadata/) and records the sha256 of every file it handed over; `trusted_files` names the
metadata the client verified before and keeps. Together they say which files of a metadata folder
the client verified, byte for byte (gapforge.operator.coverage refuses the others in a bundle).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from tuf.api import exceptions
from tuf.api.metadata import Metadata
from tuf.ngclient.fetcher import FetcherInterface

BASE_URL = "gapforge-release:/"


class FolderFetcher(FetcherInterface):
    """Serves the Updater's metadata requests from a folder; a missing file is a 404, which is how
    the Updater learns that no newer root exists. A name is one plain component, and a file is read
    only if it is a regular file, never through a symbolic link (a link is refused, not followed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.served: dict[str, str] = {}
        """name → sha256 of the bytes handed to the Updater (which then verified them, or failed)."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        from gapforge.names import UnsafeName, open_regular

        name = unquote(url.removeprefix(BASE_URL))
        path = self.folder / name
        if "/" in name or name.startswith(".") or not name or "\x00" in name:
            raise exceptions.DownloadHTTPError(f"{path}: no such file", 404)
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            raise exceptions.DownloadHTTPError(f"{path}: no such file", 404) from None
        except (OSError, UnsafeName):  # a link (ELOOP), a device, a folder: refused
            raise exceptions.DownloadHTTPError(
                f"{path}: not a regular file, refused", 403
            ) from None
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
        self.served[name] = hashlib.sha256(data).hexdigest()
        return iter([data])


def _version_of(path: Path) -> int | None:
    try:
        return int(Metadata.from_file(str(path)).signed.version)
    except Exception:
        return None


def trusted_files(trust: Path) -> dict[str, str]:
    """Metadata the client verified before and keeps (trust init, rotations, earlier checks), by
    the name a metadata folder gives it (`N.root.json`, `root.json`, `timestamp.json`,
    `N.ROLE.json`) → sha256: a bundle's copy of one is verified when its bytes are the same
    (python-tuf persists the very bytes it verified, and verifies them again when it loads them)."""
    folder = trust / "metadata"
    found = {}
    for path in sorted((folder / "root_history").glob("*.root.json")):
        found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(folder.glob("*.json")):
        data = path.read_bytes()
        role = path.name.removesuffix(".json")
        version = _version_of(path) if role not in ("root", "timestamp") else None
        name = path.name if version is None else f"{version}.{role}.json"
        found[name] = hashlib.sha256(data).hexdigest()
    return found
