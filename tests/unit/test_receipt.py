"""Operator receipts: signed, found by image ID, checkable by a third party with securesystemslib."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from gapforge.bundle.sign import SigningKey, load_public_key, public_path, write_key_pair
from gapforge.operator import receipt as receipts
from gapforge.operator.receipt import (
    BY_IMAGE,
    OPERATOR_KEY_ENV,
    RECEIPT_TYPE,
    Receipt,
    find_receipt,
    make_receipt,
    operator_key,
    verify_receipt,
    write_receipt,
)

IMAGE_ID = "sha256:" + "c" * 64
ANCHOR = "key:sha256:" + "d" * 64


def _key(seed: int) -> SigningKey:
    return SigningKey(
        Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32), Path(f"k{seed}.key")
    )


def _receipt(config_digest: str = IMAGE_ID, action: str = "load") -> dict[str, Any]:
    return make_receipt(
        action=action, bundle=Path("/media/usb/unit-desk-1.2.3"), name="unit-desk", version="1.2.3",
        manifest_digest="sha256:" + "a" * 64, config_digest=config_digest, archive_sha256="b" * 64,
        sums_sha256="e" * 64, anchor=ANCHOR,
        checks=[{"check": "signature", "ok": True, "detail": "SHA256SUMS.sig with sha256:…"},
                {"check": "files", "ok": True, "detail": "16 files"}],
        trust={"method": "pinned-key", "fingerprint": "sha256:" + "d" * 64},
        loaded_into="docker", host="airgap-01",
    )  # fmt: skip


def test_write_then_verify_round_trip(tmp_path: Path) -> None:
    key = _key(1)
    receipt = _receipt()
    assert receipt["time"].endswith("Z") and receipt["operator"] and receipt["gapforge_version"]
    assert Receipt.from_json(receipt).ok and receipt["ok"] is True
    path = write_receipt(receipt, key, tmp_path)
    assert path.parent == tmp_path and path.name.endswith("-unit-desk-1.2.3-load.receipt.json")
    assert verify_receipt(path, key.private.public_key()) == (receipt, [])
    copy = tmp_path / BY_IMAGE / f"{'c' * 64}.json"
    assert copy.read_bytes() == path.read_bytes()
    again = write_receipt(receipt, key, tmp_path)
    assert again != path and verify_receipt(again, key.private.public_key())[0] == receipt, (
        "never overwritten"
    )


def test_a_changed_byte_fails(tmp_path: Path) -> None:
    key = _key(1)
    path = write_receipt(_receipt(), key, tmp_path)
    envelope = json.loads(path.read_bytes())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[payload.index(b"airgap-01")] ^= 0x01  # one bit of the host name
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    path.write_text(json.dumps(envelope))
    value, problems = verify_receipt(path, key.private.public_key())
    assert value is None and f"does not verify with key {key.fingerprint}" in problems[0]
    assert str(path) in problems[0]


def test_another_key_fails(tmp_path: Path) -> None:
    path = write_receipt(_receipt(), _key(2), tmp_path)
    value, problems = verify_receipt(path, _key(1).private.public_key())
    assert value is None and _key(1).fingerprint in problems[0]


def test_find_receipt_takes_the_newest_that_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, forger = _key(1), _key(2)
    stamps = iter(["2026-12-01T10:00:00Z", "2026-12-02T10:00:00Z", "2026-12-03T10:00:00Z",
                   "2026-12-04T10:00:00Z"])  # fmt: skip
    monkeypatch.setattr(receipts, "_utc_now", lambda: next(stamps))
    write_receipt(_receipt(action="verify"), key, tmp_path)
    newest = _receipt(action="load")
    write_receipt(newest, key, tmp_path)
    write_receipt(_receipt(config_digest="sha256:" + "e" * 64), key, tmp_path)  # another image
    write_receipt(_receipt(action="load"), forger, tmp_path)  # newest of all, bad signature
    public = key.private.public_key()
    found = find_receipt(tmp_path, IMAGE_ID, [public], ANCHOR)
    assert found == newest and found["time"] == "2026-12-02T10:00:00Z"
    assert find_receipt(tmp_path, "sha256:" + "f" * 64, [public], ANCHOR) is None
    assert find_receipt(tmp_path / "none", IMAGE_ID, [public], ANCHOR) is None
    forged = find_receipt(tmp_path, IMAGE_ID, [forger.private.public_key()], ANCHOR)
    assert forged is not None and forged["time"] == "2026-12-04T10:00:00Z", "only with its own key"


def test_a_third_party_reads_the_receipt_with_securesystemslib(tmp_path: Path) -> None:
    key = _key(1)
    path = write_receipt(_receipt(), key, tmp_path)
    envelope = Envelope.from_dict(json.loads(path.read_bytes()))
    assert envelope.payload_type == RECEIPT_TYPE
    envelope.verify([SSlibKey.from_crypto(key.private.public_key())], threshold=1)
    assert json.loads(envelope.payload)["config_digest"] == IMAGE_ID


def test_operator_key_is_made_once_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(OPERATOR_KEY_ENV, raising=False)
    monkeypatch.delenv("GAPFORGE_KEY_PASSPHRASE", raising=False)
    made = operator_key(tmp_path / "trust")
    assert (
        made.path == tmp_path / "trust" / "operator.key"
        and made.path.stat().st_mode & 0o777 == 0o600
    )
    assert load_public_key(public_path(made.path)) is not None
    assert operator_key(tmp_path / "trust").fingerprint == made.fingerprint
    explicit = write_key_pair(tmp_path / "mine.key")
    assert operator_key(tmp_path / "trust", explicit.path).fingerprint == explicit.fingerprint
    monkeypatch.setenv(OPERATOR_KEY_ENV, str(explicit.path))
    assert operator_key(tmp_path / "trust").fingerprint == explicit.fingerprint


def test_malformed_receipts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config_digest"):
        _receipt(config_digest="abc")
    with pytest.raises(ValueError, match=r"checks\[0\]"):
        write_receipt({**_receipt(), "checks": [{"check": "x"}]}, _key(1), tmp_path)
    evil = {**_receipt(), "name": "../../etc/cron.d/x"}
    path = write_receipt(evil, _key(1), tmp_path)
    assert path.parent == tmp_path and path.name.endswith("-etc_cron.d_x-1.2.3-load.receipt.json")
