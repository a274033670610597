"""OCI 1.1 referrers against a real registry (Debian's docker-registry, distribution 2.8: no referrers
API, so the referrers tag schema): attach a synthetic bundle's SBOM, provenance and signature to an
image pushed by gapforge's own client, list them, verify them, and catch a wrong key and an SBOM
that is not the signed one. Needs no Docker engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gapforge.bundle import INDEX, PROVENANCE, SBOM, SIGNATURE, SUMS
from gapforge.bundle.dsse import sign_envelope
from gapforge.bundle.provenance import (
    BUILD_TYPE,
    BUILDER_ID,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
)
from gapforge.bundle.sign import SigningKey, sign
from gapforge.bundle.sums import render_sums
from gapforge.commands.inspect_registry import cmd_inspect_registry, inspect_registry_arguments
from gapforge.hashing import sha256_file
from gapforge.registry import EMPTY_DATA, EMPTY_DIGEST, EMPTY_MEDIA_TYPE, OCI_INDEX, OCI_MANIFEST
from gapforge.registry.client import RegistryClient, RegistryError, sha256_digest
from gapforge.registry.referrers import (
    Descriptor,
    attach_referrers,
    canonical_json,
    fallback_tag,
    list_referrers,
    make_artifacts,
    merge_index,
)
from gapforge.registry.verify import verify_referrers

pytestmark = pytest.mark.integration


def push_image(client: RegistryClient, repo: str, tag: str, content: bytes) -> tuple[str, int]:
    """A tiny OCI image (empty config, one layer) pushed by tag; its manifest digest and size."""
    client.push_blob(repo, EMPTY_DATA)
    layer = client.push_blob(repo, content)
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": len(content)}],
    })  # fmt: skip
    client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
    return sha256_digest(manifest), len(manifest)


def write_bundle(folder: Path, key: SigningKey, image: str, digest: str) -> Path:
    """The files of a bundle that referrers use, signed with `key`, the provenance naming `digest`."""
    folder.mkdir(parents=True)
    statement = {
        "_type": STATEMENT_TYPE, "predicateType": PREDICATE_TYPE,
        "subject": [{"name": image, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicate": {"buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": {}},
                      "runDetails": {"builder": {"id": BUILDER_ID}}},
    }  # fmt: skip
    (folder / PROVENANCE).write_bytes(sign_envelope(canonical_json(statement), PAYLOAD_TYPE, key))
    # the image's name in it: blobs are shared across repositories, and one test alters its SBOM blob
    sbom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "components": [{"name": "tiny", "description": image}],
    }
    (folder / SBOM).write_text(json.dumps(sbom))
    index = {"name": "tiny", "version": "1.0", "created": "2026-12-01T10:00:00Z",
             "signing_key": {"fingerprint": key.fingerprint}}  # fmt: skip
    (folder / INDEX).write_text(json.dumps(index))
    sums = render_sums({name: sha256_file(folder / name) for name in (INDEX, SBOM, PROVENANCE)})
    (folder / SUMS).write_bytes(sums)
    (folder / SIGNATURE).write_bytes(sign(key, sums))
    return folder


@pytest.fixture
def image(
    local_registry: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, str, int, Path, SigningKey]:
    """A fresh repository (named after the test) holding one image, and its signed bundle."""
    repo = f"team/{request.node.name.replace('_', '-')}"
    client = RegistryClient(local_registry)
    digest, size = push_image(client, repo, "1.0", request.node.name.encode())
    key = SigningKey(Ed25519PrivateKey.generate(), tmp_path / "release.key")
    bundle = write_bundle(tmp_path / "bundle", key, f"{local_registry}/{repo}:1.0", digest)
    return repo, digest, size, bundle, key


def test_attach_list_verify(
    local_registry: str, image: tuple[str, str, int, Path, SigningKey]
) -> None:
    repo, digest, size, bundle, key = image
    attached = attach_referrers(local_registry, repo, digest, size, bundle, None)
    assert [r.kind for r in attached] == ["sbom", "provenance", "signature"]
    assert attached == attach_referrers(
        local_registry, repo, digest, size, bundle, None
    )  # idempotent
    listed = list_referrers(local_registry, repo, digest, None)
    assert sorted(r.digest for r in listed) == sorted(r.digest for r in attached)  # nothing twice
    by_kind = {r.kind: r for r in listed}
    assert by_kind["provenance"].annotations["in-toto.io/predicate-type"] == PREDICATE_TYPE
    assert (
        by_kind["signature"].annotations["dev.gapforge.signing-key.fingerprint"] == key.fingerprint
    )
    assert all(
        r.annotations["org.opencontainers.image.created"] == "2026-12-01T10:00:00Z" for r in listed
    )

    for reference in ("1.0", digest):
        report = verify_referrers(local_registry, repo, reference, [key.private.public_key()], None)
        assert report.ok, report.checks
        assert report.digest == digest
        assert (
            report.listed_by == f"tag {fallback_tag(digest)}"
        )  # distribution 2.8: no referrers API
        assert {c.name for c in report.checks} >= {"signature", "sbom", "provenance"}


def test_wrong_key_names_the_signature(
    local_registry: str, image: tuple[str, str, int, Path, SigningKey]
) -> None:
    repo, digest, size, bundle, _key = image
    attach_referrers(local_registry, repo, digest, size, bundle, None)
    other = Ed25519PrivateKey.generate().public_key()
    report = verify_referrers(local_registry, repo, "1.0", [other], None)
    assert not report.ok
    assert report.failed[0] == "signature"
    signature = next(c for c in report.checks if c.name == "signature")
    assert "does not verify" in signature.detail


def test_sbom_not_the_signed_one_is_caught(
    local_registry: str, image: tuple[str, str, int, Path, SigningKey]
) -> None:
    repo, digest, size, bundle, key = image
    attached = attach_referrers(local_registry, repo, digest, size, bundle, None)
    # another SBOM, attached to the same image beside the real one, listed in the referrers tag
    subject = Descriptor(OCI_MANIFEST, digest, size)
    forged = make_artifacts(subject, b'{"bomFormat": "CycloneDX", "components": []}',
                            (bundle / PROVENANCE).read_bytes(), (bundle / SUMS).read_bytes(),
                            (bundle / SIGNATURE).read_bytes())[0]  # fmt: skip
    client = RegistryClient(local_registry)
    for blob in forged.blobs:
        client.push_blob(repo, blob)
    client.put_manifest(repo, forged.referrer.digest, forged.manifest, OCI_MANIFEST)
    tag = fallback_tag(digest)
    index, added = merge_index(client.get_manifest(repo, tag).json(), [forged.referrer])
    assert added
    client.put_manifest(repo, tag, canonical_json(index), OCI_INDEX)

    assert len(list_referrers(local_registry, repo, digest, None)) == len(attached) + 1
    report = verify_referrers(local_registry, repo, "1.0", [key.private.public_key()], None)
    assert report.failed == ["sbom"]
    bad = [c for c in report.checks if c.name == "sbom" and not c.ok]
    assert len(bad) == 1 and forged.referrer.digest.removeprefix("sha256:")[:12] in bad[0].detail
    assert "not the sha256:" in bad[0].detail


def test_blob_tampered_in_the_registry_is_caught(
    local_registry: str, image: tuple[str, str, int, Path, SigningKey], tmp_path: Path
) -> None:
    """The registry's storage altered under the SBOM layer: the blob no longer matches its digest."""
    repo, digest, size, bundle, key = image
    attached = attach_referrers(local_registry, repo, digest, size, bundle, None)
    sbom = next(r for r in attached if r.kind == "sbom")
    client = RegistryClient(local_registry)
    layer = json.loads(client.get_manifest(repo, sbom.digest).data)["layers"][0]["digest"]
    # distribution's filesystem layout: <root>/docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data
    roots = list(
        tmp_path.parent.glob(
            f"registry*/data/docker/registry/v2/blobs/sha256/{layer[7:9]}/{layer[7:]}/data"
        )
    )
    if not roots:
        pytest.skip("the registry's storage folder was not found")
    roots[0].write_bytes(roots[0].read_bytes().replace(b"tiny", b"evil"))
    report = verify_referrers(local_registry, repo, digest, [key.private.public_key()], None)
    assert "sbom blobs" in report.failed


def test_inspect_registry_cli(
    local_registry: str,
    image: tuple[str, str, int, Path, SigningKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from gapforge.bundle.sign import public_pem

    repo, digest, size, bundle, key = image
    attach_referrers(local_registry, repo, digest, size, bundle, None)
    (tmp_path / "release.pub.pem").write_bytes(public_pem(key.private.public_key()))
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    inspect_registry_arguments(parser)
    args = parser.parse_args(
        [
            "--registry",
            f"{local_registry}/{repo}:1.0",
            "--key",
            str(tmp_path / "release.pub.pem"),
            "--json",
        ]
    )
    assert cmd_inspect_registry(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] and out["digest"] == digest and len(out["referrers"]) == 3
    args = parser.parse_args(["--registry", f"{local_registry}/{repo}@{digest}"])
    assert cmd_inspect_registry(args) == 0  # no key: listed, not verified
    assert "not verified" in capsys.readouterr().err
    other = tmp_path / "other.pub.pem"
    other.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    args = parser.parse_args(["--registry", f"{local_registry}/{repo}:1.0", "--key", str(other)])
    assert cmd_inspect_registry(args) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "signature" in err and "provenance" in err


def test_unreachable_registry_names_the_fix() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RegistryError, match=r"cannot be reached.*check that the registry runs"):
        list_referrers(f"127.0.0.1:{port}", "team/model", "sha256:" + "0" * 64, None)


def test_missing_image_names_the_fix(local_registry: str) -> None:
    with pytest.raises(RegistryError, match="no such image in the registry: check the repository"):
        verify_referrers(local_registry, "team/absent", "1.0", [], None)
