"""The referrers attached to an image, verified from the registry alone (`gapforge inspect-registry
--key`).

Verification trusts nothing the registry says: the signature artifact's SHA256SUMS.sig must verify
with the operator's key, and the SBOM and provenance attached must be the very files that signed
SHA256SUMS lists; the provenance's own DSSE signature and its subject (the image digest) are
checked too. Every check is reported; none raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle import PROVENANCE, SBOM, SIGNATURE, SUMS
from gapforge.bundle.provenance import read_provenance, subject_digest
from gapforge.bundle.sign import fingerprint, signature_valid
from gapforge.bundle.sums import parse_sums
from gapforge.registry import OCI_MANIFEST
from gapforge.registry.client import RegistryClient, RegistryError, sha256_digest
from gapforge.registry.referrers import (
    KEY_FINGERPRINT,
    TITLE,
    Descriptor,
    Referrer,
    listed_referrers,
    resolve_image,
)


@dataclass(frozen=True)
class RegistryCheck:
    name: str
    ok: bool
    detail: str


@dataclass
class RegistryReport:
    registry: str
    repo: str
    reference: str
    """As the operator named it: a tag or a digest."""
    digest: str = ""
    """The image manifest's digest the reference resolved to."""
    listed_by: str = ""
    """`referrers API` or `tag sha256-<hex>`."""
    referrers: list[Referrer] = field(default_factory=list)
    checks: list[RegistryCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[str]:
        """The names of the checks that failed, each once, in order."""
        return list(dict.fromkeys(check.name for check in self.checks if not check.ok))

    def add(self, name: str, ok: bool, detail: str) -> None:
        """Record one check."""
        self.checks.append(RegistryCheck(name, ok, detail))


@dataclass
class _Fetched:
    referrer: Referrer
    manifest: dict[str, Any]
    files: dict[str, bytes]
    """Layer title → bytes, for the layers whose bytes matched their digest."""


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _fetch(
    client: RegistryClient, repo: str, image: str, referrer: Referrer, report: RegistryReport
) -> _Fetched | None:
    """The artifact's manifest and its layers, each checked against its digest and subject."""
    name, where = referrer.kind, f"{_short(referrer.digest)}"
    try:
        manifest = client.get_manifest(repo, referrer.digest, accept=[OCI_MANIFEST]).json()
    except RegistryError as exc:
        report.add(f"{name} manifest", False, f"{where}: {exc}")
        return None
    subject = manifest.get("subject", {}) if isinstance(manifest.get("subject"), dict) else {}
    problems = []
    if subject.get("digest") != image:
        problems.append(f"its subject is {subject.get('digest')}, not the image {image}")
    if manifest.get("artifactType", "") != referrer.artifact_type:
        problems.append(
            f"its artifactType {manifest.get('artifactType')!r} is not the listed {referrer.artifact_type!r}"
        )
    files: dict[str, bytes] = {}
    for entry in manifest.get("layers") or []:
        try:
            layer = Descriptor.parse(entry)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        title = layer.annotations.get(TITLE, layer.digest)
        try:
            data = client.get_blob(repo, layer.digest)
        except RegistryError as exc:
            problems.append(f"{title}: {exc}")
            continue
        if sha256_digest(data) != layer.digest or len(data) != layer.size:
            problems.append(
                f"{title}: the registry's blob is sha256:{hashlib.sha256(data).hexdigest()} "
                f"({len(data)} bytes), not {layer.digest} ({layer.size} bytes) as the manifest says"
            )
            continue
        files[title] = data
    detail = "; ".join(problems) or f"{where}: subject and every blob match their digests"
    report.add(f"{name} blobs", not problems, detail if not problems else f"{where}: {detail}")
    return _Fetched(referrer, manifest, files) if not problems else None


def _check_signature(
    fetched: _Fetched, keys: Sequence[Ed25519PublicKey], report: RegistryReport
) -> dict[str, str]:
    """The lines of the artifact's SHA256SUMS (name → hex) when its signature verifies, else {}."""
    where = _short(fetched.referrer.digest)
    sums, signature = fetched.files.get(SUMS), fetched.files.get(SIGNATURE)
    if sums is None or signature is None:
        report.add("signature", False, f"{where}: it has no {SUMS} or no {SIGNATURE} layer")
        return {}
    if not keys:
        report.add("signature", False, f"{where}: no key to check it with: pass --key PUB.pem")
        return {}
    signer = next((key for key in keys if signature_valid(key, sums, signature)), None)
    if signer is None:
        claimed = fetched.referrer.annotations.get(KEY_FINGERPRINT, "not said")
        named = ", ".join(fingerprint(key) for key in keys)
        report.add("signature", False,
                   f"{where}: {SIGNATURE} does not verify with key {named} (the artifact says it "
                   f"was signed by {claimed}): another key signed it, or {SUMS} was altered")  # fmt: skip
        return {}
    lines, problems = parse_sums(sums.decode("utf-8", "replace"))
    if problems:
        report.add("signature", False, f"{where}: {SUMS}: {'; '.join(problems[:3])}")
        return {}
    report.add("signature", True, f"{where}: {SIGNATURE} by {fingerprint(signer)}")
    return {line.name: line.sha256 for line in lines}


def _check_signed(kind: str, name: str, fetched: _Fetched, signed: dict[str, str]) -> str:
    """Why the artifact's file `name` is not the one the signed SHA256SUMS lists, or ''."""
    data = fetched.files.get(name)
    if data is None:
        return f"it has no {name} layer"
    if not signed:
        return f"no signature artifact verifies, so this {kind} cannot be trusted"
    actual = hashlib.sha256(data).hexdigest()
    if signed.get(name) != actual:
        return (
            f"its {name} is sha256:{actual}, not the sha256:{signed.get(name, '(none)')} the "
            f"signed {SUMS} lists: it is not the bundle's {kind}"
        )
    return ""


def verify_referrers(
    registry: str, repo: str, reference: str, keys: Sequence[Ed25519PublicKey],
    tls_verify: bool | None, creds: str | None = None,
) -> RegistryReport:  # fmt: skip
    """Check what is attached to `repo:reference` (a tag or a digest) against `keys`: every blob
    against its digest, the signature, the SBOM and provenance against the signed SHA256SUMS, the
    provenance's DSSE signature and subject. Every check is reported, none raises; RegistryError
    only when the registry cannot be reached or has no image at `reference`."""
    client = RegistryClient(registry, tls_verify, creds)
    report = RegistryReport(registry, repo, reference)
    image = resolve_image(client, repo, reference)
    report.digest = image.digest
    report.add("image", True, f"{repo}{'@' if reference.startswith('sha256:') else ':'}{reference} is {image.digest}")  # fmt: skip
    report.referrers, report.listed_by = listed_referrers(client, repo, image.digest)
    fetched: dict[str, list[_Fetched]] = {"signature": [], "sbom": [], "provenance": []}
    for referrer in report.referrers:
        if referrer.kind in fetched:
            one = _fetch(client, repo, image.digest, referrer, report)
            if one is not None:
                fetched[referrer.kind].append(one)
    for kind in fetched:
        if not any(r.kind == kind for r in report.referrers):
            report.add(kind, False, f"no {kind} artifact is attached (listed by {report.listed_by}): "
                       "attach the bundle's with 'gapforge load BUNDLE --to HOST/REPO'")  # fmt: skip
    signed: dict[str, str] = {}
    for one in fetched["signature"]:
        signed |= _check_signature(one, keys, report)
    for one in fetched["sbom"]:
        problem = _check_signed("sbom", SBOM, one, signed)
        where = _short(one.referrer.digest)
        report.add("sbom", not problem, f"{where}: {problem or f'{SBOM} is the one the signed {SUMS} lists'}")  # fmt: skip
    for one in fetched["provenance"]:
        report.add("provenance", *_check_provenance(one, keys, signed, image.digest))
    return report


def _check_provenance(
    fetched: _Fetched, keys: Sequence[Ed25519PublicKey], signed: dict[str, str], image: str
) -> tuple[bool, str]:
    where = _short(fetched.referrer.digest)
    problem = _check_signed("provenance", PROVENANCE, fetched, signed)
    if problem:
        return False, f"{where}: {problem}"
    statement, problems = read_provenance(fetched.files[PROVENANCE], keys)
    if statement is None or problems:
        return False, f"{where}: {'; '.join(problems)}"
    named = subject_digest(statement)
    if named != image:
        return False, f"{where}: its subject is {named}, not the image {image}"
    return True, f"{where}: DSSE signature ok, subject is the image, listed in the signed {SUMS}"
