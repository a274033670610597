"""OCI 1.1 referrers: the bundle's SBOM, provenance and signature attached to the image in the
site's registry, listed and verified from the registry alone.

Each is an artifact manifest (image spec 1.1: the empty config, `artifactType`, `subject` = the
image manifest's descriptor) pushed by its digest:

    sbom        application/vnd.cyclonedx+json          one layer: sbom.cdx.json
    provenance  application/vnd.dsse.envelope.v1+json   one layer: provenance.json (the DSSE
                                                        envelope), its in-toto predicate type
                                                        as an annotation
    signature   application/vnd.gapforge.signature.v1   two layers: SHA256SUMS, SHA256SUMS.sig; the
                                                        signing key's fingerprint as an annotation

Manifests are canonical JSON whose only time is bundle.json's `created`, so the same bundle always
gives the same three digests, and attaching twice adds nothing. A registry with the referrers API
indexes them itself (its PUT answers `OCI-Subject`); for one without, the index at the referrers
tag `sha256-<hex of the image digest>` is read, merged and written back (distribution spec 1.1).

Verification, from the registry alone, is registry/verify.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.bundle import INDEX, PROVENANCE, PUBLIC_KEY, SBOM, SIGNATURE, SUMS
from gapforge.bundle.dsse import envelope_payload_unverified
from gapforge.bundle.sign import fingerprint, load_public_key
from gapforge.errors import BundleError
from gapforge.registry import EMPTY_DATA, EMPTY_DIGEST, EMPTY_MEDIA_TYPE, OCI_INDEX, OCI_MANIFEST
from gapforge.registry.client import (
    Manifest,
    NotFound,
    RegistryClient,
    RegistryError,
    sha256_digest,
)

SBOM_TYPE = "application/vnd.cyclonedx+json"
PROVENANCE_TYPE = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_TYPE = "application/vnd.gapforge.signature.v1"
SUMS_MEDIA_TYPE = "application/vnd.gapforge.sha256sums.v1+text"
SIG_MEDIA_TYPE = "application/vnd.gapforge.ed25519.signature.v1"
KINDS = {SBOM_TYPE: "sbom", PROVENANCE_TYPE: "provenance", SIGNATURE_TYPE: "signature"}
"""artifactType → the name reports give the artifact."""

TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
PREDICATE_TYPE = "in-toto.io/predicate-type"
KEY_FINGERPRINT = "dev.gapforge.signing-key.fingerprint"
MAX_TAG = 128


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces: the same value always gives the same bytes, hence the same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    artifact_type: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as OCI JSON (artifactType and annotations only when set)."""
        value: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            value["artifactType"] = self.artifact_type
        if self.annotations:
            value["annotations"] = dict(self.annotations)
        return value

    @classmethod
    def of(
        cls, media_type: str, data: bytes, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        """The descriptor of `data`."""
        return cls(media_type, sha256_digest(data), len(data), annotations=annotations or {})

    @classmethod
    def parse(cls, value: Any) -> Descriptor:
        """A descriptor from JSON; ValueError when it has no digest, size or media type."""
        if not isinstance(value, dict):
            raise ValueError(f"not a descriptor: {value!r:.80}")
        digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise ValueError(f"descriptor without a sha256 digest: {value!r:.120}")
        if not isinstance(size, int) or size < 0 or not isinstance(media_type, str):
            raise ValueError(f"descriptor without a size or media type: {value!r:.120}")
        annotations = value.get("annotations") or {}
        artifact_type = value.get("artifactType") or ""
        return cls(
            media_type, digest, size, str(artifact_type),
            {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
        )  # fmt: skip


@dataclass(frozen=True)
class Referrer:
    """One artifact attached to an image: its manifest's descriptor, as a referrers index lists it."""

    descriptor: Descriptor

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def artifact_type(self) -> str:
        return self.descriptor.artifact_type

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.descriptor.annotations

    @property
    def kind(self) -> str:
        """`sbom`, `provenance`, `signature`, or `other` (attached by some other tool)."""
        return KINDS.get(self.artifact_type, "other")


@dataclass(frozen=True)
class Artifact:
    """An artifact manifest built from a bundle, and the blobs it names (config first)."""

    kind: str
    manifest: bytes
    blobs: tuple[bytes, ...]

    @property
    def referrer(self) -> Referrer:
        """The descriptor a referrers index lists for this artifact."""
        value = json.loads(self.manifest)
        digest, size = sha256_digest(self.manifest), len(self.manifest)
        annotations = value.get("annotations", {})
        return Referrer(Descriptor(OCI_MANIFEST, digest, size, value["artifactType"], annotations))


def artifact_manifest(
    artifact_type: str, layers: Sequence[Descriptor], subject: Descriptor,
    annotations: Mapping[str, str],
) -> bytes:  # fmt: skip
    """An OCI 1.1 artifact manifest (empty config) referring to `subject`, as canonical JSON."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": Descriptor(EMPTY_MEDIA_TYPE, EMPTY_DIGEST, len(EMPTY_DATA)).to_json(),
        "layers": [layer.to_json() for layer in layers],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return canonical_json(manifest)


def _artifact(
    kind: str, artifact_type: str, files: Sequence[tuple[str, str, bytes]], subject: Descriptor,
    annotations: Mapping[str, str],
) -> Artifact:  # fmt: skip
    layers = [Descriptor.of(media_type, data, {TITLE: name}) for name, media_type, data in files]
    manifest = artifact_manifest(artifact_type, layers, subject, annotations)
    return Artifact(kind, manifest, (EMPTY_DATA, *(data for _, _, data in files)))


def make_artifacts(
    subject: Descriptor, sbom: bytes, provenance: bytes, sums: bytes, signature: bytes,
    created: str = "", key_fingerprint: str = "",
) -> list[Artifact]:  # fmt: skip
    """The three artifacts (sbom, provenance, signature) of a bundle's files, for `subject`."""
    common = {CREATED: created} if created else {}
    predicate = str(envelope_payload_unverified(provenance).get("predicateType", ""))
    return [
        _artifact("sbom", SBOM_TYPE, [(SBOM, SBOM_TYPE, sbom)], subject, common),
        _artifact("provenance", PROVENANCE_TYPE, [(PROVENANCE, PROVENANCE_TYPE, provenance)],
                  subject, {**common, **({PREDICATE_TYPE: predicate} if predicate else {})}),
        _artifact("signature", SIGNATURE_TYPE,
                  [(SUMS, SUMS_MEDIA_TYPE, sums), (SIGNATURE, SIG_MEDIA_TYPE, signature)], subject,
                  {**common, **({KEY_FINGERPRINT: key_fingerprint} if key_fingerprint else {})}),
    ]  # fmt: skip


def bundle_artifacts(bundle: Path, subject: Descriptor) -> list[Artifact]:
    """The three artifacts of the bundle folder `bundle` (its files as they are: verify it first)."""
    data: dict[str, bytes] = {}
    for name in (INDEX, SBOM, PROVENANCE, SUMS, SIGNATURE):
        try:
            data[name] = (bundle / name).read_bytes()
        except OSError as exc:
            raise BundleError(
                f"{bundle / name}: cannot be read ({exc.strerror}): attach from a whole bundle "
                "folder (dist/<recipe>-<version>), verified with 'gapforge verify'"
            ) from None
    try:
        index = json.loads(data[INDEX])
    except ValueError as exc:
        raise BundleError(
            f"{bundle / INDEX}: not valid JSON ({exc}): run 'gapforge verify'"
        ) from None
    key_fingerprint = str(index.get("signing_key", {}).get("fingerprint", ""))
    if not key_fingerprint and (bundle / PUBLIC_KEY).is_file():
        key_fingerprint = fingerprint(load_public_key(bundle / PUBLIC_KEY))
    return make_artifacts(
        subject, data[SBOM], data[PROVENANCE], data[SUMS], data[SIGNATURE],
        str(index.get("created") or ""), key_fingerprint,
    )  # fmt: skip


def fallback_tag(subject: str) -> str:
    """The referrers tag schema's tag for a digest: `sha256:<hex>` → `sha256-<hex>`."""
    return subject.replace(":", "-")[:MAX_TAG]


def empty_index() -> dict[str, Any]:
    """An OCI image index listing nothing: the referrers tag before anything is attached."""
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def merge_index(
    index: Mapping[str, Any] | None, referrers: Sequence[Referrer]
) -> tuple[dict[str, Any], bool]:
    """`index` (None: none yet) with every referrer it does not list yet appended, and whether
    anything was added: merging the same referrers twice adds nothing."""
    merged = {**empty_index(), **(index or {})}
    merged["schemaVersion"], merged["mediaType"] = 2, OCI_INDEX
    manifests = [m for m in merged.get("manifests") or [] if isinstance(m, dict)]
    present = {m.get("digest") for m in manifests}
    for referrer in referrers:
        if referrer.digest not in present:
            manifests.append(referrer.descriptor.to_json())
            present.add(referrer.digest)
    added = len(manifests) != len(merged.get("manifests") or [])
    merged["manifests"] = manifests
    return merged, added


def index_referrers(index: Mapping[str, Any]) -> list[Referrer]:
    """The manifests an index lists (malformed entries left out)."""
    referrers = []
    for entry in index.get("manifests") or []:
        try:
            referrers.append(Referrer(Descriptor.parse(entry)))
        except ValueError:
            continue
    return referrers


def _fallback_index(client: RegistryClient, repo: str, subject: str) -> dict[str, Any] | None:
    tag = fallback_tag(subject)
    try:
        manifest = client.get_manifest(repo, tag, accept=[OCI_INDEX])
    except NotFound:
        return None
    value = manifest.json()
    if value.get("mediaType", manifest.media_type) != OCI_INDEX:
        raise RegistryError(
            f"{client.registry}/{repo}:{tag} holds a {manifest.media_type or 'manifest'}, not the "
            f"referrers index of {subject} the referrers tag schema puts there: remove that tag "
            "and attach again"
        )
    return value


def attach_referrers(
    registry: str, repo: str, subject_digest: str, subject_size: int, bundle: Path,
    tls_verify: bool | None, creds: str | None = None,
) -> list[Referrer]:  # fmt: skip
    """Push the bundle's SBOM, provenance and signature as OCI 1.1 referrers of the image
    `repo@subject_digest` (already in the registry); index them in the referrers tag where the
    registry does not itself. Idempotent."""
    client = RegistryClient(registry, tls_verify, creds)
    try:
        image = client.get_manifest(repo, subject_digest)
    except NotFound:
        raise RegistryError(
            f"{registry}/{repo}@{subject_digest} is not in the registry: push the image first "
            "('gapforge load BUNDLE --to HOST/REPO'), then attach"
        ) from None
    if image.size != subject_size:
        raise RegistryError(
            f"{registry}/{repo}@{subject_digest}: its manifest is {image.size} bytes, not "
            f"{subject_size}: pass the size of the image manifest itself"
        )
    subject = Descriptor(image.media_type or OCI_MANIFEST, subject_digest, subject_size)
    artifacts = bundle_artifacts(bundle, subject)
    indexed = True
    for artifact in artifacts:
        for blob in artifact.blobs:
            client.push_blob(repo, blob)
        digest = artifact.referrer.digest
        put = client.put_manifest(repo, digest, artifact.manifest, OCI_MANIFEST)
        if put.digest != digest:
            raise RegistryError(
                f"registry {registry} stored the {artifact.kind} artifact as {put.digest}, not "
                f"{digest}: it rewrites manifests; use a registry that keeps OCI manifests as pushed"
            )
        indexed = indexed and put.subject == subject_digest
    referrers = [artifact.referrer for artifact in artifacts]
    if not indexed:  # no OCI-Subject: the registry has no referrers API (distribution spec 1.1)
        index, added = merge_index(_fallback_index(client, repo, subject_digest), referrers)
        if added:
            client.put_manifest(
                repo, fallback_tag(subject_digest), canonical_json(index), OCI_INDEX
            )
    return referrers


def resolve_image(client: RegistryClient, repo: str, reference: str) -> Manifest:
    """The image manifest at a tag or digest; RegistryError naming the fix when there is none."""
    try:
        return client.get_manifest(repo, reference)
    except NotFound:
        sep = "@" if reference.startswith("sha256:") else ":"
        raise RegistryError(
            f"{client.registry}/{repo}{sep}{reference}: no such image in the registry: check the "
            f"repository and tag ('skopeo list-tags docker://{client.registry}/{repo}'), or push "
            "it with 'gapforge load BUNDLE --to HOST/REPO'"
        ) from None


def listed_referrers(client: RegistryClient, repo: str, subject: str) -> tuple[list[Referrer], str]:
    """What is attached to `subject`, and where the list came from (`referrers API` or the tag)."""
    index = client.referrers(repo, subject)
    if index is not None:
        return index_referrers(index), "referrers API"
    fallback = _fallback_index(client, repo, subject)
    return index_referrers(fallback or {}), f"tag {fallback_tag(subject)}"


def list_referrers(
    registry: str, repo: str, subject_digest: str, tls_verify: bool | None,
    creds: str | None = None,
) -> list[Referrer]:  # fmt: skip
    """What is attached to `repo@subject_digest`: the referrers API's answer, else the index at the
    referrers tag (empty when neither lists anything)."""
    return listed_referrers(RegistryClient(registry, tls_verify, creds), repo, subject_digest)[0]
