"""DSSE envelopes (Dead Simple Signing Envelope, the in-toto/SLSA signature wrapper) signed with the
bundle's Ed25519 keys, through securesystemslib, so any DSSE tool can check them.

An envelope is JSON: `{"payload": <base64>, "payloadType": ..., "signatures": [{"keyid", "sig"}]}`;
the signature is over DSSE's pre-authentication encoding of the type and the payload. The keyid is
securesystemslib's (sha256 of the canonical JSON of the key); messages name keys by gapforge's own
fingerprint (sha256 of the DER public key), which `openssl` can compute.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import FormatError, VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from gapforge.bundle.sign import SigningKey, fingerprint


def sslib_key(public: Ed25519PublicKey) -> SSlibKey:
    """The securesystemslib form of an Ed25519 public key (its keyid is what envelopes carry)."""
    return SSlibKey.from_crypto(public)


def sign_envelope(payload: bytes, payload_type: str, key: SigningKey) -> bytes:
    """A DSSE envelope over `payload`, signed with `key`, as JSON bytes (ends with a newline)."""
    envelope = Envelope(payload, payload_type, {})
    envelope.sign(CryptoSigner(key.private, sslib_key(key.private.public_key())))
    return json.dumps(envelope.to_dict(), indent=2, sort_keys=True).encode() + b"\n"


def _parse(data: bytes) -> tuple[Envelope | None, list[str]]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [f"not a DSSE envelope: not valid JSON ({exc})"]
    if not isinstance(value, dict):
        return None, ["not a DSSE envelope: not a JSON object"]
    missing = [k for k in ("payload", "payloadType", "signatures") if k not in value]
    if missing:
        return None, [f"not a DSSE envelope: it has no {', '.join(missing)}"]
    if not isinstance(value["signatures"], list):
        return None, ["not a DSSE envelope: signatures is not a list"]
    try:
        return Envelope.from_dict(value), []
    except KeyError as exc:
        return None, [f"not a DSSE envelope: a signature has no {exc}"]
    except (binascii.Error, FormatError, TypeError, ValueError) as exc:
        return None, [f"not a DSSE envelope: {exc or type(exc).__name__}"]


def open_envelope(
    data: bytes, payload_type: str, keys: Sequence[Ed25519PublicKey]
) -> tuple[bytes | None, list[str]]:
    """The payload of a DSSE envelope whose signature verifies with one of `keys`, else None and
    what failed (not JSON, the wrong payloadType, no signature by any of these keys)."""
    envelope, problems = _parse(data)
    if envelope is None:
        return None, problems
    if envelope.payload_type != payload_type:
        return None, [f"payloadType is {envelope.payload_type!r}, not {payload_type!r}"]
    if not keys:
        return None, ["no key to check its signature with"]
    named = ", ".join(fingerprint(key) for key in keys)
    if not envelope.signatures:
        return None, [f"it has no signature (expected one by {named})"]
    try:
        envelope.verify([sslib_key(key) for key in keys], threshold=1)
    except VerificationError:
        keyids = ", ".join(sorted(envelope.signatures))
        return None, [
            f"its DSSE signature does not verify with key {named}: it was signed with another "
            f"key (keyid {keyids}) or altered after signing"
        ]
    return envelope.payload, []


def envelope_payload_unverified(data: bytes) -> dict[str, Any]:
    """The JSON payload of an envelope, NOT checked: for readers that only display (inspect, diff).
    Anything that is not an envelope of a JSON object gives {}."""
    envelope, _ = _parse(data)
    if envelope is None:
        return {}
    try:
        payload = json.loads(envelope.payload)
    except (ValueError, UnicodeDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}
