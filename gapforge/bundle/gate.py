"""The one trust gate of the operator side: a bundle folder in, one `VerifiedBundle` out, or a
refusal. Every operator command that acts on a bundle (load, run, preflight, deploy, join's result,
diff, inspect, scan) takes its names, digests and paths from the record this returns, never from
the folder's files again.

"Verified" means: SHA256SUMS's signature was checked and proven by a key the anchor names (a pinned
key, or a build key the trusted TUF release metadata names), every file matched its signed line,
and the documents agree with the archive. Anything that cannot decide is a refusal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import SUMS
from gapforge.bundle.anchor import Anchor
from gapforge.bundle.verify_report import VerifyReport
from gapforge.errors import GapforgeError
from gapforge.names import component


class NotVerified(GapforgeError):
    """The bundle failed its check, or its check could not decide: exit 1, every reason named."""

    exit_status = 1

    def __init__(self, report: VerifyReport, command: str) -> None:
        self.report = report
        reasons = "; ".join(f"{p.file}: {p.message}" for p in report.problems[:8])
        if len(report.problems) > 8:
            reasons += f"; and {len(report.problems) - 8} more ('gapforge verify' lists them)"
        if not reasons:
            reasons = "the signature over SHA256SUMS was not proven by a key the trust anchor names"
        super().__init__(
            f"{report.bundle}: not verified, so 'gapforge {command}' will not act on it: {reasons}. "
            "Nothing was written. Ask the release manager for a genuine bundle, or check the "
            "trust anchor ('gapforge trust show', or --key RELEASE.pub.pem)."
        )


@dataclass(frozen=True)
class VerifiedBundle:
    """What the gate proved about one bundle folder; the only source of names and digests for
    the operator commands that follow."""

    folder: Path
    name: str
    """bundle.json's name, a single plain component (gapforge.names.component)."""
    version: str
    """bundle.json's version, a single plain component."""
    index: dict[str, Any]
    """bundle.json, as the signed SHA256SUMS line vouches for it."""
    sums_sha256: str
    """sha256 of the very SHA256SUMS bytes whose signature was proven."""
    manifest_digest: str
    config_digest: str
    """The image ID (the config's digest)."""
    signer: str
    """The fingerprint of the key that made the signature."""
    anchor: str
    """How the key was anchored: `key` (pinned) or `root` (the trusted TUF release root)."""
    report: VerifyReport


def is_proven(report: VerifyReport) -> bool:
    """True only when the signature was proven by an anchored key and nothing else was found."""
    return report.signature_ok and report.anchor in ("key", "root") and not report.problems


def gate(report: VerifyReport, command: str) -> VerifiedBundle:
    """The record of a verify report that proves the bundle, or NotVerified (exit 1)."""
    if not is_proven(report) or report.archive is None:
        raise NotVerified(report, command)
    index = report.index
    sums = (report.bundle / SUMS).read_bytes()
    return VerifiedBundle(
        folder=report.bundle,
        name=component(index.get("name"), f"{report.bundle}/bundle.json: name"),
        version=component(index.get("version"), f"{report.bundle}/bundle.json: version"),
        index=index,
        sums_sha256=hashlib.sha256(sums).hexdigest(),
        manifest_digest=report.archive.manifest_digest,
        config_digest=report.archive.config_digest,
        signer=report.key_fingerprint,
        anchor=report.anchor,
        report=report,
    )


def require_verified(
    folder: Path, anchor: Anchor, command: str, workers: int | None = None
) -> VerifiedBundle:
    """Verify `folder` against `anchor` (a full verify: every file hashed) and return the record,
    or raise NotVerified (exit 1) / BundleError (exit 2, unusable input)."""
    from gapforge.bundle.verify import verify_bundle

    return gate(verify_bundle(folder, anchor, workers), command)
