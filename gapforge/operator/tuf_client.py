"""The operator's side, inside the gap: pin the release repository's root once (`gapforge trust
init`), then check a bundle's SHA256SUMS against metadata carried beside it.

Trust state (`trust_dir()`):

    metadata/root.json           the trusted root (python-tuf makes it a link into root_history/)
    metadata/root_history/N.root.json
    metadata/timestamp.json, snapshot.json, targets.json, candidate.json, approved.json
                                 the newest metadata verified so far: what rollback is judged against
    site.json                    {"channel": "approved"}: the channel this site requires

python-tuf's Updater does the checking; it persists only metadata that verified, so a failed check
leaves the trust state as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tuf.api import exceptions
from tuf.api.metadata import Metadata, Root, Targets
from tuf.ngclient import Updater

from gapforge.operator.tuf_fetcher import BASE_URL as _BASE_URL
from gapforge.operator.tuf_fetcher import FolderFetcher, trusted_files
from gapforge.release import CHANNELS, REVOKED, ReleaseError, target_path
from gapforge.release.keys import crypto_key, key_fingerprint
from gapforge.release.metadata import atomic_write, iso, metadata_bytes, role_keys

TRUST_ENV = "GAPFORGE_TRUST_DIR"
SITE = "site.json"


def trust_dir() -> Path:
    """$GAPFORGE_TRUST_DIR, else $XDG_DATA_HOME/gapforge/trust, else ~/.local/share/gapforge/trust."""
    if os.environ.get(TRUST_ENV):
        return Path(os.environ[TRUST_ENV])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "gapforge" / "trust"


def trusted_root_installed(trust: Path | None = None) -> bool:
    return ((trust or trust_dir()) / "metadata" / "root.json").is_file()


@dataclass(frozen=True)
class TrustState:
    """What a site trusts: the pinned root (as updated by rotations) and the channel it requires."""

    path: Path
    root_version: int
    root_expires: datetime
    threshold: int
    root_keys: list[tuple[str, str]]
    """(fingerprint, TUF key id) of each root key."""
    channel: str
    timestamp_version: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "root_version": self.root_version,
            "root_expires": iso(self.root_expires),
            "threshold": self.threshold,
            "root_keys": [{"fingerprint": f, "keyid": k} for f, k in self.root_keys],
            "channel": self.channel,
            "timestamp_version": self.timestamp_version,
        }


def _root_from_bytes(data: bytes, source: Path) -> Metadata[Root]:
    try:
        md: Metadata[Root] = Metadata.from_bytes(data)
    except Exception as exc:  # python-tuf raises several kinds for malformed metadata
        raise ReleaseError(
            f"{source}: not TUF metadata ({exc}): pass the root.json the release manager sent "
            "(release-repo/metadata/root.json)"
        ) from None
    if md.signed.type != "root":
        raise ReleaseError(f"{source}: a {md.signed.type} file, not root.json")
    return md


def trust_state(trust: Path | None = None) -> TrustState:
    """The installed trust state; ReleaseError (naming 'gapforge trust init') when there is none."""
    trust = trust or trust_dir()
    root_path = trust / "metadata" / "root.json"
    if not root_path.is_file():
        raise ReleaseError(
            f"no trusted release root at {root_path}: install the root.json the release manager "
            "handed over out of band with 'gapforge trust init ROOT_JSON' (or set $GAPFORGE_TRUST_DIR)"
        )
    root = _root_from_bytes(root_path.read_bytes(), root_path).signed
    try:
        channel = str(json.loads((trust / SITE).read_text(encoding="utf-8"))["channel"])
    except (OSError, ValueError, KeyError):
        channel = "approved"
    timestamp_version = None
    timestamp_path = trust / "metadata" / "timestamp.json"
    if timestamp_path.is_file():
        try:
            timestamp_version = Metadata.from_file(str(timestamp_path)).signed.version
        except Exception:  # an unreadable local timestamp is replaced at the next update
            timestamp_version = None
    keys = role_keys(root, "root")
    return TrustState(
        trust, root.version, root.expires, root.roles["root"].threshold,
        [(key_fingerprint(k), k.keyid) for k in keys], channel, timestamp_version,
    )  # fmt: skip


def trust_init(
    root_json: Path, channel: str = "approved", trust: Path | None = None, force: bool = False
) -> TrustState:
    """Pin `root_json` (checked against its own threshold) as this site's root of trust."""
    trust = trust or trust_dir()
    if channel not in CHANNELS:
        raise ReleaseError(f"--channel {channel}: must be one of {', '.join(CHANNELS)}")
    try:
        data = root_json.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{root_json}: cannot be read ({exc.strerror})") from None
    md = _root_from_bytes(data, root_json)
    try:
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
    except exceptions.UnsignedMetadataError as exc:
        raise ReleaseError(
            f"{root_json}: its signatures do not meet its own root threshold "
            f"({md.signed.roles['root'].threshold}): {exc}. This is not a root the release "
            "manager signed, or it was altered: get root.json again, out of band, and compare its "
            "sha256 with the one the release manager reads to you"
        ) from None
    if trusted_root_installed(trust) and not force:
        state = trust_state(trust)
        ids = ", ".join(keyid[:8] for _, keyid in state.root_keys)
        raise ReleaseError(
            f"{trust} already trusts a release root (version {state.root_version}, keys {ids}, "
            f"channel {state.channel}): later roots arrive by rotation ('gapforge trust update'); "
            "pass --force only to replace the site's trust from scratch"
        )
    metadata = trust / "metadata"
    if metadata.exists():
        shutil.rmtree(metadata)
    metadata.mkdir(parents=True)
    atomic_write(metadata / "root.json", metadata_bytes(md))
    atomic_write(trust / SITE, json.dumps({"channel": channel}, indent=2).encode() + b"\n")
    return trust_state(trust)


def _updater(metadata: Path, trust: Path, fetcher: FolderFetcher | None = None) -> Updater:
    return Updater(
        metadata_dir=str(trust / "metadata"),
        metadata_base_url=_BASE_URL,
        fetcher=fetcher or FolderFetcher(metadata),
        bootstrap=None,
    )


def _version_of(path: Path) -> int | None:
    try:
        return int(Metadata.from_file(str(path)).signed.version)
    except Exception:
        return None


def _expiry_of(path: Path) -> str:
    try:
        return iso(Metadata.from_file(str(path)).signed.expires)
    except Exception:
        return "an unknown date"


def _offered(metadata: Path, role: str) -> Path:
    """The newest copy of `role` in an offered metadata folder."""
    if role in ("timestamp",):
        return metadata / "timestamp.json"
    versions = sorted(
        (int(p.name.split(".")[0]), p)
        for p in metadata.glob(f"*.{role}.json")
        if p.name.split(".")[0].isdigit()
    )
    return versions[-1][1] if versions else metadata / f"{role}.json"


def explain(exc: Exception, metadata: Path, trust: Path) -> str:
    """One sentence for a python-tuf failure, naming its reason and what to do."""
    if isinstance(exc, exceptions.BadVersionNumberError):
        offered = _version_of(metadata / "timestamp.json")
        trusted = _version_of(trust / "metadata" / "timestamp.json")
        return (
            f"rollback: the metadata offered (timestamp version {offered}) is older than what this "
            f"site already trusts (version {trusted}): someone is replaying old metadata, or this "
            f"copy is stale; ask for current metadata ({exc})"
        )
    if isinstance(exc, exceptions.ExpiredMetadataError):
        role = next((r for r in ("timestamp", "snapshot", "root", *CHANNELS, "targets")
                     if r in str(exc)), "timestamp")  # fmt: skip
        return (
            f"expired: the repository's {role} expired on {_expiry_of(_offered(metadata, role))}: "
            "the release manager must run 'gapforge release refresh' and send fresh metadata "
            "(a frozen repository)"
        )
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return (
            f"bad signature on metadata: {exc}. The metadata in {metadata} was not signed by the "
            "keys this site trusts (or was altered): do not use it; get intact metadata from the "
            "release manager"
        )
    if isinstance(exc, exceptions.DownloadError):
        return (
            f"no metadata: {metadata} lacks a file the check needs ({exc}): export the release "
            "repository into it ('gapforge release export')"
        )
    if isinstance(exc, exceptions.RepositoryError):
        return f"the release metadata in {metadata} failed to verify: {exc}"
    return f"the release metadata in {metadata} cannot be read: {exc}"


_TUF_FAILURES = (exceptions.RepositoryError, exceptions.DownloadError, OSError, ValueError)


def trust_update(metadata: Path, trust: Path | None = None) -> tuple[TrustState, TrustState]:
    """Refresh the trust state from a metadata folder (follows root rotations); (before, after)."""
    trust = trust or trust_dir()
    before = trust_state(trust)
    if not metadata.is_dir():
        raise ReleaseError(f"--metadata {metadata}: no such folder")
    try:
        _updater(metadata, trust).refresh()
    except _TUF_FAILURES as exc:
        raise ReleaseError(explain(exc, metadata, trust)) from None
    return before, trust_state(trust)


@dataclass(frozen=True)
class ReleaseCheck:
    """What the release repository says about one bundle, as this site checked it."""

    ok: bool
    problems: list[str]
    """Full sentences, each naming its reason (rollback, expired, revoked, wrong channel, ...)."""
    name: str
    version: str
    channel: str
    """The channel required."""
    found_on: list[str]
    """The channels that list this version."""
    build_keys: tuple[Ed25519PublicKey, ...]
    """The candidate role's keys from verified metadata: the keys that may sign SHA256SUMS."""
    custom: dict[str, Any]
    """The target's custom metadata (empty if not found)."""
    metadata_source: Path
    root_version: int
    revoked: dict[str, Any] | None = field(default=None)
    verified_files: dict[str, str] = field(default_factory=dict)
    """File name in the metadata folder → sha256 of the bytes the TUF client verified: those it
    fetched now, and those it verified before and keeps (root versions, the newest roles)."""


def revocation_on_record(
    name: str, version: str, trust: Path | None = None
) -> dict[str, Any] | None:
    """The revocation of `name` `version` that this site's release metadata lists (the targets
    role the TUF client verified at its newest refresh and keeps in the trust folder), or None.
    A receipt says a bundle was proven when it was loaded; this says whether the release manager
    has since withdrawn it. ReleaseError when the metadata cannot be read: no answer, no run."""
    path = (trust or trust_dir()) / "metadata" / "targets.json"
    try:
        targets: Metadata[Targets] = Metadata.from_file(str(path))
    except Exception as exc:  # any unreadable or malformed file: cannot decide, so refuse
        raise ReleaseError(
            f"{path}: this site's verified release metadata cannot be read ({exc}), so whether the "
            "release was revoked cannot be decided: import the newest release metadata with "
            "'gapforge trust update METADATA' (or verify the bundle folder again)"
        ) from None
    entry = targets.signed.targets.get(target_path(REVOKED, name, version))
    if entry is None:
        return None
    return dict((entry.custom or {}).get("revoked", {})) or {"reason": "no reason given"}


def _build_keys(trust: Path) -> tuple[Ed25519PublicKey, ...]:
    """The candidate delegation's keys from targets.json the Updater just verified and persisted."""
    targets: Metadata[Targets] = Metadata.from_file(str(trust / "metadata" / "targets.json"))
    return tuple(crypto_key(k) for k in role_keys(targets.signed, "candidate"))


def check_release(
    sums: bytes,
    index: dict[str, Any],
    metadata: Path,
    trust: Path | None = None,
    channel: str | None = None,
) -> ReleaseCheck:
    """Check a bundle (its SHA256SUMS bytes and bundle.json) against release metadata in `metadata`,
    from this site's trust state; problems come back in the result, never as exceptions (only a
    missing trust state raises ReleaseError)."""
    name, version = str(index.get("name", "")), str(index.get("version", ""))
    sums_sha256 = hashlib.sha256(sums).hexdigest()
    check = check_release_digest(sums_sha256, name, version, metadata, trust, channel)
    if channel_entry_found(check):
        image = index.get("image") or {}
        for digest in ("manifest_digest", "config_digest"):
            listed = (check.custom.get("image") or {}).get(digest)
            if listed != image.get(digest):
                check.problems.append(
                    f"digest mismatch: bundle.json image.{digest} is {image.get(digest)}, the "
                    f"release repository lists {listed}: this is not the image that was released"
                )
    return dataclasses.replace(check, ok=not check.problems)


def channel_entry_found(check: ReleaseCheck) -> bool:
    """Whether the release metadata lists the release on the channel the check required."""
    return check.channel in check.found_on


def check_release_digest(
    sums_sha256: str,
    name: str,
    version: str,
    metadata: Path,
    trust: Path | None = None,
    channel: str | None = None,
) -> ReleaseCheck:
    """The release `name` `version` in the metadata in `metadata`, from this site's trust state:
    on the site's channel (or `channel`), not revoked, its SHA256SUMS the one of sha256
    `sums_sha256`; with the build keys the verified metadata names. Problems come back in the
    result. What a delta or split media binds is checked this way before any part is touched."""
    trust = trust or trust_dir()
    state = trust_state(trust)
    channel = channel or state.channel

    fetcher = FolderFetcher(metadata)
    served = fetcher.served  # filled as the Updater reads; read when a result is made

    def result(problems: list[str], found_on: list[str], keys: tuple[Ed25519PublicKey, ...] = (),
               custom: dict[str, Any] | None = None,
               revoked: dict[str, Any] | None = None) -> ReleaseCheck:  # fmt: skip
        return ReleaseCheck(
            not problems, problems, name, version, channel, found_on, keys, custom or {},
            metadata, trust_state(trust).root_version, revoked,
            {**trusted_files(trust), **served},
        )  # fmt: skip

    if not (metadata / "timestamp.json").is_file():
        return result(
            [f"no release metadata: {metadata} holds none (timestamp.json): ask the release "
             "manager for the bundle with its release/metadata/ ('gapforge release export BUNDLE'), "
             "or name the folder that holds it"], [])  # fmt: skip
    updater = _updater(metadata, trust, fetcher)
    try:
        updater.refresh()
        keys = _build_keys(trust)
        revoked_entry = updater.get_targetinfo(target_path(REVOKED, name, version))
        entries = {c: updater.get_targetinfo(target_path(c, name, version)) for c in CHANNELS}
    except _TUF_FAILURES as exc:
        return result([explain(exc, metadata, trust)], [])
    found_on = [c for c, entry in entries.items() if entry is not None]
    problems: list[str] = []
    revoked = None
    if revoked_entry is not None:
        revoked = dict((revoked_entry.custom or {}).get("revoked", {}))
        problems.append(
            f"revoked on {revoked.get('at')}: {revoked.get('reason')} ({name} {version} must not "
            "be used; ask the release manager which release replaces it)"
        )
    entry = entries.get(channel)
    if entry is None:
        problems.append(
            f"not on channel {channel} (found on: {', '.join(found_on) or 'none'}): this site "
            f"accepts only releases on {channel}; ask the release manager to promote {name} "
            f"{version}, or use a release that is on {channel}"
        )
        fallback = next((e for e in entries.values() if e is not None), None)
        custom = dict(fallback.custom or {}) if fallback else {}
        return result(problems, found_on, keys, custom, revoked)
    if entry.hashes.get("sha256") != sums_sha256:
        problems.append(
            f"digest mismatch: SHA256SUMS differs from the release repository's entry for {name} "
            f"{version} on {channel} (it has sha256 {sums_sha256}, the entry "
            f"{entry.hashes.get('sha256')}): this is not the bundle that was released; get an "
            "intact copy from the release manager"
        )
    if not keys:
        problems.append("the verified release metadata names no build key")
    return result(problems, found_on, keys, dict(entry.custom or {}), revoked)
