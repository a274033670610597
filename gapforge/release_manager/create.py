"""`gapforge release init`: a new release repository, its first metadata and its missing keys.

The metadata is built and signed in memory (`initial_metadata`, no I/O), then written once: every
file goes into a hidden folder beside the target, which is renamed into place when complete, so a
failed init leaves no half-made repository that a later `release add` could mistake for one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

from gapforge.bundle.sign import SigningKey, fingerprint, load_private_key, write_key_pair
from gapforge.release import CHANNELS, DEFAULT_EXPIRY_DAYS, ROLES, ReleaseError
from gapforge.release.keys import KeyRing, tuf_key
from gapforge.release.metadata import atomic_write, metadata_bytes, role_keys
from gapforge.release_manager.repository import (
    METADATA,
    SETTINGS,
    STAGED,
    Repository,
    role_threshold,
    sign_role,
    utc_now,
)


@dataclass(frozen=True)
class InitResult:
    repository: Repository
    generated: list[Path]
    """Private key files made just now."""
    offline: list[Path]
    """Private key files to move off this machine (root and approver keys)."""


@dataclass(frozen=True)
class InitKeys:
    """The keys a new repository's roles are given, each loaded or made in the keys folder."""

    roots: list[SigningKey]
    targets: SigningKey
    online: SigningKey
    """Signs snapshot and timestamp, which are re-signed often and so stay on the machine."""
    builds: list[SigningKey]
    """The candidate role's keys: what builds sign SHA256SUMS with."""
    build_paths: list[Path]
    """The build keys passed with --build-key (empty when one was made in the keys folder)."""
    approvers: list[SigningKey]
    generated: list[Path]
    """Private key files made just now."""


def _key_file(folder: Path, name: str, generated: list[Path]) -> SigningKey:
    path = folder / name
    if path.is_file():
        return load_private_key(path)
    key = write_key_pair(path)
    generated.append(path)
    return key


def parse_expires(values: Iterable[str]) -> dict[str, int]:
    """`ROLE=DAYS` pairs from --expires."""
    days: dict[str, int] = {}
    for value in values:
        role, _, number = value.partition("=")
        if role not in ROLES or not number.isdigit() or int(number) < 1:
            raise ReleaseError(
                f"--expires {value}: must be ROLE=DAYS with ROLE one of {', '.join(ROLES)} and "
                "DAYS a whole number of at least 1 (e.g. --expires timestamp=14)"
            )
        days[role] = int(number)
    return days


def _refuse_development_key(key: SigningKey, development_key: Path | None) -> None:
    if development_key is None or not development_key.is_file():
        return
    dev = load_private_key(development_key)
    if fingerprint(dev.private.public_key()) == key.fingerprint:
        raise ReleaseError(
            f"--build-key {key.path}: this is the cache's development key ({development_key}, "
            f"{key.fingerprint}): a release repository must not trust it. Make a build key with "
            "'gapforge keygen', build with --key (or $GAPFORGE_SIGNING_KEY), and pass that key"
        )


def check_init_options(
    path: Path, keys_dir: Path | None, thresholds: dict[str, tuple[int, int]]
) -> tuple[Path, Path]:
    """The repository and keys folders, resolved, once the options are known to make sense:
    `thresholds` maps `root` and `approve` to (number of keys, threshold)."""
    path = path.resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ReleaseError(
            f"{path}: exists and is not an empty folder: a release repository is made in a new "
            "folder; choose another path (an existing repository is used with --repo)"
        )
    keys_dir = (keys_dir or path.with_name(path.name + ".keys")).resolve()
    if keys_dir == path or path in keys_dir.parents:
        raise ReleaseError(
            f"--keys-dir {keys_dir}: inside the repository {path}, which is published: keep "
            "private keys outside it (the default is DIR.keys/ beside DIR)"
        )
    for what, (count, threshold) in thresholds.items():
        if count < 1 or not 1 <= threshold <= count:
            raise ReleaseError(
                f"--{what}-threshold {threshold} with {count} keys: the threshold must be between "
                f"1 and the number of keys ({count})"
            )
    return path, keys_dir


def gather_keys(
    keys_dir: Path,
    root_keys: int,
    approvers: int,
    build_keys: Iterable[Path],
    development_key: Path | None,
) -> InitKeys:
    """Each role's keys: loaded from `keys_dir` where there, made there otherwise; build keys from
    --build-key (never the cache's development key), else one made in `keys_dir`."""
    generated: list[Path] = []
    roots = [_key_file(keys_dir, f"root-{i}.key", generated) for i in range(1, root_keys + 1)]
    targets = _key_file(keys_dir, "targets.key", generated)
    online = _key_file(keys_dir, "online.key", generated)
    build_paths = [p.expanduser().resolve() for p in build_keys]
    builds = [load_private_key(p) for p in build_paths]
    for key in builds:
        _refuse_development_key(key, development_key)
    if not builds:
        builds = [_key_file(keys_dir, "build.key", generated)]
    approver_keys = [
        _key_file(keys_dir, f"approver-{i}.key", generated) for i in range(1, approvers + 1)
    ]
    return InitKeys(roots, targets, online, builds, build_paths, approver_keys, generated)


def initial_metadata(
    keys: InitKeys,
    thresholds: dict[str, int],
    days: dict[str, int],
    now: datetime,
    ring: KeyRing,
) -> dict[str, Metadata[Any]]:
    """Version 1 of every role, signed, by file name: root (k of n), targets delegating to
    `candidate` (the build keys) and `approved` (the approvers, `thresholds["approved"]` of them),
    both channels empty, snapshot and timestamp. No I/O: the caller writes them."""

    def expiry(role: str) -> datetime:
        return now + timedelta(days=days[role])

    root = Metadata(Root(expires=expiry("root")))
    for role, holders in (("root", keys.roots), ("targets", [keys.targets]),
                          ("snapshot", [keys.online]), ("timestamp", [keys.online])):  # fmt: skip
        for key in holders:
            root.signed.add_key(tuf_key(key.private.public_key()), role)
    root.signed.roles["root"].threshold = thresholds["root"]
    targets = Metadata(Targets(expires=expiry("targets")))
    approved = DelegatedRole("approved", [], thresholds["approved"], False, ["approved/*/*"])
    candidate = DelegatedRole("candidate", [], 1, False, ["candidate/*/*"])
    targets.signed.delegations = Delegations(
        keys={}, roles={"candidate": candidate, "approved": approved}
    )
    for role, holders in (("candidate", keys.builds), ("approved", keys.approvers)):
        for key in holders:
            targets.signed.add_key(tuf_key(key.private.public_key()), role)
    channels = {role: Metadata(Targets(expires=expiry(role))) for role in CHANNELS}
    meta = {f"{role}.json": MetaFile(version=1) for role in ("targets", *CHANNELS)}
    snapshot = Metadata(Snapshot(expires=expiry("snapshot"), meta=meta))
    timestamp = Metadata(Timestamp(expires=expiry("timestamp"), snapshot_meta=MetaFile(1)))

    sign_role(root, "root", role_keys(root.signed, "root"), thresholds["root"], ring)
    for role, md in (("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
        sign_role(md, role, role_keys(root.signed, role), 1, ring)
    for role, channel in channels.items():
        delegated = role_keys(targets.signed, role)
        sign_role(channel, role, delegated, role_threshold(targets.signed, role), ring)
    return {
        "1.root.json": root, "root.json": root, "1.targets.json": targets,
        "1.candidate.json": channels["candidate"], "1.approved.json": channels["approved"],
        "1.snapshot.json": snapshot, "timestamp.json": timestamp,
    }  # fmt: skip


def _write_repository(
    path: Path, files: dict[str, Metadata[Any]], settings: dict[str, Any]
) -> None:
    """The one write: everything into a hidden folder beside `path`, then one rename."""
    work = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    for name, written in files.items():
        atomic_write(work / METADATA / name, metadata_bytes(written))
    atomic_write(work / SETTINGS, json.dumps(settings, indent=2, sort_keys=True).encode() + b"\n")
    (work / STAGED).mkdir()
    if path.exists():
        path.rmdir()
    os.rename(work, path)


def init_repository(
    path: Path,
    keys_dir: Path | None = None,
    root_keys: int = 3,
    root_threshold: int = 2,
    approvers: int = 1,
    approve_threshold: int = 1,
    build_keys: Iterable[Path] = (),
    expires_days: dict[str, int] | None = None,
    development_key: Path | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> InitResult:
    """Make a new repository in `path` (absent or empty), its missing keys in `keys_dir`."""
    thresholds = {"root": (root_keys, root_threshold), "approve": (approvers, approve_threshold)}
    path, keys_dir = check_init_options(path, keys_dir, thresholds)
    keys = gather_keys(keys_dir, root_keys, approvers, build_keys, development_key)
    ring = KeyRing.load((), keys_dir)
    for key in keys.builds:
        ring.explicit[tuf_key(key.private.public_key()).keyid] = key
    days = {**DEFAULT_EXPIRY_DAYS, **(expires_days or {})}
    role_thresholds = {"root": root_threshold, "approved": approve_threshold}
    files = initial_metadata(keys, role_thresholds, days, clock(), ring)
    settings = {
        "schema": "gapforge/release-repository/v1",
        "keys_dir": str(keys_dir),
        "thresholds": role_thresholds,
        "expires_days": days,
        "build_key_files": [str(p) for p in keys.build_paths],
        "bundles": {},
    }
    _write_repository(path, files, settings)
    repository = Repository.open(path, clock)
    repository.log("init")
    offline = [keys_dir / f"root-{i}.key" for i in range(1, root_keys + 1)]
    offline += [keys_dir / f"approver-{i}.key" for i in range(1, approvers + 1)]
    return InitResult(repository, keys.generated, offline)
