"""The release repository on disk: settings, metadata versions, signing, snapshot and timestamp.

Every change writes new versioned files (`N.<role>.json`, consistent snapshots) and then a new
snapshot and timestamp; nothing is ever rewritten in place, and every write is a rename of a
finished file, so a reader sees the old repository or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

from gapforge.bundle.sign import load_private_key
from gapforge.release import CHANNELS, DEFAULT_EXPIRY_DAYS, ReleaseError
from gapforge.release.keys import KeyRing, describe, signer, tuf_key
from gapforge.release.metadata import atomic_write, iso, metadata_bytes, role_keys

REPO_ENV = "GAPFORGE_RELEASE_REPO"
SETTINGS = "repository.json"
HISTORY = "history.jsonl"
METADATA = "metadata"
STAGED = "staged"
_VERSIONED = re.compile(r"^(\d+)\.([a-z]+)\.json$")


def default_repository() -> Path:
    """--repo, else $GAPFORGE_RELEASE_REPO, else ./release-repo."""
    return Path(os.environ.get(REPO_ENV) or "release-repo")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def role_threshold(delegator: Root | Targets, role: str) -> int:
    return delegator.get_delegated_role(role).threshold


def delegator_of(role: str) -> str:
    return "targets" if role in CHANNELS else "root"


def sign_role(
    md: Metadata[Any],
    role: str,
    keys: list[Key],
    threshold: int,
    ring: KeyRing,
    explicit_only: bool = False,
    require: bool = True,
) -> list[Key]:
    """Sign `md` with every key of `keys` at hand (appending); return the keys that signed. With
    `require`, fewer than `threshold` is an error naming the keys still needed."""
    signed: list[Key] = []
    for key in keys:
        private = ring.find(key.keyid, explicit_only)
        if private is not None:
            md.sign(signer(private), append=True)
            signed.append(key)
    if require and len(signed) < threshold:
        missing = [describe(key) for key in keys if key not in signed]
        where = "--key" if explicit_only else "--key or the keys folder"
        raise ReleaseError(
            f"{role}: {len(signed)} of the {threshold} signatures it needs are at hand: pass the "
            f"private key(s) of {', '.join(missing)} with {where}"
        )
    return signed


@dataclass
class Repository:
    """An existing release repository (its repository.json read)."""

    path: Path
    clock: Callable[[], datetime] = utc_now
    """The time new metadata counts its expiry from (tests move it into the past)."""
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, clock: Callable[[], datetime] = utc_now) -> Repository:
        settings_path = path / SETTINGS
        try:
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReleaseError(
                f"{path}: not a release repository (no {SETTINGS}): make one with 'gapforge "
                f"release init {path}', or point --repo (or ${REPO_ENV}) at an existing one"
            ) from None
        except (OSError, ValueError) as exc:
            raise ReleaseError(f"{settings_path}: cannot be read ({exc})") from None
        return cls(path.resolve(), clock, settings)

    # --- settings ------------------------------------------------------------------------------

    @property
    def metadata_dir(self) -> Path:
        return self.path / METADATA

    @property
    def keys_dir(self) -> Path:
        return Path(self.settings["keys_dir"])

    @property
    def bundles(self) -> dict[str, str]:
        bundles: dict[str, str] = self.settings.setdefault("bundles", {})
        return bundles

    def expires(self, role: str) -> datetime:
        days = int(self.settings.get("expires_days", {}).get(role, DEFAULT_EXPIRY_DAYS[role]))
        return self.clock() + timedelta(days=days)

    def save_settings(self) -> None:
        data = json.dumps(self.settings, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.path / SETTINGS, data)

    def keyring(self, explicit: Iterable[Path] = ()) -> KeyRing:
        """--key files, the keys folder, and the build keys named at init."""
        ring = KeyRing.load(explicit, self.keys_dir)
        for path in self.settings.get("build_key_files", []):
            if Path(path).is_file():
                key = load_private_key(Path(path))
                ring.folder.setdefault(tuf_key(key.private.public_key()).keyid, key)
        return ring

    # --- reading metadata ----------------------------------------------------------------------

    def versions(self, role: str) -> list[int]:
        """Every version of `role` written, oldest first."""
        found = []
        for path in self.metadata_dir.glob(f"*.{role}.json"):
            match = _VERSIONED.match(path.name)
            if match and match[2] == role:
                found.append(int(match[1]))
        return sorted(found)

    def _load(self, name: str) -> Metadata[Any]:
        path = self.metadata_dir / name
        try:
            return Metadata.from_file(str(path))
        except Exception as exc:  # python-tuf raises several kinds for an unreadable file
            raise ReleaseError(
                f"{path}: cannot be read as TUF metadata ({exc}): restore the repository's "
                "metadata folder from its backup"
            ) from None

    def root(self) -> Metadata[Root]:
        versions = self.versions("root")
        if not versions:
            raise ReleaseError(f"{self.metadata_dir}: no N.root.json: not a release repository")
        return self._load(f"{versions[-1]}.root.json")

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._load(f"{version}.snapshot.json")

    def targets(self, role: str = "targets") -> Metadata[Targets]:
        """The current `role` (targets, candidate or approved): the version the snapshot names."""
        version = self.snapshot().signed.meta[f"{role}.json"].version
        return self._load(f"{version}.{role}.json")

    def current(self) -> dict[str, Metadata[Any]]:
        """Every role's current metadata."""
        return {
            "root": self.root(),
            "timestamp": self.timestamp(),
            "snapshot": self.snapshot(),
            **{role: self.targets(role) for role in ("targets", *CHANNELS)},
        }

    def keys_of(self, role: str) -> tuple[list[Key], int]:
        """The keys and threshold the current metadata gives `role`."""
        delegator = self.root() if delegator_of(role) == "root" else self.targets()
        signed = delegator.signed
        return role_keys(signed, role), role_threshold(signed, role)

    # --- writing metadata ----------------------------------------------------------------------

    def renew(self, md: Metadata[Any], role: str) -> None:
        """Next version, fresh expiry, no signatures yet."""
        md.signed.version += 1
        md.signed.expires = self.expires(role)
        md.signatures.clear()

    def write_root(self, md: Metadata[Root]) -> None:
        data = metadata_bytes(md)
        atomic_write(self.metadata_dir / f"{md.signed.version}.root.json", data)
        atomic_write(self.metadata_dir / "root.json", data)

    def publish(
        self, changed: dict[str, Metadata[Targets]], ring: KeyRing
    ) -> tuple[Metadata[Snapshot], Metadata[Timestamp]]:
        """Write the signed targets-like metadata in `changed`, then a new snapshot and timestamp."""
        snapshot = self.snapshot()
        for role, md in changed.items():
            atomic_write(self.metadata_dir / f"{md.signed.version}.{role}.json", metadata_bytes(md))
            snapshot.signed.meta[f"{role}.json"] = MetaFile(version=md.signed.version)
        return self._snapshot_and_timestamp(snapshot, ring)

    def _snapshot_and_timestamp(
        self, snapshot: Metadata[Snapshot], ring: KeyRing
    ) -> tuple[Metadata[Snapshot], Metadata[Timestamp]]:
        root = self.root().signed
        self.renew(snapshot, "snapshot")
        sign_role(snapshot, "snapshot", role_keys(root, "snapshot"),
                  role_threshold(root, "snapshot"), ring)  # fmt: skip
        timestamp = self.timestamp()
        self.renew(timestamp, "timestamp")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        sign_role(timestamp, "timestamp", role_keys(root, "timestamp"),
                  role_threshold(root, "timestamp"), ring)  # fmt: skip
        atomic_write(
            self.metadata_dir / f"{snapshot.signed.version}.snapshot.json",
            metadata_bytes(snapshot),
        )
        atomic_write(self.metadata_dir / "timestamp.json", metadata_bytes(timestamp))
        return snapshot, timestamp

    def refresh(self, ring: KeyRing | None = None) -> Metadata[Timestamp]:
        """Re-sign snapshot and timestamp with fresh expiry (before each transfer)."""
        _, timestamp = self._snapshot_and_timestamp(self.snapshot(), ring or self.keyring())
        self.log("refresh")
        return timestamp

    def log(self, action: str, **fields: Any) -> dict[str, Any]:
        """Append one line to history.jsonl: what was done, when, and every role's version."""
        current = self.current()
        entry = {
            "time": iso(utc_now()),
            "action": action,
            **{k: v for k, v in fields.items() if v is not None},
            "roles": {role: md.signed.version for role, md in current.items()},
        }
        with open(self.path / HISTORY, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def history(self) -> list[dict[str, Any]]:
        path = self.path / HISTORY
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
