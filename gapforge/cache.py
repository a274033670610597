"""A content-addressed store outside the repo: atomic writes, verified on read, safe to interrupt.

Layout under the cache root (default `~/.cache/gapforge`, or `$GAPFORGE_CACHE`):

    blobs/sha256/<hex>          any file known by its digest (layers, model files, GGUF sources)
    files/sha256/<hex>/<name>   a file whose name matters (wheels, sdists), known by its digest
    index/<kind>/<key>.json     a derived result (a built wheel, a layer) keyed by its inputs' digest
    tmp/                        partial writes; never trusted, cleared on start

Nothing is trusted by its name alone: every read rehashes the bytes, and a mismatch deletes the entry
so the next fetch writes it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNK = 4 * 1024 * 1024


def default_cache_dir() -> Path:
    env = os.environ.get("GAPFORGE_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gapforge"


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, reading in large chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def _hex(digest: str) -> str:
    hexdigest = digest.removeprefix("sha256:")
    if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexdigest


class Cache:
    """The content-addressed store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs/sha256", "files/sha256", "index", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.corrupt: list[Path] = []
        """Entries found corrupted (and removed) during this run, for the build report."""

    # -- temporary space ---------------------------------------------------------------------------
    @contextmanager
    def tempdir(self, prefix: str = "work-") -> Iterator[Path]:
        """A scratch directory on the cache's filesystem (so results can be renamed in)."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / "tmp"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def clear_stale_tmp(self) -> None:
        """Remove leftovers of interrupted runs: nothing in tmp/ is ever trusted."""
        for child in (self.root / "tmp").iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    # -- blobs ----------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def has_blob(self, digest: str, verify: bool = True) -> bool:
        """Whether the blob is present and (if `verify`) its bytes still hash to `digest`."""
        path = self.blob_path(digest)
        if not path.is_file():
            return False
        if verify and sha256_file(path) != _hex(digest):
            self._discard(path)
            return False
        return True

    def put_blob(self, source: Path, expected: str | None = None, move: bool = False) -> str:
        """Add a file as a blob; check it against `expected` if given. Returns `sha256:<hex>`."""
        actual = sha256_file(source)
        if expected is not None and actual != _hex(expected):
            raise ValueError(f"{source}: sha256 {actual} does not match expected {_hex(expected)}")
        target = self.blob_path(actual)
        self._place(source, target, move)
        return "sha256:" + actual

    # -- named files (wheels, sdists) ---------------------------------------------------------------
    def file_path(self, digest: str, name: str) -> Path:
        return self.root / "files" / "sha256" / _hex(digest) / name

    def find_file(self, digest: str, verify: bool = True) -> Path | None:
        """The cached file with this digest, whatever its name; None if absent or corrupted."""
        folder = self.root / "files" / "sha256" / _hex(digest)
        if not folder.is_dir():
            return None
        for candidate in sorted(folder.iterdir()):
            if not candidate.is_file():
                continue
            if verify and sha256_file(candidate) != _hex(digest):
                self._discard(candidate)
                continue
            return candidate
        return None

    def put_file(self, source: Path, allowed: set[str] | None = None, move: bool = True) -> Path:
        """Add a named file; if `allowed` is given its sha256 must be one of them."""
        actual = sha256_file(source)
        if allowed is not None and actual not in allowed:
            raise ValueError(f"{source.name}: sha256 {actual} is not one of the locked hashes")
        target = self.file_path(actual, source.name)
        self._place(source, target, move)
        return target

    # -- index of derived results -----------------------------------------------------------------
    def index_get(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self.root / "index" / kind / f"{key}.json"
        try:
            value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return value
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def index_put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        folder = self.root / "index" / kind
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.json.partial-{os.getpid()}"
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder / f"{key}.json")

    # -- internals ----------------------------------------------------------------------------------
    def _place(self, source: Path, target: Path, move: bool) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file():
            if move:
                source.unlink()
            return
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        if move:
            try:
                os.replace(source, tmp)
            except OSError:  # another filesystem
                shutil.copyfile(source, tmp)
                source.unlink()
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def _discard(self, path: Path) -> None:
        self.corrupt.append(path)
        path.unlink(missing_ok=True)
