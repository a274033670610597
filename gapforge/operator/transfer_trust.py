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
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.transfer import TransferError
from gapforge.names import UnsafeName, open_regular
from gapforge.operator.anchor import Anchor
from gapforge.operator.verify_report import VerifyReport

SMALL_FILE_LIMIT = 64 * 1024 * 1024
"""A delta's SHA256SUMS, signature and bundle.json, a parts manifest: far below this."""


class TransferNotTrusted(TransferError):
    """A delta or a parts manifest failed its check against the trust anchor: exit 1."""

    exit_status = 1


def refuse_links(folder: Path, where: str) -> None:
    """Refuse (UnsafeName) a symbolic link, device, FIFO or socket anywhere under `folder` (the
    folder the operator named may itself be reached through a link: a mount point, say):
    transfer input holds plain files and folders only, and a link is never followed out of it.
    The walk is verify's own (gapforge.operator.coverage.walk_bundle)."""
    from gapforge.operator.coverage import walk_bundle

    tree = walk_bundle(folder)
    if tree.links:
        path = folder / tree.links[0]
        raise UnsafeName(
            f"{where}: {path} is a symbolic link (to {os.readlink(path)!r}): transfer input holds "
            "plain files and folders only, and no link is ever followed. The delta or medium was "
            "altered: ask the release manager for it again"
        )
    if tree.odd:
        raise UnsafeName(
            f"{where}: {folder / tree.odd[0][0]} is not a regular file or folder ({tree.odd[0][1]}): "
            "transfer input holds plain files and folders only; ask for it again"
        )


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
    has sha256 `sums_sha256` (gapforge.operator.tuf_client.check_release_digest, the check `verify`
    makes too); TransferNotTrusted (exit 1) naming every reason otherwise. `name` and `version`
    must already be single components (gapforge.names.component)."""
    from gapforge.operator.tuf_client import check_release_digest

    if metadata.is_dir():
        refuse_links(metadata, where)
    check = check_release_digest(sums_sha256, name, version, metadata, channel=anchor.channel)
    if check.problems:
        raise TransferNotTrusted(f"{where}: {'; '.join(check.problems)}")
    return check.build_keys


def verify_or_refuse(folder: Path, anchor: Anchor, command: str) -> VerifyReport:
    """The full verify of a bundle (a joined or rebuilt one still in its private work folder, a
    side of a diff) through the trust gate (gapforge.operator.gate): NotVerified (exit 1) unless its signature is proven by
    a key the anchor names and nothing else was found. With --insecure (the bundle's own key) the
    signature must still verify and nothing be found; the report says it is not pinned."""
    from gapforge.operator.gate import NotVerified, require_verified
    from gapforge.operator.verify import verify_bundle

    if anchor.kind != "insecure":
        return require_verified(folder, anchor, command).report
    report = verify_bundle(folder, anchor)
    if not report.signature_ok or report.problems:
        raise NotVerified(report, command)
    return report
