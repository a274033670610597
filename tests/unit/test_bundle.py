"""The bundle's documents and writer on a small synthetic image: SBOM (CycloneDX 1.6 schema),
provenance shape, the RUNBOOK against its golden file, atomic writing, and verify's checks."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from gapforge.bundle import PRETEST, PROVENANCE, PUBLIC_KEY, SBOM, SIGNATURE, SUMS
from gapforge.bundle.dsse import open_envelope, sign_envelope
from gapforge.bundle.provenance import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    build_statement,
    read_provenance,
    render_provenance,
    shape_problems,
    subject_digest,
)
from gapforge.bundle.runbook import render_runbook, runbook_context
from gapforge.bundle.sbom import image_digests, render_sbom
from gapforge.bundle.sign import SigningKey, load_public_key, sign
from gapforge.bundle.source import (
    BundleSource,
)
from gapforge.bundle.sums import bundle_files, render_sums
from gapforge.bundle.write import write_bundle
from gapforge.errors import BundleError
from gapforge.operator.anchor import Anchor
from gapforge.operator.verify import verify_bundle
from tests.bundles import EPOCH, REF, make_source, pinned, signing_key
from tests.bundles import evidence as _evidence  # noqa: F401 (test_delta imports it from here)

GOLDEN = Path(__file__).parent / "golden" / "RUNBOOK.md"


def _key(tmp_path: Path, seed: int = 1) -> SigningKey:
    """A fixed key, so the golden RUNBOOK's fingerprint never changes."""
    return signing_key(tmp_path, seed)


def _pinned(tmp_path: Path, seed: int = 1) -> Anchor:
    """The operator's pinned key (--key): the public half of `_key(tmp_path, seed)`."""
    return pinned(tmp_path, seed)


@pytest.fixture
def source(tmp_path: Path) -> BundleSource:
    return make_source(tmp_path)


@pytest.fixture
def bundle(source: BundleSource, tmp_path: Path) -> Path:
    return write_bundle(source, _key(tmp_path), tmp_path / "dist")


# --- documents -------------------------------------------------------------------------------------------


def test_sbom_validates_against_cyclonedx_1_6(source: BundleSource) -> None:
    text = render_sbom(source).decode()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert json.loads(text)["specVersion"] == "1.6"


def test_sbom_lists_packages_model_and_runtime_with_hashes(source: BundleSource) -> None:
    sbom = json.loads(render_sbom(source))
    assert sbom == json.loads(render_sbom(source)), "same inputs, same SBOM"
    subject = sbom["metadata"]["component"]
    assert subject["type"] == "container"
    assert image_digests(sbom) == (source.image.manifest_digest, source.image.config_digest)
    by_ref = {c["bom-ref"]: c for c in sbom["components"]}
    torch = by_ref["pypi:torch@2.13.0+cpu"]
    assert torch["purl"] == "pkg:pypi/torch@2.13.0%2Bcpu"
    assert torch["hashes"] == [{"alg": "SHA-256", "content": "4" * 64}]
    llama = by_ref["pypi:llama-cpp-python@0.3.36"]
    assert {"name": "gapforge:sdist_sha256", "value": "6" * 64} in llama["properties"]
    bash = by_ref["deb:bash@5.2.15-2+b13"]
    assert bash["purl"] == "pkg:deb/debian/bash@5.2.15-2%2Bb13?arch=amd64&distro=bookworm"
    assert bash["hashes"][0]["content"] == "7" * 64
    model = by_ref["model:unit-model"]
    assert model["type"] == "machine-learning-model" and model["version"] == "9" * 40
    assert {c["name"]: c["hashes"][0]["content"] for c in model["components"]} == {
        "config.json": "a" * 64, "model.safetensors": "b" * 64}  # fmt: skip
    assert by_ref["runtime:gapforge-runtime@0.1.0"]["hashes"][0]["content"] == "c" * 64
    image_deps = next(d for d in sbom["dependencies"] if d["ref"] == "image")
    assert len(image_deps["dependsOn"]) == len(sbom["components"])


def test_provenance_is_an_in_toto_statement_with_slsa_v1(source: BundleSource) -> None:
    statement = build_statement(source)
    assert shape_problems(statement) == []
    assert statement["predicateType"] == PREDICATE_TYPE
    assert subject_digest(statement, REF) == source.image.manifest_digest
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["recipe"]["path"] == "recipes/unit/desk.yaml"
    deps = {d["name"]: d["digest"] for d in definition["resolvedDependencies"]}
    assert deps["cpu.txt"] == {"sha256": "1" * 64}
    assert deps["model:unit-model/model.safetensors"] == {"sha256": "b" * 64}
    assert deps["gapforge builder checkout"] == {"gitCommit": "d" * 40}
    assert statement["predicate"]["runDetails"]["builder"]["version"] == {"gapforge": "0.1.0"}
    broken = {**statement, "_type": "x", "subject": [{"name": "i", "digest": {}}]}
    assert len(shape_problems(broken)) == 2


IN_IMAGE_PATHS: tuple[str, ...] = ()
"""Absolute paths the statement may carry: paths inside the image (none today), never the host's."""


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_provenance_holds_no_path_of_the_build_host(source: BundleSource, tmp_path: Path) -> None:
    from dataclasses import replace

    model = replace(
        source.model, source={"type": "local", "path": str(tmp_path / "models" / "unit")}
    )
    source = replace(
        source, recipe_path=str(tmp_path / "work" / "recipes" / "unit" / "desk.yaml"), model=model
    )
    key = _key(tmp_path)
    payload, problems = open_envelope(
        render_provenance(source, key), PAYLOAD_TYPE, [key.private.public_key()]
    )
    assert payload is not None and problems == []
    assert str(tmp_path) not in payload.decode()
    statement = json.loads(payload)
    absolute = [
        s for s in _strings(statement) if s.startswith("/") and not s.startswith(IN_IMAGE_PATHS)
    ]
    assert absolute == []
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["recipe"]["path"] == "recipes/unit/desk.yaml"
    assert definition["internalParameters"]["model"]["source"] == {"type": "local", "path": "unit"}


def test_provenance_is_a_dsse_envelope_a_third_party_can_check(bundle: Path) -> None:
    """What a tool outside gapforge does: securesystemslib's DSSE, in-toto's v1 Statement, SLSA v1."""
    public = SSlibKey.from_crypto(load_public_key(bundle / PUBLIC_KEY))
    envelope = Envelope.from_dict(json.loads((bundle / PROVENANCE).read_bytes()))
    assert envelope.payload_type == "application/vnd.in-toto+json"
    assert list(envelope.verify([public], threshold=1)) == [public.keyid]
    statement = Statement.copy_from_pb(
        json_format.Parse(envelope.payload, statement_pb2.Statement())
    )
    statement.validate()
    assert statement.pb.predicate_type == "https://slsa.dev/provenance/v1"
    json_format.ParseDict(json.loads(envelope.payload)["predicate"], provenance_pb2.Provenance())
    index = json.loads((bundle / "bundle.json").read_text())
    assert statement.pb.subject[0].digest["sha256"] == index["image"][
        "manifest_digest"
    ].removeprefix("sha256:")
    internal = json.loads(envelope.payload)["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["source_date_epoch"] == EPOCH and isinstance(internal["layers"][0]["size"], int)


def test_read_provenance_checks_the_signature_then_the_shape(
    source: BundleSource, tmp_path: Path
) -> None:
    key, other = _key(tmp_path), _key(tmp_path, seed=2)
    statement, problems = read_provenance(
        render_provenance(source, key), [key.private.public_key()]
    )
    assert (
        problems == []
        and statement is not None
        and subject_digest(statement) == source.image.manifest_digest
    )
    statement, problems = read_provenance(
        render_provenance(source, other), [key.private.public_key()]
    )
    assert statement is None and key.fingerprint in problems[0]
    broken = json.dumps({"_type": "x", "subject": []}).encode()
    statement, problems = read_provenance(
        sign_envelope(broken, PAYLOAD_TYPE, key), [key.private.public_key()]
    )
    assert statement == {"_type": "x", "subject": []} and "it has no subject" in problems


def test_runbook_matches_its_golden_file(source: BundleSource, tmp_path: Path) -> None:
    from dataclasses import replace

    # A fixed archive size and digests, so the golden text does not depend on tar internals.
    image = replace(source.image, tar_sha256="f" * 64, manifest_digest="sha256:" + "e" * 64,
                    config_digest="sha256:" + "d" * 64)  # fmt: skip
    refresh = {
        "lock": "cpu.debian.lock",
        "snapshot_from": "20261123T000000Z",
        "snapshot_to": "20261202T000000Z",
        "missing": ["zlib1g 1:1.2.13.dfsg-1"],
        "changes": [{"name": "zlib1g", "from": "1:1.2.13.dfsg-1", "to": "1:1.2.13.dfsg-1+deb12u1"}],
    }
    source = replace(
        source, image=image, debian_snapshot="20261202T000000Z", debian_refreshes=(refresh,)
    )
    os.truncate(source.image.tar, 123_456_789)
    text = render_runbook(runbook_context(source, _key(tmp_path).fingerprint, wheel_count=67))
    if os.environ.get("GAPFORGE_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "set GAPFORGE_UPDATE_GOLDEN=1 to accept a deliberate change"


# --- writing and verifying -------------------------------------------------------------------------


def test_written_bundle_checks_with_sha256sum_openssl_and_gapforge(
    bundle: Path, tmp_path: Path
) -> None:
    names = set(bundle_files(bundle))
    assert {"image.tar", "bundle.json", "sbom.cdx.json", "provenance.json", "RUNBOOK.md", "SHA256SUMS",
            "SHA256SUMS.sig", "signing-key.pub.pem", "pretest/evidence.json", "pretest/log.txt",
            "recipe/recipe.yaml", "recipe/locks/cpu.txt", "wheels/gapforge-0.1.0-py3-none-any.whl"} <= names  # fmt: skip
    listed = {line.split("  ", 1)[1] for line in (bundle / SUMS).read_text().splitlines()}
    assert listed == names - {SUMS, SIGNATURE}
    check = subprocess.run(
        ["sha256sum", "-c", "--strict", SUMS], cwd=bundle, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout
    openssl = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "signing-key.pub.pem", "-rawin",
                              "-in", SUMS, "-sigfile", SIGNATURE], cwd=bundle, capture_output=True, check=False)  # fmt: skip
    assert openssl.returncode == 0, openssl.stdout
    report = verify_bundle(bundle, _pinned(tmp_path), deep=True)
    assert report.ok, report.problems
    assert report.signature_ok and report.key_pinned and report.anchor == "key"
    assert report.archive is not None and report.archive.manifest_digest == json.loads(
        (bundle / "bundle.json").read_text())["image"]["manifest_digest"]  # fmt: skip


def test_bundle_is_written_atomically(source: BundleSource, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    first = write_bundle(source, _key(tmp_path), dist)
    second = write_bundle(source, _key(tmp_path, seed=2), dist)
    assert first == second and sorted(p.name for p in dist.iterdir()) == ["unit-desk-1.2.3"]
    (source.pretest_dir / "evidence.json").unlink()  # the writer fails half-way
    with pytest.raises(FileNotFoundError):
        write_bundle(source, _key(tmp_path, seed=3), dist)
    assert sorted(p.name for p in dist.iterdir()) == ["unit-desk-1.2.3"], "no partial folder left"
    assert verify_bundle(second, _pinned(tmp_path, seed=2)).ok, "the complete bundle is untouched"


def _resign(bundle: Path, tmp_path: Path) -> None:
    names = [n for n in bundle_files(bundle) if n not in (SUMS, SIGNATURE)]
    digests = {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in names}
    (bundle / SUMS).write_bytes(render_sums(digests))
    (bundle / SIGNATURE).write_bytes(sign(_key(tmp_path), (bundle / SUMS).read_bytes()))


def test_documents_must_agree_with_the_archive_even_when_signed(
    bundle: Path, tmp_path: Path
) -> None:
    """A consistently re-signed bundle whose evidence names another image, or a failed pretest."""
    evidence = json.loads((bundle / PRETEST).read_text())
    evidence["image"]["manifest_digest"] = "sha256:" + "0" * 64
    evidence["passed"], evidence["verdict"] = False, "FAIL"
    (bundle / PRETEST).write_text(json.dumps(evidence))
    sbom = json.loads((bundle / SBOM).read_text())
    sbom["metadata"]["component"]["properties"][1]["value"] = "sha256:" + "1" * 64
    (bundle / SBOM).write_text(json.dumps(sbom))
    _resign(bundle, tmp_path)
    report = verify_bundle(bundle, _pinned(tmp_path))
    assert report.signature_ok and not report.ok
    messages = {(p.file, p.message.split(" ")[0]) for p in report.problems}
    assert (PRETEST, "image.manifest_digest") in messages
    assert (PRETEST, "the") in messages  # "the sealed pretest did not pass"
    assert (SBOM, "metadata.component") in messages


def test_extra_and_missing_files_are_named(bundle: Path, tmp_path: Path) -> None:
    (bundle / "notes.txt").write_text("added after signing\n")
    (bundle / "RUNBOOK.md").unlink()
    report = verify_bundle(bundle, _pinned(tmp_path))
    assert report.bad_files == ["RUNBOOK.md", "notes.txt"]


def test_verify_refuses_what_is_not_a_bundle(tmp_path: Path, bundle: Path) -> None:
    with pytest.raises(BundleError, match="no such folder"):
        verify_bundle(tmp_path / "nope", _pinned(tmp_path))
    partial = bundle.with_name(".unit-desk-1.2.3.partial-99")
    shutil.copytree(bundle, partial)
    with pytest.raises(BundleError, match="half-written"):
        verify_bundle(partial, _pinned(tmp_path))


def _resign_as_attacker(bundle: Path, tmp_path: Path) -> None:
    """Alter a file, then re-sign everything with another key and ship that key's public half."""
    (bundle / "RUNBOOK.md").write_text("run this instead\n")
    attacker = _key(tmp_path, seed=9)
    payload = base64.b64decode(json.loads((bundle / PROVENANCE).read_text())["payload"])
    (bundle / PROVENANCE).write_bytes(sign_envelope(payload, PAYLOAD_TYPE, attacker))
    names = [n for n in bundle_files(bundle) if n not in (SUMS, SIGNATURE)]
    (bundle / PUBLIC_KEY).write_bytes(attacker.public_pem)
    digests = {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in names}
    (bundle / SUMS).write_bytes(render_sums(digests))
    (bundle / SIGNATURE).write_bytes(sign(attacker, (bundle / SUMS).read_bytes()))


def test_a_resigned_bundle_fails_against_the_pinned_key(bundle: Path, tmp_path: Path) -> None:
    _resign_as_attacker(bundle, tmp_path)
    report = verify_bundle(bundle, _pinned(tmp_path))
    assert not report.ok and not report.signature_ok
    assert report.bad_files == sorted([PROVENANCE, SIGNATURE]), (
        report.problems
    )  # both by the attacker
    assert all("signed with another key" in problem.message for problem in report.problems)
    # The bundle's own key would have said yes: that is why it is never the default.
    insecure = verify_bundle(bundle, Anchor("insecure"))
    assert insecure.ok and insecure.signature_ok and not insecure.key_pinned
    assert insecure.key_fingerprint == _key(tmp_path, seed=9).fingerprint


def test_a_development_key_is_named(bundle: Path, tmp_path: Path) -> None:
    index = json.loads((bundle / "bundle.json").read_text())
    assert index["signing_key"]["development"] is False
    index["signing_key"]["development"] = True
    (bundle / "bundle.json").write_text(json.dumps(index))
    _resign(bundle, tmp_path)
    report = verify_bundle(bundle, _pinned(tmp_path))
    assert report.ok and report.development_key
    assert report.as_json()["signature"]["development_key"] is True


def test_verify_checks_the_provenance_signature_with_the_bundle_key(
    bundle: Path, source: BundleSource, tmp_path: Path
) -> None:
    """Re-signed SHA256SUMS, but provenance.json signed by another key, then with an altered payload."""
    (bundle / PROVENANCE).write_bytes(render_provenance(source, _key(tmp_path, seed=2)))
    _resign(bundle, tmp_path)
    report = verify_bundle(bundle, _pinned(tmp_path))
    assert report.signature_ok and report.bad_files == [PROVENANCE]
    assert (
        f"its DSSE signature does not verify with key {_key(tmp_path).fingerprint}"
        in report.problems[0].message
    )
    envelope = json.loads(render_provenance(source, _key(tmp_path)))
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (bundle / PROVENANCE).write_text(json.dumps(envelope))
    _resign(bundle, tmp_path)
    assert verify_bundle(bundle, _pinned(tmp_path)).bad_files == [PROVENANCE]
    (bundle / PROVENANCE).write_text(json.dumps(build_statement(source)))  # the old, unsigned form
    _resign(bundle, tmp_path)
    problems = verify_bundle(bundle, _pinned(tmp_path)).problems
    assert [p.message for p in problems] == [
        "not a DSSE envelope: it has no payload, payloadType, signatures"
    ]


def test_inspect_shows_the_provenance_from_its_envelope(bundle: Path) -> None:
    from rich.console import Console

    from gapforge.operator.inspect import bundle_table, describe_bundle

    facts = describe_bundle(bundle)
    assert facts["provenance"]["predicate_type"] == PREDICATE_TYPE
    assert facts["provenance"]["subject"] == facts["image"]["manifest_digest"]
    assert facts["provenance"]["recipe"] == "recipes/unit/desk.yaml"
    console = Console(record=True, width=200)
    console.print(bundle_table(facts))
    assert "https://slsa.dev/provenance/v1 for sha256:" in console.export_text()


def test_no_trust_anchor_is_exit_2_with_the_way_to_get_one(
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gapforge.cli import main
    from gapforge.operator.anchor import NoTrustAnchor, choose_anchor

    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "empty-trust"))
    with pytest.raises(NoTrustAnchor, match="trust init"):
        choose_anchor("verify")
    assert choose_anchor("verify", insecure=True).kind == "insecure"
    assert main(["verify", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "gapforge trust init root.json" in err and "--key" in err and "Traceback" not in err
    assert main(["verify", str(bundle), "--insecure"]) == 0
    assert "NOT AUTHENTICATED" in capsys.readouterr().err
