"""Ed25519 keys as TUF sees them: the PEM files of gapforge.bundle.sign, TUF key ids, signers.

A key is shown to people by its gapforge fingerprint (`sha256:` of the DER public key, what
`openssl pkey -pubin -outform DER | sha256sum` prints) and matched in TUF metadata by its key id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from gapforge.bundle.sign import SigningKey, fingerprint, load_private_key, load_public_key
from gapforge.errors import BundleError
from gapforge.release import ReleaseError


def tuf_key(public: Ed25519PublicKey) -> SSlibKey:
    """The TUF key for an Ed25519 public key (its key id is computed by securesystemslib)."""
    return SSlibKey.from_crypto(public)


def crypto_key(key: Key) -> Ed25519PublicKey:
    """The `cryptography` public key of a TUF Ed25519 key (to check SHA256SUMS.sig with)."""
    if key.keytype != "ed25519":
        raise ReleaseError(f"key {key.keyid}: a {key.keytype} key; gapforge uses Ed25519 keys only")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))


def key_fingerprint(key: Key) -> str:
    """The gapforge fingerprint of a TUF key."""
    return fingerprint(crypto_key(key))


def describe(key: Key) -> str:
    """`sha256:<fingerprint> (keyid 1a2b3c4d)`: how errors and tables name a key."""
    return f"{key_fingerprint(key)} (keyid {key.keyid[:8]})"


def matches(key: Key, wanted: str) -> bool:
    """True when `wanted` is the key's id or fingerprint (with or without `sha256:`), or a prefix of
    at least 8 hex digits of either."""
    wanted = wanted.strip().lower().removeprefix("sha256:")
    fp = key_fingerprint(key).removeprefix("sha256:")
    if len(wanted) < 8:
        return False
    return key.keyid.startswith(wanted) or fp.startswith(wanted)


def signer(key: SigningKey) -> CryptoSigner:
    return CryptoSigner(key.private, tuf_key(key.private.public_key()))


def public_tuf_key(path: Path) -> SSlibKey:
    """A TUF key from a .pub.pem (or a private key file's public half)."""
    return tuf_key(load_public_key(path))


@dataclass
class KeyRing:
    """Private keys at hand, by TUF key id: the files given with --key, then the keys folder's."""

    explicit: dict[str, SigningKey] = field(default_factory=dict)
    folder: dict[str, SigningKey] = field(default_factory=dict)

    @classmethod
    def load(cls, explicit: Iterable[Path] = (), folder: Path | None = None) -> KeyRing:
        ring = cls()
        for path in explicit:
            key = load_private_key(path.expanduser())
            ring.explicit[tuf_key(key.private.public_key()).keyid] = key
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.key")):
                try:
                    key = load_private_key(path)
                except BundleError:
                    continue  # not ours to judge here: a key that is needed is named when missing
                ring.folder.setdefault(tuf_key(key.private.public_key()).keyid, key)
        return ring

    def find(self, keyid: str, explicit_only: bool = False) -> SigningKey | None:
        if keyid in self.explicit:
            return self.explicit[keyid]
        return None if explicit_only else self.folder.get(keyid)
