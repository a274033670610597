"""The one trust gate of the operator side: a bundle folder in, one `VerifiedBundle` out, or a
refusal. Every operator command that acts on a bundle (load, run, preflight, deploy, join's result,
diff, inspect, scan) takes its names, digests and paths from the record this returns, never from
the folder's files again.

"Verified" means: SHA256SUMS's signature was checked and proven by a key the anchor names (a pinned
key, or a build key the trusted TUF release metadata names), every file matched its signed line,
and the documents agree with the archive. Anything that cannot decide is a refusal. `--insecure`
(the bundle's own key) proves integrity only and never passes the gate: a command that offers
--insecure handles that case itself, loudly, and writes no receipt for it.

The record's names and digests come from the signed bundle.json as verify parsed and shape-checked
it (gapforge.bundle.documents.BUNDLE_INDEX), never from a second read of the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.errors import GapforgeError
from gapforge.names import component
from gapforge.operator.anchor import Anchor
from gapforge.operator.verify_report import VerifyReport


class NotVerified(GapforgeError):
    """The bundle failed its check, or its check could not decide: exit 1, every reason named."""

    exit_status = 1

    def __init__(self, report: VerifyReport, command: str) -> None:
        self.report = report
        self.exit_status = report.exit_status or 1  # 2 where an input could not be judged
        reasons = "; ".join(f"{p.file}: {p.message}" for p in report.problems[:8])
        if len(report.problems) > 8:
            reasons += f"; and {len(report.problems) - 8} more ('gapforge verify' lists them)"
        if not report.signature_ok or report.anchor == "insecure":
            reasons = (reasons + "; " if reasons else "") + (
                "the signature over SHA256SUMS was not proven by a key the trust anchor names"
                + (
                    " (--insecure checks integrity only, never origin)"
                    if report.anchor == "insecure"
                    else ""
                )
            )
        reasons = " ".join(reasons.split())  # one paragraph, whatever a message held
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
    anchor_identity: str = ""
    """The anchor as a receipt binds it (gapforge.operator.anchor.Anchor.identity)."""

    @property
    def ref(self) -> str:
        """The image reference bundle.json names ('' when none): a tag, given only after the ID."""
        return str(self.index["image"].get("ref") or "")

    @property
    def profile(self) -> str:
        return str(self.index["image"].get("profile") or "")

    @property
    def archive_hashed(self) -> bool:
        """Whether the archive's bytes were hashed too: `require_verified` always; the lighter
        check of run/preflight/inspect (gapforge.operator.verify.authenticate_index) never, since
        they act on the image ID the signed bundle.json names, a content address."""
        return self.report.archive_hashed


def is_proven(report: VerifyReport) -> bool:
    """True only when the signature was proven by an anchored key and nothing else was found."""
    return report.authenticated and bool(report.index) and bool(report.sums_sha256)


def gate(report: VerifyReport, command: str) -> VerifiedBundle:
    """The record of a verify report that proves the bundle, or NotVerified (exit 1; 2 where an
    input could not be judged). UnsafeName (exit 2) if its name or version is not one component."""
    if not is_proven(report) or report.archive is None:
        raise NotVerified(report, command)
    index = report.index
    image = index["image"]  # shape-checked by verify (gapforge.bundle.documents.BUNDLE_INDEX)
    return VerifiedBundle(
        folder=report.bundle,
        name=component(index["name"], f"{report.bundle}/bundle.json: name"),
        version=component(index["version"], f"{report.bundle}/bundle.json: version"),
        index=index,
        sums_sha256=report.sums_sha256,
        manifest_digest=str(image["manifest_digest"]),
        config_digest=str(image["config_digest"]),
        signer=report.key_fingerprint,
        anchor=report.anchor,
        report=report,
        anchor_identity=report.anchor_identity,
    )


def require_verified(
    folder: Path, anchor: Anchor, command: str, workers: int | None = None
) -> VerifiedBundle:
    """Verify `folder` against `anchor` (a full verify: every file hashed) and return the record,
    or raise NotVerified (exit 1) / BundleError (exit 2, unusable input)."""
    from gapforge.operator.verify import verify_bundle

    return gate(verify_bundle(folder, anchor, workers), command)
