"""The release repository (TUF) and the operator's check against it: real python-tuf, real keys,
real files; fake bundles small enough to make in a fixture."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Root

from gapforge.bundle.sign import load_private_key, signature_valid, write_key_pair
from gapforge.bundle.sign import sign as sign_bytes
from gapforge.bundle.sums import render_sums
from gapforge.cli import main
from gapforge.operator.tuf_client import check_release, trust_init, trust_state, trust_update
from gapforge.release import ReleaseError
from gapforge.release.keys import KeyRing, public_tuf_key, signer
from gapforge.release.metadata import metadata_bytes
from gapforge.release_manager.create import init_repository
from gapforge.release_manager.maintenance import export, rotate, status
from gapforge.release_manager.releases import add_bundle, promote, releases, revoke
from gapforge.release_manager.repository import Repository


def make_bundle(
    dist: Path,
    key_path: Path,
    version: str = "0.1.0",
    name: str = "tiny-desk",
    development: bool = False,
    passed: bool = True,
    payload: bytes = b"image bytes",
) -> Path:
    """A bundle folder with bundle.json, a few files, SHA256SUMS and its signature."""
    key = load_private_key(key_path)
    bundle = dist / f"{name}-{version}"
    (bundle / "pretest").mkdir(parents=True)
    (bundle / "recipe" / "locks" / "models").mkdir(parents=True)
    files: dict[str, bytes] = {
        "image.tar": payload,
        "sbom.cdx.json": b'{"bomFormat": "CycloneDX"}',
        "provenance.json": b'{"_type": "https://in-toto.io/Statement/v1"}',
        "pretest/evidence.json": json.dumps(
            {
                "passed": passed,
                "verdict": "PASS" if passed else "FAIL",
                "seconds": 1.5,
                "gates": [
                    {"name": "require_improvement", "passed": passed, "value": 2.0, "limit": 4.0}
                ],
                "deltas_vs_merged_pct": {"gguf:q8_0": 0.3},
            }
        ).encode(),
        "recipe/locks/models/tiny.json": json.dumps(
            {"id": "tiny", "files": [{"path": "model.gguf", "sha256": "ab" * 32, "size": 3}]}
        ).encode(),
    }
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    index: dict[str, Any] = {
        "name": name,
        "version": version,
        "image": {
            "manifest_digest": "sha256:" + "1" * 64,
            "config_digest": "sha256:" + "2" * 64,
            "sha256": digests["image.tar"],
            "size": len(payload),
            "ref": f"gapforge/{name}:{version}",
            "profile": "cpu",
            "layers": [{"name": "base", "digest": "sha256:" + "3" * 64, "size": 10}],
        },
        "model": {"id": "tiny", "revision": "r1"},
        "locks": {"models/tiny.json": digests["recipe/locks/models/tiny.json"]},
        "signing_key": {"fingerprint": key.fingerprint, "development": development},
        "builder": {"version": "0.1.0", "commit": "c0ffee"},
        "pretest": {"passed": passed, "verdict": "PASS" if passed else "FAIL", "seconds": 1.5},
    }
    files["bundle.json"] = json.dumps(index, indent=2).encode()
    digests["bundle.json"] = hashlib.sha256(files["bundle.json"]).hexdigest()
    for rel, data in files.items():
        (bundle / rel).write_bytes(data)
    sums = render_sums(digests)
    (bundle / "SHA256SUMS").write_bytes(sums)
    (bundle / "SHA256SUMS.sig").write_bytes(sign_bytes(key, sums))
    return bundle


def bundle_inputs(bundle: Path) -> tuple[bytes, dict[str, Any]]:
    return (bundle / "SHA256SUMS").read_bytes(), json.loads((bundle / "bundle.json").read_text())


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """A repository (2-of-3 root, 1 approver), a bundle added to candidate, a site trusting it."""
    result = init_repository(tmp_path / "repo")
    repo = result.repository
    keys = repo.keys_dir
    bundle = make_bundle(tmp_path / "dist", keys / "build.key")
    add_bundle(repo, bundle)
    trust = tmp_path / "trust"
    trust_init(repo.metadata_dir / "root.json", trust=trust)
    return {"repo": repo, "keys": keys, "bundle": bundle, "trust": trust, "tmp": tmp_path}


def check(world: dict[str, Any], bundle: Path, metadata: Path | None = None, **kw: Any) -> Any:
    sums, index = bundle_inputs(bundle)
    return check_release(sums, index, metadata or world["repo"].metadata_dir, world["trust"], **kw)


def test_promoted_release_is_accepted_on_approved(world: dict[str, Any]) -> None:
    repo, bundle = world["repo"], world["bundle"]
    done = promote(repo, "tiny-desk-0.1.0", [])
    assert done.published and done.signatures == 1
    result = check(world, bundle)
    assert result.ok, result.problems
    assert result.found_on == ["candidate", "approved"]
    assert result.custom["image"]["manifest_digest"] == "sha256:" + "1" * 64
    assert result.custom["model"]["files"] == {"model.gguf": "ab" * 32}
    assert result.custom["pretest"]["gates"][0]["name"] == "require_improvement"
    sums, _ = bundle_inputs(bundle)
    sig = (bundle / "SHA256SUMS.sig").read_bytes()
    assert any(signature_valid(k, sums, sig) for k in result.build_keys)
    # a bundle re-signed with another key does not verify with the repository's build keys
    other = load_private_key(write_key_pair(world["tmp"] / "other.key").path)
    assert not any(signature_valid(k, sums, sign_bytes(other, sums)) for k in result.build_keys)


def test_candidate_is_refused_where_approved_is_required(world: dict[str, Any]) -> None:
    result = check(world, world["bundle"])
    assert not result.ok
    assert "not on channel approved (found on: candidate)" in result.problems[0]
    assert check(world, world["bundle"], channel="candidate").ok


def test_revoked_release_is_refused_with_its_reason(world: dict[str, Any]) -> None:
    promote(world["repo"], "0.1.0", [])
    revoke(world["repo"], "tiny-desk/0.1.0", "tokenizer mismatch")
    result = check(world, world["bundle"])
    assert not result.ok
    assert any(p.startswith("revoked on ") and "tokenizer mismatch" in p for p in result.problems)
    assert releases(world["repo"])[("tiny-desk", "0.1.0")].revoked is not None
    with pytest.raises(ReleaseError, match="revoked"):
        promote(world["repo"], "0.1.0", [])


def test_replayed_old_metadata_is_refused_as_rollback(world: dict[str, Any]) -> None:
    repo = world["repo"]
    week1 = world["tmp"] / "week1"
    shutil.copytree(repo.metadata_dir, week1)
    promote(repo, "0.1.0", [])
    repo.refresh()
    assert check(world, world["bundle"]).ok
    trusted_before = (world["trust"] / "metadata" / "timestamp.json").read_bytes()
    result = check(world, world["bundle"], metadata=week1, channel="candidate")
    assert not result.ok
    assert result.problems[0].startswith("rollback: the metadata offered (timestamp version 2)")
    assert (world["trust"] / "metadata" / "timestamp.json").read_bytes() == trusted_before


def test_expired_timestamp_is_refused(world: dict[str, Any]) -> None:
    repo = world["repo"]
    repo.clock = lambda: datetime.now(UTC) - timedelta(days=30)
    repo.refresh()
    result = check(world, world["bundle"], channel="candidate")
    assert not result.ok
    assert result.problems[0].startswith("expired: the repository's timestamp expired on")
    assert any(row.state == "EXPIRED" for row in status(Repository.open(repo.path)))


def test_root_rotation_is_followed_and_a_root_without_the_old_threshold_is_not(
    world: dict[str, Any],
) -> None:
    repo, keys, tmp = world["repo"], world["keys"], world["tmp"]
    new = write_key_pair(tmp / "root-4.key")
    old_fp = load_private_key(keys / "root-1.key").fingerprint
    written = rotate(repo, "root", [tmp / "root-4.pub.pem"], [old_fp], None, [new.path])
    assert written == {"root": 2}
    (keys / "root-1.key").unlink()  # the removed key is gone for good
    result = check(world, world["bundle"], channel="candidate")
    assert result.ok, result.problems
    assert result.root_version == 2 and trust_state(world["trust"]).root_version == 2

    # version 3 signed only by new keys (root-4 and a stranger), not by 2 of the version-2 keys
    forged_dir = tmp / "forged"
    shutil.copytree(repo.metadata_dir, forged_dir)
    stranger = write_key_pair(tmp / "stranger.key")
    root: Metadata[Root] = Metadata.from_file(str(repo.metadata_dir / "2.root.json"))
    for keyid in list(root.signed.roles["root"].keyids):
        root.signed.revoke_key(keyid, "root")
    root.signed.add_key(public_tuf_key(tmp / "root-4.pub.pem"), "root")
    root.signed.add_key(public_tuf_key(tmp / "stranger.pub.pem"), "root")
    root.signed.version = 3
    root.sign(signer(new), append=True)
    root.sign(signer(stranger), append=True)
    (forged_dir / "3.root.json").write_bytes(metadata_bytes(root))
    result = check(world, world["bundle"], metadata=forged_dir, channel="candidate")
    assert not result.ok and "bad signature on metadata" in result.problems[0]
    assert trust_state(world["trust"]).root_version == 2


def test_two_approvers_stage_then_publish(tmp_path: Path) -> None:
    repo = init_repository(tmp_path / "repo", approvers=2, approve_threshold=2).repository
    keys = repo.keys_dir
    add_bundle(repo, make_bundle(tmp_path / "dist", keys / "build.key"))
    with pytest.raises(ReleaseError, match="only --key counts"):
        promote(repo, "0.1.0", [])
    first = promote(repo, "0.1.0", [keys / "approver-1.key"])
    assert (first.signatures, first.published) == (1, False)
    assert (repo.path / "staged" / "approved.json").is_file()
    assert releases(repo)[("tiny-desk", "0.1.0")].channels == ["candidate"]
    second = promote(repo, "0.1.0", [keys / "approver-2.key"])
    assert (second.signatures, second.published) == (2, True)
    assert not (repo.path / "staged" / "approved.json").exists()
    assert releases(repo)[("tiny-desk", "0.1.0")].channels == ["candidate", "approved"]


def test_development_key_bundle_cannot_be_promoted(world: dict[str, Any]) -> None:
    repo = world["repo"]
    dev = make_bundle(world["tmp"] / "dist", world["keys"] / "build.key", "0.2.0", development=True)
    add_bundle(repo, dev)
    with pytest.raises(ReleaseError, match="development key"):
        promote(repo, "0.2.0", [])


def test_bundle_signed_by_an_unknown_key_is_not_added(world: dict[str, Any]) -> None:
    stranger = write_key_pair(world["tmp"] / "stranger.key")
    bundle = make_bundle(world["tmp"] / "dist2", stranger.path, "0.3.0")
    with pytest.raises(ReleaseError, match="not signed by a build key"):
        add_bundle(world["repo"], bundle)


def test_changed_sums_are_refused_by_repository_and_client(world: dict[str, Any]) -> None:
    repo, tmp = world["repo"], world["tmp"]
    twin = make_bundle(tmp / "dist2", world["keys"] / "build.key", payload=b"other image")
    with pytest.raises(ReleaseError, match="immutable"):
        add_bundle(repo, twin)
    assert not add_bundle(repo, world["bundle"]).added  # the same bytes again: nothing to do
    result = check(world, twin, channel="candidate")
    assert not result.ok
    assert "SHA256SUMS differs from the release repository's entry" in result.problems[0]


def test_export_into_a_bundle_and_trust_update(world: dict[str, Any]) -> None:
    repo, bundle = world["repo"], world["bundle"]
    promote(repo, "0.1.0", [])
    where = export(repo, bundle)
    assert where == bundle / "release" / "metadata"
    assert check(world, bundle, metadata=where).ok
    before, after = trust_update(where, world["trust"])
    assert before.root_version == after.root_version == 1


def test_trust_init_refuses_a_root_whose_signatures_do_not_verify(world: dict[str, Any]) -> None:
    root = json.loads((world["repo"].metadata_dir / "root.json").read_text())
    root["signed"]["expires"] = "2099-01-01T00:00:00Z"
    bad = world["tmp"] / "bad-root.json"
    bad.write_text(json.dumps(root))
    assert main(["trust", "init", str(bad), "--force"]) == 2
    with pytest.raises(ReleaseError, match="already trusts"):
        trust_init(world["repo"].metadata_dir / "root.json", trust=world["trust"])
    ring = KeyRing.load((), world["keys"])
    assert ring.folder  # the keys folder is readable to the repository that made it


def test_cli_release_and_trust_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    monkeypatch.setenv("GAPFORGE_RELEASE_REPO", str(repo))
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "trust"))
    monkeypatch.setenv("GAPFORGE_CACHE", str(tmp_path / "cache"))
    assert main(["release", "init", str(repo), "--expires", "timestamp=14"]) == 0
    bundle = make_bundle(tmp_path / "dist", tmp_path / "repo.keys" / "build.key")
    for argv in (
        ["release", "add", str(bundle)],
        ["release", "promote", "tiny-desk-0.1.0", "--to", "approved"],
        ["release", "status"], ["release", "show", "0.1.0"], ["release", "list"],
        ["release", "export", str(bundle)], ["release", "log"], ["release", "refresh"],
        ["trust", "init", str(repo / "metadata" / "root.json")], ["trust", "show"],
        ["trust", "update", "--metadata", str(repo / "metadata")],
    ):  # fmt: skip
        assert main(argv) == 0, argv
    assert (bundle / "release" / "metadata" / "timestamp.json").is_file()
    capsys.readouterr()
    assert main(["release", "init", str(tmp_path / "r2"), "--expires", "timestamp=soon"]) == 2
    assert main(["release", "promote", "9.9.9", "--to", "approved"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ROLE=DAYS" in err and "no such release" in err
