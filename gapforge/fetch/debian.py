"""A build's Debian inputs: the locked .debs in the cache, the base rootfs and the sdist build root
installed from exactly those files, and what to do when the archive has moved on.

A locked .deb that no source serves any more (the mirror replaced it with a security update, the
snapshot archive is out of reach) is handled by mode: by default the set is resolved again on the
mirror, the lock rewritten for review and the refresh recorded (build.json, provenance); with
`frozen` (releases, reproducibility checks) the build stops, naming every package, and no lock
changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.cache import Cache
from gapforge.errors import LockError
from gapforge.fetch.debs import DebsUnavailable, fetch_debs
from gapforge.fetch.rootfs import install_root
from gapforge.lock.debian import (
    DebianLock,
    compare_packages,
    debian_lock_path,
    debian_set,
    describe_change,
    lock_debian,
    read_debian_lock,
)
from gapforge.lock.python import LOCK_COMMAND
from gapforge.profile import Profile
from gapforge.progress import console, note, step


@dataclass(frozen=True)
class DebianRefresh:
    """One Debian lock rewritten during a build because the archive no longer had its .debs."""

    lock: str
    missing: tuple[str, ...]
    """`name version` of each locked package no source had."""
    changes: tuple[dict[str, str], ...]
    snapshot_from: str
    snapshot_to: str

    def to_json(self) -> dict[str, Any]:
        return {
            "lock": self.lock,
            "missing": list(self.missing),
            "changes": [dict(c) for c in self.changes],
            "snapshot_from": self.snapshot_from,
            "snapshot_to": self.snapshot_to,
        }


@dataclass
class DebianInputs:
    """The Debian locks of one profile during one build."""

    cache: Cache
    profile: Profile
    lock_dir: Path
    frozen: bool = False
    refreshes: list[DebianRefresh] = field(default_factory=list)
    _files: dict[str, dict[str, Path]] = field(default_factory=dict)

    def lock(self, kind: str = "base") -> DebianLock:
        """The lock as it is now (after any refresh)."""
        return read_debian_lock(debian_lock_path(self.lock_dir, self.profile.name, kind))

    def debs(self, kind: str = "base") -> tuple[DebianLock, dict[str, Path]]:
        """Every .deb of the lock in the cache: sha256 → cached file. Refreshes the lock when the
        archive no longer has some (stops instead when frozen)."""
        lock = self.lock(kind)
        if kind in self._files:
            return lock, self._files[kind]
        try:
            files = fetch_debs(self.cache, lock, debian_set(self.profile, kind))
        except DebsUnavailable as missing:
            if self.frozen:
                raise LockError(
                    f"{missing.message}\n--frozen never changes a lock, so this build stops. "
                    "Build without --frozen to take the archive's current packages (security "
                    f"updates, listed for review), run '{LOCK_COMMAND}', or point "
                    "$GAPFORGE_DEBIAN_MIRROR at a mirror that keeps these versions."
                ) from None
            lock, files = self._refresh(kind, lock, missing)
        self._files[kind] = files
        return lock, files

    def _refresh(
        self, kind: str, old: DebianLock, missing: DebsUnavailable
    ) -> tuple[DebianLock, dict[str, Path]]:
        step(
            f"[bold yellow]{old.path.name}: {len(missing.missing)} locked .debs are gone from "
            "every source[/]: resolving the set again on the mirror (use --frozen to stop instead)"
        )
        for item in missing.missing[:10]:
            note(f"not available: {item.package.name} {item.package.version}")
        new, changes = lock_debian(self.profile, kind, self.lock_dir, self.cache)
        for change in changes:
            console.print(f"      {describe_change(change)}")
        note(f"rewrote {new.path}: review the diff and commit it")
        self.refreshes.append(
            DebianRefresh(
                lock=new.path.name,
                missing=tuple(f"{i.package.name} {i.package.version}" for i in missing.missing),
                changes=tuple(changes),
                snapshot_from=old.snapshot,
                snapshot_to=new.snapshot,
            )
        )
        return new, fetch_debs(self.cache, new, debian_set(self.profile, kind))

    # -- the base rootfs --------------------------------------------------------------------------------
    def rootfs_tar(self) -> Path:
        """The base root filesystem as a tar in the cache, installed from the locked .debs."""
        lock = self.lock("base")
        known = self.cache.index_get("rootfs", lock.sha256, required=("digest",))
        if known is not None and self.cache.has_blob(known["digest"]):
            note(f"Debian base rootfs is cached ({known['digest'][:19]})")
            return self.cache.blob_path(known["digest"])
        lock, files = self.debs("base")
        note(f"Debian base rootfs: installing the {len(lock.packages)} locked .debs (no mirror)")
        with self.cache.tempdir("rootfs-") as work:
            installed = install_root(self.profile, self.profile.debian, lock.packages, files,
                                     work, "tar", work / "rootfs.tar")  # fmt: skip
            compare_packages(lock.path, lock.packages, installed)
            digest = self.cache.put_blob(work / "rootfs.tar", move=True)
        self.cache.index_put("rootfs", lock.sha256, {"digest": digest})
        return self.cache.blob_path(digest)

    # -- the sdist build root (gapforge.fetch.sdist.BuildRootSource) -------------------------------------
    def build_lock_sha256(self) -> str:
        return self.lock("build").sha256

    def prepare_build_root(self) -> None:
        self.debs("build")

    def make_build_root(self, work: Path) -> Path:
        lock, files = self.debs("build")
        step(
            f"making the sdist build root from the {len(lock.packages)} locked .debs of {lock.path.name}"
        )
        root = work / "root"
        installed = install_root(self.profile, debian_set(self.profile, "build"), lock.packages,
                                 files, work, "directory", root)  # fmt: skip
        compare_packages(lock.path, lock.packages, installed)
        return root
