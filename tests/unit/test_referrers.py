"""OCI 1.1 referrers without a real registry: the artifact manifests (deterministic), the referrers
tag index merge (idempotent), references and credentials, and attach/list against a small fake
registry that has the referrers API (the integration test covers one without)."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gapforge.commands.inspect_registry import parse_image_reference
from gapforge.errors import BundleError, GapforgeError
from gapforge.registry import EMPTY_DATA, EMPTY_DIGEST, EMPTY_MEDIA_TYPE, OCI_INDEX, OCI_MANIFEST
from gapforge.registry.client import RegistryClient, sha256_digest, stored_credentials
from gapforge.registry.referrers import (
    CREATED,
    KEY_FINGERPRINT,
    PREDICATE_TYPE,
    PROVENANCE_TYPE,
    SBOM_TYPE,
    SIGNATURE_TYPE,
    TITLE,
    Descriptor,
    Referrer,
    attach_referrers,
    bundle_artifacts,
    fallback_tag,
    index_referrers,
    list_referrers,
    make_artifacts,
    merge_index,
)

SUBJECT = Descriptor(OCI_MANIFEST, "sha256:" + "ab" * 32, 512)
ENVELOPE = json.dumps({
    "payloadType": "application/vnd.in-toto+json", "signatures": [],
    "payload": base64.b64encode(b'{"predicateType": "https://slsa.dev/provenance/v1"}').decode(),
}).encode()  # fmt: skip


def artifacts(
    created: str = "2026-12-01T10:00:00Z", sbom: bytes = b'{"bomFormat":"CycloneDX"}'
) -> list[Any]:
    return make_artifacts(
        SUBJECT, sbom, ENVELOPE, b"sums\n", b"s" * 64, created, "sha256:" + "f" * 64
    )


def test_artifact_manifests_are_oci_1_1_artifacts() -> None:
    sbom, provenance, signature = artifacts()
    assert [a.kind for a in (sbom, provenance, signature)] == ["sbom", "provenance", "signature"]
    manifest = json.loads(signature.manifest)
    assert manifest["mediaType"] == OCI_MANIFEST and manifest["schemaVersion"] == 2
    assert manifest["artifactType"] == SIGNATURE_TYPE
    assert manifest["config"] == {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": 2}
    assert sha256_digest(EMPTY_DATA) == EMPTY_DIGEST and signature.blobs[0] == EMPTY_DATA
    assert manifest["subject"] == {"mediaType": OCI_MANIFEST, "digest": SUBJECT.digest, "size": 512}
    assert [layer[TITLE] for layer in (x["annotations"] for x in manifest["layers"])] == [
        "SHA256SUMS",
        "SHA256SUMS.sig",
    ]
    assert [x["digest"] for x in manifest["layers"]] == [
        sha256_digest(b) for b in signature.blobs[1:]
    ]
    assert manifest["annotations"] == {
        CREATED: "2026-12-01T10:00:00Z",
        KEY_FINGERPRINT: "sha256:" + "f" * 64,
    }
    assert (
        json.loads(provenance.manifest)["annotations"][PREDICATE_TYPE]
        == "https://slsa.dev/provenance/v1"
    )
    assert json.loads(sbom.manifest)["artifactType"] == SBOM_TYPE
    assert provenance.referrer.artifact_type == PROVENANCE_TYPE
    assert signature.referrer.descriptor.size == len(signature.manifest)


def test_same_bundle_same_digests() -> None:
    first, second = artifacts(), artifacts()
    assert [a.manifest for a in first] == [a.manifest for a in second]
    assert [a.referrer for a in first] == [a.referrer for a in second]
    assert artifacts(created="2026-12-02T10:00:00Z")[0].referrer.digest != first[0].referrer.digest
    assert artifacts(sbom=b"{}")[0].referrer.digest != first[0].referrer.digest
    assert artifacts(sbom=b"{}")[2].referrer.digest == first[2].referrer.digest


def test_fallback_index_merge_is_idempotent() -> None:
    referrers = [a.referrer for a in artifacts()]
    index, added = merge_index(None, referrers)
    assert added and index["mediaType"] == OCI_INDEX and index["schemaVersion"] == 2
    assert [m["digest"] for m in index["manifests"]] == [r.digest for r in referrers]
    assert (
        index["manifests"][1]["artifactType"] == PROVENANCE_TYPE
        and index["manifests"][1]["annotations"]
    )
    again, added_again = merge_index(index, referrers + referrers)
    assert not added_again and again == index
    foreign = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + "c" * 64,
        "size": 9,
        "artifactType": "x/y",
    }
    mixed, added = merge_index({**index, "manifests": [foreign]}, referrers[:1])
    assert added and [m["digest"] for m in mixed["manifests"]] == [
        foreign["digest"],
        referrers[0].digest,
    ]
    assert index_referrers(mixed) == [Referrer(Descriptor.parse(foreign)), referrers[0]]
    assert index_referrers({"manifests": [{"digest": "sha256:short"}, "junk"]}) == []


def test_fallback_tag() -> None:
    assert fallback_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registry.local:5000/team/model:1.0", ("registry.local:5000", "team/model", "1.0")),
        ("registry.local:5000/team/model", ("registry.local:5000", "team/model", "latest")),
        ("127.0.0.1:5000/m@sha256:" + "a" * 64, ("127.0.0.1:5000", "m", "sha256:" + "a" * 64)),
    ],
)
def test_parse_image_reference(text: str, expected: tuple[str, str, str]) -> None:
    assert parse_image_reference(text) == expected


@pytest.mark.parametrize("text", ["model", "https://r/m:1", "r/m@sha256:abc"])
def test_parse_image_reference_refuses(text: str) -> None:
    with pytest.raises(GapforgeError, match="--registry"):
        parse_image_reference(text)


def test_stored_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"ops:s3cret").decode()
    config.write_text(json.dumps({"auths": {"https://registry.local:5000/v1/": {"auth": auth}}}))
    assert (
        stored_credentials("registry.local:5000", [tmp_path / "missing.json", config])
        == "ops:s3cret"
    )
    assert stored_credentials("other:5000", [config]) is None


def test_bundle_artifacts_names_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text("{}")
    with pytest.raises(BundleError, match=r"sbom\.cdx\.json: cannot be read"):
        bundle_artifacts(tmp_path, SUBJECT)


# --- a fake registry with the referrers API ---------------------------------------------------------


class FakeRegistry(BaseHTTPRequestHandler):
    """Just enough of distribution spec 1.1 (blobs, manifests, referrers API), kept in memory."""

    blobs: ClassVar[dict[str, bytes]] = {}
    manifests: ClassVar[dict[tuple[str, str], tuple[bytes, str]]] = {}
    puts: ClassVar[list[str]] = []
    route = re.compile(r"^/v2/(?P<repo>.+)/(?P<what>blobs|manifests|referrers)/(?P<ref>[^/?]+)")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        match = self.route.match(self.path)
        if self.path == "/v2/":
            return self._answer(200, b"{}")
        if match is None:
            return self._answer(404)
        repo, what, ref = match["repo"], match["what"], match["ref"]
        if what == "blobs":
            blob = self.blobs.get(ref)
            return self._answer(404) if blob is None else self._answer(200, blob)
        if what == "manifests":
            found = self.manifests.get((repo, ref))
            if found is None:
                return self._answer(
                    404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'
                )
            return self._answer(200, found[0], {"Content-Type": found[1]})
        listed = []
        for (r, key), (data, media_type) in self.manifests.items():
            value = json.loads(data)
            if (
                r == repo
                and key.startswith("sha256:")
                and value.get("subject", {}).get("digest") == ref
            ):
                listed.append({"mediaType": media_type, "digest": key, "size": len(data),
                               "artifactType": value.get("artifactType"), "annotations": value.get("annotations", {})})  # fmt: skip
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}
        return self._answer(200, json.dumps(index).encode(), {"Content-Type": OCI_INDEX})

    def do_POST(self) -> None:
        self._body()
        self._answer(202, headers={"Location": "/upload/1?state=x"})

    def do_PUT(self) -> None:
        data = self._body()
        if self.path.startswith("/upload/"):
            digest = self.path.split("digest=", 1)[1]
            assert sha256_digest(data) == digest.replace("%3A", ":")
            self.blobs[sha256_digest(data)] = data
            return self._answer(201)
        match = self.route.match(self.path)
        assert match is not None and match["what"] == "manifests"
        self.puts.append(match["ref"])
        digest = sha256_digest(data)
        media_type = self.headers["Content-Type"]
        self.manifests[(match["repo"], match["ref"])] = self.manifests[(match["repo"], digest)] = (
            data,
            media_type,
        )
        subject = json.loads(data).get("subject", {}).get("digest")
        self._answer(
            201,
            headers={
                "Docker-Content-Digest": digest,
                **({"OCI-Subject": subject} if subject else {}),
            },
        )


@pytest.fixture
def fake_registry() -> Iterator[str]:
    FakeRegistry.blobs, FakeRegistry.manifests, FakeRegistry.puts = {}, {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_referrers_api_indexes_them_itself(fake_registry: str, tmp_path: Path) -> None:
    """The PUTs answer OCI-Subject: no referrers tag is written; list_referrers asks the API."""
    client = RegistryClient(fake_registry)
    image = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}
    ).encode()
    client.put_manifest("team/model", "1.0", image, OCI_MANIFEST)
    digest = sha256_digest(image)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name, data in {"bundle.json": b'{"created": "2026-12-01T10:00:00Z"}', "sbom.cdx.json": b"{}",
                       "provenance.json": ENVELOPE, "SHA256SUMS": b"", "SHA256SUMS.sig": b"s" * 64}.items():  # fmt: skip
        (bundle / name).write_bytes(data)
    attached = attach_referrers(fake_registry, "team/model", digest, len(image), bundle, None)
    attach_referrers(fake_registry, "team/model", digest, len(image), bundle, None)
    assert fallback_tag(digest) not in FakeRegistry.puts
    assert (
        FakeRegistry.puts.count(attached[0].digest) == 2
    )  # pushed again: the same digest, no copy
    listed = list_referrers(fake_registry, "team/model", digest, None)
    assert sorted(r.digest for r in listed) == sorted(r.digest for r in attached)
    assert {r.kind for r in listed} == {"sbom", "provenance", "signature"}
    with pytest.raises(GapforgeError, match="not 7: pass the size"):
        attach_referrers(fake_registry, "team/model", digest, 7, bundle, None)
    with pytest.raises(GapforgeError, match="push the image first"):
        attach_referrers(fake_registry, "team/model", "sha256:" + "0" * 64, 7, bundle, None)
