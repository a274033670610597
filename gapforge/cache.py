"""A content-addressed store outside the repo: atomic writes, verified on read, safe to interrupt.

Layout under the cache root (default `~/.cache/gapforge`, or `$GAPFORGE_CACHE`):

    blobs/sha256/<hex>          any file known by its digest (layers, model files, GGUF sources)
    files/sha256/<hex>/<name>   a file whose name matters (wheels, sdists), known by its digest
    index/<kind>/<key>.json     a derived result (a built wheel, a layer) keyed by its inputs' digest
    verified/blobs/<hex>        the cache's own record that it hashed a blob: digest, size,
    verified/files/<hex>/<name> mtime, ctime, inode and device of the file it hashed
    venvs/<name>/               tool venvs made from cached wheels (rebuilt when missing)
    tmp/                        partial writes; never trusted; a folder whose owner process is
                                gone (its `.owner` lock is free) is removed on the next start
    locks/                      one lock file per shared result being made (a venv, a built wheel)

Nothing is trusted by its name alone. An entry is read without rehashing only when this cache itself
hashed it (or wrote it while hashing it) and recorded so under verified/, and the file still has
the size, mtime, ctime, inode and device it had then; anything else (no record, a record of another file, a
file touched since) is rehashed, and a mismatch deletes the entry so the next fetch writes it again.
`Cache(root, verify_all=True)` (`gapforge build --verify-cache`) rehashes every entry it reads. Every
hit sets the entry's mtime (and its record with it), so `prune` can drop what no build has used for a
while (least recently used first); an index entry whose blob is gone is a miss.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.cache_records import Records, remove_path
from gapforge.errors import GapforgeError
from gapforge.hashing import sha256_file

STALE_UNOWNED_S = 3600.0
"""A tmp/ entry with no owner file is removed once it is this old (a live run always has one)."""


def default_cache_dir() -> Path:
    env = os.environ.get("GAPFORGE_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gapforge"


def _hex(digest: str) -> str:
    hexdigest = digest.removeprefix("sha256:")
    if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexdigest


class Cache:
    """The content-addressed store."""

    def __init__(self, root: Path, verify_all: bool = False) -> None:
        self.root = root
        for sub in ("blobs/sha256", "files/sha256", "index", "tmp", "verified"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.verify_all = verify_all
        self.records = Records(root, verify_all)
        """Rehash every entry read, whatever the cache recorded (`--verify-cache`)."""
        self.corrupt: list[Path] = []
        """Entries found corrupted (and removed) during this run, for the build report."""

    # -- temporary space ---------------------------------------------------------------------------
    @contextmanager
    def tempdir(self, prefix: str = "work-") -> Iterator[Path]:
        """A private scratch folder on the cache's filesystem (so results can be renamed in).

        The folder's `.owner` file stays locked while this process uses it: a cleanup started by
        another build, lock or test run on the same cache leaves it alone.
        """
        tmp = self.root / "tmp"
        while True:
            name = f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(tmp / f"{name}.owner", os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:  # not removed by a cleanup between open and lock
                break
            os.close(fd)
        path = tmp / name
        try:
            path.mkdir(mode=0o700)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            with suppress(FileNotFoundError):
                os.unlink(tmp / f"{name}.owner")
            os.close(fd)

    def clear_stale_tmp(self) -> None:
        """Remove what interrupted runs left in tmp/: only folders whose owner process is gone."""
        tmp = self.root / "tmp"
        owners = {p.name.removesuffix(".owner") for p in tmp.glob("*.owner")}
        for owner in sorted(owners):
            fd = _open_existing(tmp / f"{owner}.owner")
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live process holds it
            try:
                shutil.rmtree(tmp / owner, ignore_errors=True)
                with suppress(FileNotFoundError):
                    os.unlink(tmp / f"{owner}.owner")
            finally:
                os.close(fd)
        for child in tmp.iterdir():
            if child.name.endswith(".owner") or child.name.removesuffix(".owner") in owners:
                continue
            # No owner file: left by a run that predates owner files, or killed before it made one.
            if time.time() - child.lstat().st_mtime > STALE_UNOWNED_S:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """One process at a time makes the shared result `name` (a venv, a wheel built from an
        sdist); the others wait, then find it made."""
        folder = self.root / "locks"
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                from gapforge.progress import note

                note(f"waiting for another process of this cache to finish {name}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- blobs ----------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def has_blob(self, digest: str, verify: bool = True) -> bool:
        """Whether the blob is present and (if `verify`) its bytes still hash to `digest`: rehashed
        unless this cache recorded it verified and it is unchanged since (see the module)."""
        path = self.blob_path(digest)
        if not path.is_file():
            return False
        if verify and not self.records.verified(path, _hex(digest)):
            self._discard(path)
            return False
        self.records.hit(path, _hex(digest), verify)
        return True

    def put_blob(
        self, source: Path, expected: str | None = None, move: bool = False, hashed: bool = False
    ) -> str:
        """Add a file as a blob; check it against `expected` if given. Returns `sha256:<hex>`.

        `hashed=True` says `expected` is the digest of these very bytes, taken while the caller
        wrote them (a layer just written): they are not read again. The file must then be moved in."""
        if hashed:
            if expected is None or not move:
                raise ValueError("put_blob(hashed=True) needs the digest taken and move=True")
            actual = _hex(expected)
        else:
            actual = sha256_file(source)
        if expected is not None and actual != _hex(expected):
            raise ValueError(f"{source}: sha256 {actual} does not match expected {_hex(expected)}")
        target = self.blob_path(actual)
        if self._place(source, target, move):
            self.records.record(target, actual)
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
            if verify and not self.records.verified(candidate, _hex(digest)):
                self._discard(candidate)
                continue
            self.records.hit(candidate, _hex(digest), verify)
            return candidate
        return None

    def put_file(self, source: Path, allowed: set[str] | None = None, move: bool = True) -> Path:
        """Add a named file; if `allowed` is given its sha256 must be one of them."""
        actual = sha256_file(source)
        if allowed is not None and actual not in allowed:
            raise ValueError(f"{source.name}: sha256 {actual} is not one of the locked hashes")
        target = self.file_path(actual, source.name)
        if self._place(source, target, move):
            self.records.record(target, actual)
        return target

    # -- index of derived results -----------------------------------------------------------------
    def index_get(
        self, kind: str, key: str, required: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """A derived result's record, or None (a miss) when absent or malformed: not a JSON
        object, or without one of the `required` string fields."""
        path = self.root / "index" / kind / f"{key}.json"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(value, dict) or any(
            not isinstance(value.get(name), str) for name in required
        ):
            return None
        return value

    def index_put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        folder = self.root / "index" / kind
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.json.partial-{os.getpid()}"
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder / f"{key}.json")

    # -- in use ----------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        """Hold `flock(operation)` on the cache's lock file for the block."""
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)

    def using(self) -> AbstractContextManager[None]:
        """A shared lock for a command that reads and writes the cache (build, lock, runtime-env):
        any number at once, but `prune` refuses to run while one holds it."""
        return self._locked(fcntl.LOCK_SH)

    # -- size and pruning -------------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        """Every prunable entry: blobs, named files and venvs, with size and last use."""
        found: list[CacheEntry] = []
        for path in sorted((self.root / "blobs" / "sha256").iterdir()):
            if path.is_file() and not path.name.startswith("."):
                stat = path.stat()
                found.append(CacheEntry("blobs", path, stat.st_size, stat.st_mtime))
        for folder in sorted((self.root / "files" / "sha256").iterdir()):
            files = [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
            if files:
                size = sum(f.stat().st_size for f in files)
                found.append(
                    CacheEntry("files", folder, size, max(f.stat().st_mtime for f in files))
                )
        venvs = self.root / "venvs"
        if venvs.is_dir():
            for venv in sorted(venvs.iterdir()):
                marker = venv / ".complete"
                used = marker.stat().st_mtime if marker.is_file() else 0.0
                found.append(CacheEntry("venvs", venv, _tree_size(venv), used))
        return found

    def prune(
        self,
        older_than_s: float | None = None,
        max_bytes: int | None = None,
        dry_run: bool = False,
        now: float | None = None,
    ) -> PruneResult:
        """Remove entries unused for longer than `older_than_s`, then the least recently used ones
        until the cache holds at most `max_bytes`. Index entries pointing at removed blobs stay: they
        are misses, and cost bytes, not correctness."""
        now = time.time() if now is None else now
        try:
            with self._locked(fcntl.LOCK_EX | fcntl.LOCK_NB):
                return self._prune(now, older_than_s, max_bytes, dry_run)
        except BlockingIOError:
            raise GapforgeError(
                f"{self.root}: a build, lock or runtime-env is using this cache now, and pruning "
                "could remove what it is about to read. Run 'gapforge cache prune' again when "
                "it has finished."
            ) from None

    def _prune(
        self, now: float, older_than_s: float | None, max_bytes: int | None, dry_run: bool
    ) -> PruneResult:
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        result = PruneResult(kept_bytes=sum(e.size for e in entries))
        for entry in entries:
            stale = older_than_s is not None and now - entry.last_used > older_than_s
            over = max_bytes is not None and result.kept_bytes > max_bytes
            if not (stale or over):
                continue
            result.removed.append(entry)
            result.kept_bytes -= entry.size
            if not dry_run:
                remove_path(entry.path)
                self.records.forget(entry.path)
        return result

    # -- internals ----------------------------------------------------------------------------------
    def _place(self, source: Path, target: Path, move: bool) -> bool:
        """Put `source` at `target`; True when the very file (same bytes, renamed) is now there."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file():
            if move:
                source.unlink()
            return False
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        renamed = False
        if move:
            try:
                os.replace(source, tmp)
                renamed = True
            except OSError:  # another filesystem
                shutil.copyfile(source, tmp)
                source.unlink()
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return renamed

    def _discard(self, path: Path) -> None:
        self.corrupt.append(path)
        path.unlink(missing_ok=True)
        self.records.forget(path)


@dataclass(frozen=True)
class CacheEntry:
    area: str
    path: Path
    size: int
    last_used: float


@dataclass
class PruneResult:
    kept_bytes: int
    removed: list[CacheEntry] = field(default_factory=list)

    @property
    def removed_bytes(self) -> int:
        return sum(e.size for e in self.removed)


def _open_existing(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None


def _tree_size(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
