"""What a transfer document is checked against before anything it names is touched: the keys that
may sign a delta's SHA256SUMS or a split's parts manifest, by the operator's trust anchor.

- a pinned key (`--key`): that key;
- the trusted release root (`gapforge trust init`): the build keys (the candidate role) of TUF
  metadata verified from this site's root, and only when the release the document names is listed
  on the site's channel, not revoked, with the very SHA256SUMS (by its sha256) the document binds.
  A key the media or the delta carry is never one of them;
- `--insecure`: none (the caller falls back to the bundle's own key, integrity only, and says so).

Also the folder checks every transfer input gets first: no symbolic link, no device, no FIFO
anywhere in it, and small files read through `gapforge.names.open_regular` (no-follow).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.anchor import Anchor
from gapforge.bundle.verify_report import VerifyReport
from gapforge.names import UnsafeName, open_regular
from gapforge.transfer import TransferError

SMALL_FILE_LIMIT = 64 * 1024 * 1024
"""A delta's SHA256SUMS, signature and bundle.json, a parts manifest: far below this."""


class TransferNotTrusted(TransferError):
    """A delta or a parts manifest failed its check against the trust anchor: exit 1."""

    exit_status = 1


def refuse_links(folder: Path, where: str) -> None:
    """Refuse (UnsafeName) a symbolic link, device, FIFO or socket anywhere under `folder` (the
    folder the operator named may itself be reached through a link: a mount point, say):
    transfer input holds plain files and folders only, and a link is never followed out of it."""
    for path in _entries(folder):
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            target = os.readlink(path)
            raise UnsafeName(
                f"{where}: {path} is a symbolic link (to {target!r}): transfer input holds plain "
                "files and folders only, and no link is ever followed. The delta or medium was "
                "altered: ask the release manager for it again"
            )
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeName(
                f"{where}: {path} is not a regular file or folder (a device, FIFO or socket): "
                "transfer input holds plain files and folders only; ask for it again"
            )


def _entries(folder: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        found += [Path(dirpath) / name for name in (*dirnames, *filenames)]
    return found


def read_small(path: Path, where: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of a small regular file, opened without following a link; TransferError when it
    is missing, unreadable or larger than `limit`."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise TransferError(f"{where}: {path.name} is missing: ask for it again, whole") from None
    except OSError as exc:
        raise TransferError(
            f"{where}: {path} cannot be opened as a regular file ({exc.strerror or exc}): "
            "transfer input holds plain files only; ask for it again"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TransferError(f"{where}: {path} is over {limit} bytes: not a file gapforge wrote")
    return data


def release_keys(
    anchor: Anchor, metadata: Path, name: str, version: str, sums_sha256: str, where: str
) -> tuple[Ed25519PublicKey, ...]:
    """The build keys of the release metadata in `metadata`, verified from this site's trusted
    root, once `name` `version` is a release on the site's channel, not revoked, whose SHA256SUMS
    has sha256 `sums_sha256`; TransferNotTrusted (exit 1) naming the reason otherwise. `name` and
    `version` must already be single components (gapforge.names.component)."""
    from gapforge.release import REVOKED, target_path
    from gapforge.release.client import (
        _TUF_FAILURES,
        _build_keys,
        _updater,
        explain,
        trust_dir,
        trust_state,
    )

    if metadata.is_dir():
        refuse_links(metadata, where)
    if not metadata.is_dir() or not (metadata / "timestamp.json").is_file():
        raise TransferNotTrusted(
            f"{where}: no release metadata to check it against under the trusted root ({metadata} "
            "holds no timestamp.json): pass --repo with the release repository's metadata folder "
            "('gapforge release export'), or --key RELEASE.pub.pem"
        )
    trust = trust_dir()
    channel = anchor.channel or trust_state(trust).channel
    updater = _updater(metadata, trust)
    try:
        updater.refresh()
        keys = _build_keys(trust)
        revoked = updater.get_targetinfo(target_path(REVOKED, name, version))
        entry = updater.get_targetinfo(target_path(channel, name, version))
    except _TUF_FAILURES as exc:
        raise TransferNotTrusted(f"{where}: {explain(exc, metadata, trust)}") from None
    if revoked is not None:
        reason = (revoked.custom or {}).get("revoked", {})
        raise TransferNotTrusted(
            f"{where}: {name} {version} is revoked ({reason.get('reason', 'no reason given')}): "
            "ask the release manager which release replaces it"
        )
    if entry is None:
        raise TransferNotTrusted(
            f"{where}: {name} {version} is not a release on channel {channel} in the verified "
            "release metadata: this site accepts only releases on its channel; ask the release "
            "manager to promote it, or for media of a release that is on it"
        )
    if entry.hashes.get("sha256") != sums_sha256:
        raise TransferNotTrusted(
            f"{where}: binds SHA256SUMS sha256 {sums_sha256}, the release repository lists "
            f"{entry.hashes.get('sha256')} for {name} {version}: this is not the bundle that was "
            "released; ask for it again"
        )
    if not keys:
        raise TransferNotTrusted(f"{where}: the verified release metadata names no build key")
    return keys


def verify_or_refuse(folder: Path, anchor: Anchor, command: str) -> VerifyReport:
    """The full verify of a bundle (a joined or rebuilt one still in its private work folder, a
    side of a diff) through the trust gate (gapforge.bundle.gate): NotVerified (exit 1) unless its signature is proven by
    a key the anchor names and nothing else was found. With --insecure (the bundle's own key) the
    signature must still verify and nothing be found; the report says it is not pinned."""
    from gapforge.bundle.gate import NotVerified, require_verified
    from gapforge.bundle.verify import verify_bundle

    if anchor.kind != "insecure":
        return require_verified(folder, anchor, command).report
    report = verify_bundle(folder, anchor)
    if not report.signature_ok or report.problems:
        raise NotVerified(report, command)
    return report
