"""Keeping a release repository alive: key rotation, expiry status, exporting metadata for transfer."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key
from tuf.api.metadata import Metadata, Root, Targets

from gapforge.bundle import INDEX, RELEASE_DIR
from gapforge.release import CHANNELS, DEFAULT_EXPIRY_DAYS, ROLES, ReleaseError
from gapforge.release.keys import KeyRing, describe, matches, public_tuf_key
from gapforge.release.metadata import metadata_bytes, role_keys
from gapforge.release_manager.repository import Repository, role_threshold, sign_role


def _new_keys(
    current: list[Key], add: list[Path], remove: list[str], threshold: int, role: str
) -> tuple[list[Key], int]:
    """The role's keys after --remove-key and --add-key, and its threshold (checked)."""
    keys = list(current)
    for wanted in remove:
        found = [k for k in keys if matches(k, wanted)]
        if len(found) != 1:
            listed = ", ".join(describe(k) for k in current)
            raise ReleaseError(
                f"--remove-key {wanted}: {'matches no' if not found else 'matches several'} key of "
                f"{role} (its keys: {listed}); give a fingerprint or key id of at least 8 hex digits"
            )
        keys.remove(found[0])
    for path in add:
        key = public_tuf_key(path)
        if all(k.keyid != key.keyid for k in keys):
            keys.append(key)
    if not keys or not 1 <= threshold <= len(keys):
        raise ReleaseError(
            f"{role}: threshold {threshold} with {len(keys)} keys: the threshold must be "
            "between 1 and the number of keys; pass --threshold, or add keys with --add-key"
        )
    return keys, threshold


def rotate(
    repo: Repository,
    role: str,
    add: list[Path],
    remove: list[str],
    threshold: int | None,
    keys: list[Path],
) -> dict[str, int]:
    """Change `role`'s keys or threshold, the TUF way; returns the new versions written."""
    if role not in ROLES:
        raise ReleaseError(f"--role {role}: must be one of {', '.join(ROLES)}")
    if not add and not remove and threshold is None:
        raise ReleaseError("rotate: nothing to change: pass --add-key, --remove-key or --threshold")
    ring = repo.keyring(keys)
    written: dict[str, int] = {}
    if role in CHANNELS:
        targets = repo.targets()
        current = role_keys(targets.signed, role)
        new, k = _new_keys(
            current, add, remove, threshold or role_threshold(targets.signed, role), role
        )
        _set_keys(targets.signed, role, current, new, k)
        repo.renew(targets, "targets")
        t_keys, t_threshold = repo.keys_of("targets")
        sign_role(targets, "targets", t_keys, t_threshold, ring)
        delegated = repo.targets(role)
        repo.renew(delegated, role)
        sign_role(delegated, role, new, k, ring)
        repo.publish({"targets": targets, role: delegated}, ring)
        written = {"targets": targets.signed.version, role: delegated.signed.version}
    else:
        old_root = repo.root()
        root: Metadata[Root] = Metadata.from_bytes(metadata_bytes(old_root))
        current = role_keys(root.signed, role)
        new, k = _new_keys(
            current, add, remove, threshold or role_threshold(root.signed, role), role
        )
        _set_keys(root.signed, role, current, new, k)
        repo.renew(root, "root")
        _sign_root(root, old_root, ring)
        repo.write_root(root)
        written["root"] = root.signed.version
        if role == "targets":
            targets = repo.targets()
            repo.renew(targets, "targets")
            sign_role(targets, "targets", new, k, ring)
            repo.publish({"targets": targets}, ring)
            written["targets"] = targets.signed.version
        else:
            repo.publish({}, ring)
    repo.log("rotate", role=role, added=[str(p) for p in add] or None, removed=remove or None)
    return written


def _set_keys(delegator: Root | Targets, role: str, old: list[Key], new: list[Key], k: int) -> None:
    for key in old:
        if key not in new:
            delegator.revoke_key(key.keyid, role)
    for key in new:
        delegator.add_key(key, role)
    delegator.get_delegated_role(role).threshold = k


def _sign_root(root: Metadata[Root], old: Metadata[Root], ring: KeyRing) -> None:
    """Sign with every root key at hand, old and new; both thresholds must be met."""
    old_keys = role_keys(old.signed, "root")
    new_keys = role_keys(root.signed, "root")
    every = old_keys + [k for k in new_keys if k.keyid not in {o.keyid for o in old_keys}]
    sign_role(root, "root", every, 0, ring, require=False)
    result = root.signed.get_root_verification_result(
        old.signed, root.signed_bytes, root.signatures
    )
    if not result.verified:
        problems = []
        for label, part, keys in (
            ("old", result.first, old_keys),
            ("new", result.second, new_keys),
        ):
            if not part.verified:
                missing = ", ".join(describe(k) for k in keys if k.keyid not in part.signed)
                problems.append(
                    f"{part.missing} more signature(s) of the {label} root keys (any of {missing})"
                )
        raise ReleaseError(
            f"root version {root.signed.version} needs {' and '.join(problems)}: pass those "
            "private keys with --key (a new root is signed by a threshold of the old keys and a "
            "threshold of the new ones)"
        )


@dataclass(frozen=True)
class RoleStatus:
    role: str
    version: int
    expires: datetime
    days_left: float
    state: str
    """ok, WARN (under 14 days or a third of its period) or EXPIRED."""


def status(repo: Repository) -> list[RoleStatus]:
    now = repo.clock()
    rows = []
    for role, md in repo.current().items():
        left = (md.signed.expires - now).total_seconds() / 86400
        period = int(repo.settings.get("expires_days", {}).get(role, DEFAULT_EXPIRY_DAYS[role]))
        state = "EXPIRED" if left < 0 else "WARN" if left < min(14, period / 3) else "ok"
        rows.append(RoleStatus(role, md.signed.version, md.signed.expires, left, state))
    return rows


def export(repo: Repository, dest: Path) -> Path:
    """Copy every root version and the current metadata into DEST/metadata/ (or, for a bundle
    folder, DEST/release/metadata/), replacing what was there in one rename."""
    base = dest / RELEASE_DIR if (dest / INDEX).is_file() else dest
    final = base / "metadata"
    current = repo.current()
    snapshot = current["snapshot"].signed
    names = [f"{v}.root.json" for v in repo.versions("root")] + ["root.json", "timestamp.json"]
    names.append(f"{snapshot.version}.snapshot.json")
    names += [f"{meta.version}.{name}" for name, meta in snapshot.meta.items()]
    work = base / f".metadata.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in names:
        shutil.copyfile(repo.metadata_dir / name, work / name)
    old = base / f".metadata.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(work, final)
    shutil.rmtree(old, ignore_errors=True)
    repo.log("export", dest=str(final))
    return final


def show_rows(custom: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Every custom field flattened to (dotted name, value) rows."""
    rows: list[tuple[str, str]] = []
    for key, value in custom.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += show_rows(value, name + ".")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                rows += show_rows(item, f"{name}[{i}].")
        else:
            rows.append((name, str(value)))
    return rows
