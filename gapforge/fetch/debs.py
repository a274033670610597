"""Locked .deb files into the cache, from the first source that still has them.

Sources, in order: the cache; the organisation's own mirrors (`$GAPFORGE_DEBIAN_MIRROR`, e.g. an
aptly or apt-cacher-ng); the profile's mirrors; the Debian snapshot archive at the lock's snapshot
(it keeps every version ever published). Every byte is checked against the lock's sha256 before the
cache takes it, so a source need not be trusted, only reachable.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gapforge.cache import Cache
from gapforge.errors import FetchError
from gapforge.fetch.rootfs import DebianPackage, mirror_archive
from gapforge.lock.debian import DebianLock
from gapforge.profile import DebianBase
from gapforge.progress import byte_progress, note

MIRROR_ENV = "GAPFORGE_DEBIAN_MIRROR"
SNAPSHOT_URL = "https://snapshot.debian.org/archive/{archive}/{snapshot}"
TIMEOUT_S = 30.0
WORKERS = 4


@dataclass(frozen=True)
class DebSource:
    """A place .debs can come from: `url` holds `{archive}`, the archive's name (debian, …)."""

    name: str
    url: str

    def url_for(self, filename: str) -> str:
        archive, _, pool = filename.partition("/")
        return f"{self.url.format(archive=archive).rstrip('/')}/{pool}"


def deb_sources(debs: DebianBase, snapshot: str) -> list[DebSource]:
    """Where to look for a locked .deb after the cache, in order."""
    sources = []
    for entry in os.environ.get(MIRROR_ENV, "").split():
        template = entry if "{archive}" in entry else entry.rstrip("/") + "/{archive}"
        sources.append(DebSource(f"${MIRROR_ENV} {entry}", template))
    seen = set()
    for line in debs.mirrors:
        archive, url, _, _ = mirror_archive(line)
        base = url[: -len(archive)] + "{archive}"
        if base not in seen:
            seen.add(base)
            sources.append(DebSource(f"mirror {base.format(archive='…')}", base))
    if snapshot:
        sources.append(
            DebSource(
                f"snapshot archive at {snapshot}",
                SNAPSHOT_URL.format(archive="{archive}", snapshot=snapshot),
            )
        )
    return sources


@dataclass
class Unavailable:
    package: DebianPackage
    tried: list[str] = field(default_factory=list)
    """One line per source: what it answered."""


class DebsUnavailable(FetchError):
    """Locked .debs that no source could give (with the right bytes)."""

    def __init__(self, lock: DebianLock, missing: list[Unavailable], sources: list[DebSource]):
        self.lock = lock
        self.missing = missing
        lines = [
            f"{len(missing)} Debian package{'s' if len(missing) != 1 else ''} locked in "
            f"{lock.path} cannot be had from any source (the cache, "
            + ", ".join(s.name for s in sources)
            + "):"
        ]
        for item in missing[:40]:
            p = item.package
            lines.append(f"  {p.name} {p.version} {p.architecture}: " + "; ".join(item.tried))
        if len(missing) > 40:
            lines.append(f"  … and {len(missing) - 40} more")
        super().__init__("\n".join(lines))


def _download(url: str, dest: Path, advance: Callable[[int], None]) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "gapforge"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer, open(dest, "wb") as out:
        while chunk := answer.read(1024 * 1024):
            out.write(chunk)
            advance(len(chunk))


def _fetch_one(
    cache: Cache,
    package: DebianPackage,
    sources: list[DebSource],
    work: Path,
    advance: Callable[[int], None],
) -> Path | Unavailable:
    if not package.filename:
        return Unavailable(
            package, ["the lock predates archive paths: only the cache could have it"]
        )
    missing = Unavailable(package)
    for number, source in enumerate(sources):
        url = source.url_for(package.filename)
        dest = work / f"{number}-{package.deb_name}"
        try:
            _download(url, dest, advance)
        except urllib.error.HTTPError as error:
            missing.tried.append(f"{source.name}: HTTP {error.code}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            missing.tried.append(f"{source.name}: {reason}")
            continue
        named = dest.with_name(package.deb_name)
        os.replace(dest, named)
        try:
            return cache.put_file(named, allowed={package.sha256}, move=True)
        except ValueError:
            named.unlink(missing_ok=True)
            missing.tried.append(f"{source.name}: served other bytes than the lock's sha256")
    return missing


def fetch_debs(cache: Cache, lock: DebianLock, debs: DebianBase) -> dict[str, Path]:
    """Every .deb of `lock` in the cache (sha256 → cached file), or DebsUnavailable naming each
    one no source had."""
    found: dict[str, Path] = {}
    todo: list[DebianPackage] = []
    for package in lock.packages:
        cached = cache.find_file(package.sha256)
        if cached is not None:
            found[package.sha256] = cached
        else:
            todo.append(package)
    if not todo:
        note(f"all {len(lock.packages)} .debs of {lock.path.name} are cached")
        return found
    sources = deb_sources(debs, lock.snapshot)
    total = sum(p.size for p in todo) or None
    note(f"downloading {len(todo)} of {len(lock.packages)} .debs of {lock.path.name}")
    missing: list[Unavailable] = []
    # Each worker writes under its own names; the cache places files atomically.
    with (
        cache.tempdir("debs-") as work,
        byte_progress(".debs", total) as advance,
        ThreadPoolExecutor(max_workers=WORKERS) as pool,
    ):
        results = pool.map(lambda p: _fetch_one(cache, p, sources, work, advance), todo)
        for package, result in zip(todo, results, strict=True):
            if isinstance(result, Unavailable):
                missing.append(result)
            else:
                found[package.sha256] = result
    if missing:
        raise DebsUnavailable(lock, missing, sources)
    return found
