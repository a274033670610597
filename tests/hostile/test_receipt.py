"""Issue 22 item 4: receipts mean success. `verify --receipt` of a failing (or --insecure) bundle
writes none; `find_receipt`, which `run IMAGE_REF` and `preflight` ask, accepts only a receipt
signed by the operator key that records a success for that image ID, binds a SHA256SUMS digest and
was made under this site's trust anchor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gapforge.operator.anchor import root_identity
from gapforge.operator.receipt import (
    find_receipt,
    make_receipt,
    operator_public_keys,
    write_receipt,
)
from gapforge.operator.receipt import operator_key as resolve_operator_key
from tests.bundles import ReleaseWorld, release_world, write_signed_bundle
from tests.hostile.conftest import Hostile
from tests.hostile.test_verify import attack_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ReleaseWorld:
    return release_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def site(world: ReleaseWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the site's trust folder (the root pinned, no receipts yet)."""
    trust = tmp_path / "trust"
    shutil.copytree(world.trust, trust, symlinks=True)
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(trust))
    monkeypatch.delenv("GAPFORGE_OPERATOR_KEY", raising=False)
    monkeypatch.delenv("GAPFORGE_KEY_PASSPHRASE", raising=False)
    return trust


def _receipts(trust: Path) -> list[Path]:
    folder = trust / "receipts"
    return sorted(folder.rglob("*.json")) if folder.is_dir() else []


def test_verify_receipt_of_a_failing_bundle_writes_none(
    hostile: Hostile, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = write_signed_bundle(tmp_path / "attacker", seed=66)
    bundle = attack_bundle(template, hostile.inputs, b"{}", bytes(64))
    status, text = hostile.run("verify", bundle, "--receipt", capsys=capsys)
    assert status != 0 and "none written" in text, text
    assert _receipts(site) == []


def test_verify_receipt_insecure_writes_none(
    hostile: Hostile, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No anchor at all: --insecure proves integrity only, which authorises nothing."""
    trust = tmp_path / "no-root"
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(trust))
    bundle = write_signed_bundle(tmp_path / "b")
    status, text = hostile.run("verify", bundle, "--insecure", "--receipt", "--json", capsys=capsys)
    report, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert status == 0 and report["integrity_only"] is True and report["authenticated"] is False
    assert report["receipt"] is None and _receipts(trust) == []


def test_a_genuine_verify_receipt_binds_image_sums_and_anchor(
    hostile: Hostile, site: Path, world: ReleaseWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = hostile.inputs / world.bundle.name
    shutil.copytree(world.bundle, bundle)
    status, text = hostile.run("verify", bundle, "--receipt", "--json", capsys=capsys)
    report, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert status == 0 and report["receipt"], text
    image_id = report["image"]["config_digest"]
    keys = operator_public_keys(site)
    anchor = root_identity(site)
    found = find_receipt(site / "receipts", image_id, keys, anchor)
    assert found is not None and found["ok"] is True
    assert found["sums_sha256"] == report["sha256sums_sha256"] and found["anchor"] == anchor
    assert find_receipt(site / "receipts", image_id, keys, "key:sha256:" + "0" * 64) is None
    assert find_receipt(site / "receipts", image_id, keys, "") is None
    assert find_receipt(site / "receipts", "sha256:" + "f" * 64, keys, anchor) is None


def _forged(site: Path, **change: Any) -> dict[str, Any]:
    """A receipt signed with the site's own operator key, with `change` made to a good one."""
    fields: dict[str, Any] = dict(
        action="load", bundle=Path("/media/b"), name="unit-desk", version="1.2.3",
        manifest_digest="sha256:" + "a" * 64, config_digest="sha256:" + "c" * 64,
        archive_sha256="b" * 64, sums_sha256="e" * 64, anchor=root_identity(site),
        checks=[{"check": "signature", "ok": True, "detail": "x"}], trust={}, loaded_into="docker",
    )  # fmt: skip
    fields.update(change)
    receipt = make_receipt(**fields)
    write_receipt(receipt, resolve_operator_key(site), site / "receipts")
    return receipt


@pytest.mark.parametrize(
    "change",
    [
        {"checks": [{"check": "signature", "ok": False, "detail": "did not verify"}]},
        {"checks": [{"check": "signature", "ok": True, "detail": "x"},
                    {"check": "files", "ok": False, "detail": "image.tar altered"}]},
        {"config_digest": "sha256:" + "9" * 64},
        {"anchor": "key:sha256:" + "7" * 64},
        {"action": "inspect"},
    ],
    ids=["ok-false", "one-check-failed", "another-image", "another-anchor", "not-a-load"],
)  # fmt: skip
def test_a_receipt_that_does_not_record_this_success_authorises_nothing(
    hostile: Hostile, site: Path, change: dict[str, Any]
) -> None:
    _forged(site, **change)
    keys = operator_public_keys(site)
    assert find_receipt(site / "receipts", "sha256:" + "c" * 64, keys, root_identity(site)) is None
    _forged(site)  # the control: the same receipt, unchanged, does authorise
    assert find_receipt(site / "receipts", "sha256:" + "c" * 64, keys, root_identity(site))


def test_a_hand_edited_ok_true_payload_fails_its_signature(hostile: Hostile, site: Path) -> None:
    import base64

    _forged(site, checks=[{"check": "signature", "ok": False, "detail": "x"}])
    for path in (site / "receipts").glob("*.receipt.json"):
        envelope = json.loads(path.read_bytes())
        payload = json.loads(base64.b64decode(envelope["payload"]))
        payload["ok"], payload["checks"][0]["ok"] = True, True
        envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        path.write_text(json.dumps(envelope))
    keys = operator_public_keys(site)
    assert find_receipt(site / "receipts", "sha256:" + "c" * 64, keys, root_identity(site)) is None
