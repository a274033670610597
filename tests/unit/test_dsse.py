"""DSSE envelopes: gapforge's own reading, and securesystemslib reading them as a third party would."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from gapforge.bundle.dsse import envelope_payload_unverified, open_envelope, sign_envelope
from gapforge.bundle.sign import SigningKey

TYPE = "application/vnd.example+json"
PAYLOAD = b'{"hello": "air gap"}'


def _key(seed: int) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32), Path(f"k{seed}.key"))


def test_envelope_round_trip() -> None:
    key = _key(1)
    envelope = sign_envelope(PAYLOAD, TYPE, key)
    assert open_envelope(envelope, TYPE, [key.private.public_key()]) == (PAYLOAD, [])
    assert open_envelope(envelope, TYPE, [_key(2).private.public_key(), key.private.public_key()])[0] == PAYLOAD
    assert envelope_payload_unverified(envelope) == {"hello": "air gap"}
    assert envelope == sign_envelope(PAYLOAD, TYPE, key), "Ed25519 is deterministic: same bytes"


def test_a_tampered_payload_fails() -> None:
    key = _key(1)
    value = json.loads(sign_envelope(PAYLOAD, TYPE, key))
    value["payload"] = base64.b64encode(b'{"hello": "attacker"}').decode()
    payload, problems = open_envelope(json.dumps(value).encode(), TYPE, [key.private.public_key()])
    assert payload is None
    assert len(problems) == 1 and f"does not verify with key {key.fingerprint}" in problems[0]


def test_a_signature_by_another_key_fails_naming_the_expected_key() -> None:
    envelope = sign_envelope(PAYLOAD, TYPE, _key(2))
    expected = _key(1)
    payload, problems = open_envelope(envelope, TYPE, [expected.private.public_key()])
    assert payload is None and len(problems) == 1
    assert expected.fingerprint in problems[0] and "another key" in problems[0]


def test_what_is_not_an_envelope_is_named() -> None:
    keys = [_key(1).private.public_key()]
    envelope = sign_envelope(PAYLOAD, TYPE, _key(1))
    assert "not valid JSON" in open_envelope(b"{nope", TYPE, keys)[1][0]
    assert "it has no payload" in open_envelope(PAYLOAD, TYPE, keys)[1][0]
    assert "payloadType is 'application/vnd.example+json'" in open_envelope(envelope, "other", keys)[1][0]
    unsigned = json.dumps({**json.loads(envelope), "signatures": []}).encode()
    assert "no signature" in open_envelope(unsigned, TYPE, keys)[1][0]
    assert open_envelope(envelope, TYPE, [])[0] is None
    assert envelope_payload_unverified(b"not json") == {}


def test_a_third_party_verifies_the_envelope_with_securesystemslib() -> None:
    key = _key(1)
    envelope = Envelope.from_dict(json.loads(sign_envelope(PAYLOAD, TYPE, key)))
    accepted = envelope.verify([SSlibKey.from_crypto(key.private.public_key())], threshold=1)
    assert len(accepted) == 1 and envelope.payload == PAYLOAD and envelope.payload_type == TYPE
