"""The signature over SHA256SUMS, checked against the operator's trust anchor (gapforge.bundle.anchor):
the pinned key; or the trusted release root, whose verified metadata names the build keys (and the
bundle must be a release on the site's channel); or, with --insecure only, the bundle's own key."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle import PUBLIC_KEY, RELEASE_DIR, SIGNATURE, SUMS
from gapforge.bundle.anchor import Anchor
from gapforge.bundle.sign import SIGNATURE_SIZE, fingerprint, load_public_key, signature_valid
from gapforge.bundle.verify_report import VerifyReport
from gapforge.errors import BundleError


def _bundled_key(report: VerifyReport) -> Ed25519PublicKey | None:
    bundled = report.bundle / PUBLIC_KEY
    if not bundled.is_file():
        report.add(
            PUBLIC_KEY, "missing, and --insecure asked to use it: pass --key with the release key"
        )
        return None
    try:
        return load_public_key(bundled)
    except BundleError as exc:
        report.add(PUBLIC_KEY, f"unusable: {exc.message}")
        return None


def _release_keys(
    report: VerifyReport, anchor: Anchor, sums: bytes | None
) -> list[Ed25519PublicKey]:
    """The trusted root: the bundle must be a release on the site's channel; the build keys the
    verified repository metadata names are the keys SHA256SUMS.sig may be made with."""
    from gapforge.release.client import check_release

    metadata = anchor.metadata or report.bundle / RELEASE_DIR / "metadata"
    report.key_source = "a build key the trusted release repository names"
    if not metadata.is_dir():
        report.add(
            f"{RELEASE_DIR}/metadata",
            f"missing: the bundle carries no release metadata and none was given ({metadata}). "
            "Ask the release manager for the repository's metadata ('gapforge release export') "
            "and pass --repo METADATA_FOLDER, or verify with --key RELEASE.pub.pem",
        )
        return []
    if sums is None or not report.index:
        return []  # already reported: nothing to look the release up by
    check = check_release(sums, report.index, metadata, channel=anchor.channel)
    report.release = check
    for problem in check.problems:
        report.add("release", problem)
    report.key_source = (
        f"a build key of the release repository (root version {check.root_version}, channel "
        f"{check.channel}, metadata {check.metadata_source})"
    )
    return list(check.build_keys)


def anchored_keys(
    report: VerifyReport, anchor: Anchor, sums: bytes | None
) -> list[Ed25519PublicKey]:
    """The keys SHA256SUMS.sig may be made with, by the anchor: pinned, the release root's build
    keys, or (--insecure) the bundle's own copy, which proves integrity but not origin."""
    report.anchor = anchor.kind
    report.key_pinned = anchor.pinned
    if anchor.kind == "key":
        report.key_source = anchor.source
        keys = list(anchor.keys)
    elif anchor.kind == "root":
        keys = _release_keys(report, anchor, sums)
    else:
        bundled = _bundled_key(report)
        keys = [bundled] if bundled is not None else []
        report.key_source = (
            f"{PUBLIC_KEY} inside the bundle (--insecure: NOT pinned, proves no origin)"
        )
    report.key_fingerprint = ", ".join(fingerprint(key) for key in keys)
    report.public_keys = keys
    return keys


def check_signature(
    report: VerifyReport, keys: list[Ed25519PublicKey], sums: bytes | None
) -> bool | None:
    """True/False: the signature verifies or not; None: it could not be checked (already reported)."""
    path = report.bundle / SIGNATURE
    if not path.is_file():
        report.add(SIGNATURE, "missing: the bundle is unsigned; ask for a signed bundle")
        return None
    if not keys or sums is None:
        return None
    signature = path.read_bytes()
    if len(signature) != SIGNATURE_SIZE:
        report.add(
            SIGNATURE,
            f"{len(signature)} bytes: not an Ed25519 signature ({SIGNATURE_SIZE} raw bytes)",
        )
        return None
    for key in keys:
        if signature_valid(key, sums, signature):
            report.key_fingerprint = fingerprint(key)
            return True
    return False


def blame_signature(report: VerifyReport, sums_bad: list[str]) -> None:
    """The signature failed: if SHA256SUMS also disagrees with the files, SHA256SUMS was altered;
    if every line matches, the signature was altered or made with another key."""
    if sums_bad:
        report.add(
            SUMS,
            f"altered: its signature does not verify and it disagrees with {', '.join(sums_bad[:5])}",
        )
    else:
        report.add(
            SIGNATURE,
            f"does not verify over {SUMS} with key {report.key_fingerprint} ({report.key_source}): "
            "the bundle was signed with another key, or the signature was altered",
        )
