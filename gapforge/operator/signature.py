"""The signature over SHA256SUMS, checked against the operator's trust anchor (gapforge.operator.anchor):
the pinned key; or the trusted release root, whose verified metadata names the build keys (and the
bundle must be a release on the site's channel); or, with --insecure only, the bundle's own key.

Fail closed: every way this cannot decide (no SHA256SUMS, no bundle.json to look the release up
by, no metadata, no key, an unreadable key, a signature file that is a link, missing, or not 64
bytes) adds a refusal to the report, so `VerifyReport.ok` can never be true without a signature that
verified. Files are read without following links (gapforge.names)."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle import INDEX, PUBLIC_KEY, RELEASE_DIR, SIGNATURE, SUMS
from gapforge.bundle.documents import read_bytes_no_follow
from gapforge.bundle.sign import SIGNATURE_SIZE, fingerprint, signature_valid
from gapforge.errors import GapforgeError
from gapforge.names import UnsafeName, no_links
from gapforge.operator.anchor import Anchor
from gapforge.operator.verify_report import VerifyReport


def read_signed_file(report: VerifyReport, name: str, limit: int) -> bytes | None:
    """`name` in the bundle, read without following a link; None (and a refusal) when it is
    missing, a link or unreadable."""
    path = report.bundle / name
    try:
        no_links(report.bundle, path, f"{report.bundle}/{name}")
        return read_bytes_no_follow(path, limit)
    except FileNotFoundError:
        return None
    except UnsafeName:
        report.refuse(name, "not a regular file (a symbolic link, a device or a folder): refused")
    except (OSError, ValueError) as exc:
        report.refuse(name, f"unreadable ({exc})")
    return None


def _bundled_key(report: VerifyReport) -> Ed25519PublicKey | None:
    data = read_signed_file(report, PUBLIC_KEY, 64 * 1024)
    if data is None:
        if not any(p.file == PUBLIC_KEY for p in report.problems):
            report.refuse(
                PUBLIC_KEY,
                "missing, and --insecure asked to use it: pass --key with the release key",
            )
        return None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        report.refuse(PUBLIC_KEY, "unusable: not a PEM public key")
        return None
    if not isinstance(key, Ed25519PublicKey):
        report.refuse(PUBLIC_KEY, f"unusable: a {type(key).__name__}, not an Ed25519 key")
        return None
    return key


def _release_keys(
    report: VerifyReport, anchor: Anchor, sums: bytes | None
) -> list[Ed25519PublicKey]:
    """The trusted root: the bundle must be a release on the site's channel; the build keys the
    verified repository metadata names are the keys SHA256SUMS.sig may be made with. Anything
    that stops the look-up is a refusal (exit 2), never an empty list on its own."""
    from gapforge.operator.tuf_client import check_release

    metadata = anchor.metadata or report.bundle / RELEASE_DIR / "metadata"
    report.key_source = "a build key the trusted release repository names"
    if not metadata.is_dir() or metadata.is_symlink():
        report.refuse(
            f"{RELEASE_DIR}/metadata",
            f"missing: the bundle carries no release metadata and none was given ({metadata}). "
            "Ask the release manager for the repository's metadata ('gapforge release export') "
            "and pass --repo METADATA_FOLDER, or verify with --key RELEASE.pub.pem",
        )
        return []
    if sums is None:
        report.refuse(SUMS, "missing: there is nothing to look the release up by")
        return []
    if not report.index:
        report.refuse(
            INDEX,
            "missing or malformed: the release cannot be looked up by its name and version, so "
            "no build key can be trusted for it",
        )
        return []
    try:
        check = check_release(sums, report.index, metadata, channel=anchor.channel)
    except GapforgeError as exc:
        report.refuse("release", exc.message)
        return []
    report.release = check
    for problem in check.problems:
        if check.build_keys:  # the metadata verified: a release it does not vouch for failed
            report.add("release", problem)
        else:  # the metadata itself did not verify: nothing can be decided from it
            report.refuse("release", problem)
    report.key_source = (
        f"a build key of the release repository (root version {check.root_version}, channel "
        f"{check.channel}, metadata {check.metadata_source})"
    )
    if not check.build_keys and not check.problems:
        report.refuse("release", "the verified release metadata names no build key")
    return list(check.build_keys)


def anchored_keys(
    report: VerifyReport, anchor: Anchor, sums: bytes | None
) -> list[Ed25519PublicKey]:
    """The keys SHA256SUMS.sig may be made with, by the anchor: pinned, the release root's build
    keys, or (--insecure) the bundle's own copy, which proves integrity but not origin."""
    report.anchor = anchor.kind
    report.anchor_identity = anchor.identity
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
    """True/False: the signature verifies or not; None: it could not be checked (a refusal is in
    the report, always)."""
    signature = read_signed_file(report, SIGNATURE, SIGNATURE_SIZE + 1)
    if signature is None:
        if not any(p.file == SIGNATURE for p in report.problems):
            report.refuse(SIGNATURE, "missing: the bundle is unsigned; ask for a signed bundle")
        return None
    if len(signature) != SIGNATURE_SIZE:
        size = f"{len(signature)} bytes" if len(signature) <= SIGNATURE_SIZE else "over 64 bytes"
        report.refuse(
            SIGNATURE, f"{size}: not an Ed25519 signature ({SIGNATURE_SIZE} raw bytes): refused"
        )
        return None
    if sums is None:
        report.refuse(SIGNATURE, f"cannot be checked: {SUMS} is missing or unreadable")
        return None
    if not keys:
        report.refuse(
            SIGNATURE,
            "cannot be checked: the trust anchor gave no key to check it with (see the problems "
            "above); an unchecked signature proves nothing, so the bundle is refused",
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
