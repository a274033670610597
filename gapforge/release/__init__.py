"""Release metadata (TUF, file-based) as both sides read it: roles, channels, expiries, keys
(keys.py) and the metadata files (metadata.py). The repository is the release manager's
(gapforge.release_manager); the check of a bundle against it is the site's
(gapforge.operator.tuf_client).

A release manager keeps a folder of TUF metadata (`gapforge release ...`,
gapforge.release_manager.repository):

    DIR/metadata/        1.root.json, 2.root.json, ... root.json (the newest), timestamp.json,
                         N.snapshot.json, N.targets.json, N.candidate.json, N.approved.json
    DIR/repository.json  unsigned local settings: thresholds, expiry days, the keys folder, bundles added
    DIR/history.jsonl    append-only log of what was done, when and why
    DIR/staged/          metadata signed by fewer approvers than its threshold, waiting for the rest

Roles: root (k of n offline keys); targets (the release manager: revocations at revoked/<name>/<version>,
and the delegations); candidate (the build keys: candidate/<name>/<version>); approved (the approvers:
approved/<name>/<version>); snapshot and timestamp (one online key). A target's file is the bundle's
SHA256SUMS, so one TUF entry pins every file of the bundle.

Inside the gap, gapforge.operator.tuf_client checks a bundle's SHA256SUMS against metadata carried
beside it (BUNDLE/release/metadata/), from a root pinned once with `gapforge trust init`.
"""

from __future__ import annotations

from gapforge.errors import GapforgeError

CHANNELS = ("candidate", "approved")
"""Delegated roles of the top-level targets role, each a channel a site can require."""
REVOKED = "revoked"
"""Revocations are targets of the top-level targets role at revoked/<name>/<version>."""
TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
ROLES = (*TOP_ROLES, *CHANNELS)
DEFAULT_EXPIRY_DAYS = {
    "timestamp": 21,
    "snapshot": 42,
    "targets": 90,
    "candidate": 90,
    "approved": 90,
    "root": 365,
}
"""Days each role's metadata stays valid: transfers into a gap happen every few weeks."""


class ReleaseError(GapforgeError):
    """The release repository, its keys or the site's trust state cannot do what was asked."""


def target_path(channel: str, name: str, version: str) -> str:
    """`<channel>/<name>/<version>`: where a release is listed (channel may be `revoked`)."""
    return f"{channel}/{name}/{version}"
