"""The release repository on disk: settings, metadata versions, signing, snapshot and timestamp.

Every change writes new versioned files (`N.<role>.json`, consistent snapshots) and then a new
snapshot and timestamp; nothing is ever rewritten in place, and every write is a rename of a
finished file, so a reader sees the old repository or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key
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
from tuf.api.serialization.json import JSONSerializer

from gapforge.bundle.sign import SigningKey, fingerprint, load_private_key, write_key_pair
from gapforge.release import CHANNELS, DEFAULT_EXPIRY_DAYS, ROLES, ReleaseError
from gapforge.release.keys import KeyRing, describe, signer, tuf_key

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


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write(path: Path, data: bytes) -> None:
    """Write a finished file under its final name by rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def metadata_bytes(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


def role_keys(delegator: Root | Targets, role: str) -> list[Key]:
    """The keys a delegator names for `role`, in its order."""
    delegated = delegator.get_delegated_role(role)
    return [delegator.get_key(keyid) for keyid in delegated.keyids]


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


# --- init ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitResult:
    repository: Repository
    generated: list[Path]
    """Private key files made just now."""
    offline: list[Path]
    """Private key files to move off this machine (root and approver keys)."""


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
    for what, count, threshold in (("root", root_keys, root_threshold),
                                   ("approve", approvers, approve_threshold)):  # fmt: skip
        if count < 1 or not 1 <= threshold <= count:
            raise ReleaseError(
                f"--{what}-threshold {threshold} with {count} keys: the threshold must be between "
                f"1 and the number of keys ({count})"
            )
    generated: list[Path] = []
    roots = [_key_file(keys_dir, f"root-{i}.key", generated) for i in range(1, root_keys + 1)]
    targets_key = _key_file(keys_dir, "targets.key", generated)
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
    ring = KeyRing.load((), keys_dir)
    for key in builds:
        ring.explicit[tuf_key(key.private.public_key()).keyid] = key

    days = {**DEFAULT_EXPIRY_DAYS, **(expires_days or {})}
    now = clock()

    def expiry(role: str) -> datetime:
        return now + timedelta(days=days[role])

    root = Metadata(Root(expires=expiry("root")))
    for role, holders in (("root", roots), ("targets", [targets_key]),
                          ("snapshot", [online]), ("timestamp", [online])):  # fmt: skip
        for key in holders:
            root.signed.add_key(tuf_key(key.private.public_key()), role)
    root.signed.roles["root"].threshold = root_threshold
    targets = Metadata(Targets(expires=expiry("targets")))
    targets.signed.delegations = Delegations(
        keys={},
        roles={
            "candidate": DelegatedRole("candidate", [], 1, False, ["candidate/*/*"]),
            "approved": DelegatedRole("approved", [], approve_threshold, False, ["approved/*/*"]),
        },
    )
    for key in builds:
        targets.signed.add_key(tuf_key(key.private.public_key()), "candidate")
    for key in approver_keys:
        targets.signed.add_key(tuf_key(key.private.public_key()), "approved")
    channels = {role: Metadata(Targets(expires=expiry(role))) for role in CHANNELS}
    snapshot = Metadata(
        Snapshot(
            expires=expiry("snapshot"),
            meta={f"{role}.json": MetaFile(version=1) for role in ("targets", *CHANNELS)},
        )
    )
    timestamp = Metadata(Timestamp(expires=expiry("timestamp"), snapshot_meta=MetaFile(1)))

    sign_role(root, "root", role_keys(root.signed, "root"), root_threshold, ring)
    top: dict[str, Metadata[Any]] = {
        "targets": targets,
        "snapshot": snapshot,
        "timestamp": timestamp,
    }
    for role, md in top.items():
        sign_role(md, role, role_keys(root.signed, role), 1, ring)
    for role, channel in channels.items():
        delegated = role_keys(targets.signed, role)
        sign_role(channel, role, delegated, role_threshold(targets.signed, role), ring)

    work = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    files: dict[str, Metadata[Any]] = {
        "1.root.json": root, "root.json": root, "1.targets.json": targets,
        "1.candidate.json": channels["candidate"], "1.approved.json": channels["approved"],
        "1.snapshot.json": snapshot, "timestamp.json": timestamp,
    }  # fmt: skip
    for name, written in files.items():
        atomic_write(work / METADATA / name, metadata_bytes(written))
    settings = {
        "schema": "gapforge/release-repository/v1",
        "keys_dir": str(keys_dir),
        "thresholds": {"root": root_threshold, "approved": approve_threshold},
        "expires_days": days,
        "build_key_files": [str(p) for p in build_paths],
        "bundles": {},
    }
    atomic_write(work / SETTINGS, json.dumps(settings, indent=2, sort_keys=True).encode() + b"\n")
    (work / STAGED).mkdir()
    if path.exists():
        path.rmdir()
    os.rename(work, path)
    repository = Repository.open(path, clock)
    repository.log("init")
    offline = [keys_dir / f"root-{i}.key" for i in range(1, root_keys + 1)]
    offline += [keys_dir / f"approver-{i}.key" for i in range(1, approvers + 1)]
    return InitResult(repository, generated, offline)
