"""A receipt proves a bundle was verified when it was loaded; under a trusted release root, `run
IMAGE_REF` also asks the site's newest verified release metadata whether that release was revoked
since, and refuses it then (before: the receipt alone let a revoked release run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapforge.operator.anchor import root_identity
from gapforge.operator.receipt import make_receipt, operator_key, write_receipt
from gapforge.operator.run import RevokedRelease, _receipt_check
from gapforge.operator.tuf_client import revocation_on_record, trust_update
from gapforge.release import ReleaseError
from gapforge.release_manager.releases import revoke
from gapforge.release_manager.repository import Repository
from tests.bundles import release_world

IMAGE_ID = "sha256:" + "c" * 64


def _loaded(trust: Path) -> None:
    """What a verified `gapforge load` of unit-desk 1.2.3 under the trusted root left behind."""
    receipt = make_receipt(
        action="load", bundle=Path("/media/usb/unit-desk-1.2.3"), name="unit-desk",
        version="1.2.3", manifest_digest="sha256:" + "a" * 64, config_digest=IMAGE_ID,
        archive_sha256="b" * 64, sums_sha256="e" * 64, anchor=root_identity(trust),
        checks=[{"check": "signature", "ok": True, "detail": "release metadata"}],
        trust={"method": "tuf"}, loaded_into="docker", host="airgap-01",
    )  # fmt: skip
    write_receipt(receipt, operator_key(trust), trust / "receipts")


def test_a_release_revoked_after_its_load_no_longer_runs_by_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = release_world(tmp_path)
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    trust_update(world.repo_metadata, world.trust)
    _loaded(world.trust)
    _receipt_check(IMAGE_ID, "desk:1.2.3", None)  # receipt valid, release not revoked: runs

    repo = Repository.open(tmp_path / "repo")
    revoke(repo, "unit-desk-1.2.3", "leaks the eval set")
    _receipt_check(IMAGE_ID, "desk:1.2.3", None)  # the site has not imported the revocation yet
    trust_update(world.repo_metadata, world.trust)
    assert revocation_on_record("unit-desk", "1.2.3", world.trust) is not None
    with pytest.raises(RevokedRelease, match=r"revoked on .*leaks the eval set") as refused:
        _receipt_check(IMAGE_ID, "desk:1.2.3", None)
    assert refused.value.exit_status == 1


def test_unreadable_site_metadata_refuses_rather_than_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = release_world(tmp_path)
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    trust_update(world.repo_metadata, world.trust)
    _loaded(world.trust)
    (world.trust / "metadata" / "targets.json").write_text("{not json")
    with pytest.raises(ReleaseError, match="cannot be decided"):
        _receipt_check(IMAGE_ID, "desk:1.2.3", None)
