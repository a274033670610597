"""Ed25519 keys and detached signatures over SHA256SUMS, checkable with `openssl pkeyutl -rawin`.

Private keys are PKCS#8 PEM (mode 0600), encrypted when $GAPFORGE_KEY_PASSPHRASE is set; public keys
are SubjectPublicKeyInfo PEM. A signature is the raw 64 bytes Ed25519 gives. A key's fingerprint is
the sha256 of its DER public key, which an operator can compute with openssl and sha256sum alone:
`openssl pkey -pubin -in KEY.pub.pem -outform DER | sha256sum`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gapforge.errors import BundleError

KEY_ENV = "GAPFORGE_SIGNING_KEY"
PASSPHRASE_ENV = "GAPFORGE_KEY_PASSPHRASE"
DEFAULT_KEY_NAME = "gapforge-signing.key"
SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class SigningKey:
    """A private key and where it came from."""

    private: Ed25519PrivateKey
    path: Path
    generated: bool = False
    """True when the build made this key just now (no --key, no $GAPFORGE_SIGNING_KEY)."""
    development: bool = False
    """The cache's own key (no --key, no $GAPFORGE_SIGNING_KEY): for development only. Bundles signed
    with it say so (bundle.json `signing_key.development`, `verify`'s output), and a release
    repository refuses them on its `approved` channel."""

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.private.public_key())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.private.public_key())


def public_path(private_path: Path) -> Path:
    """`x.key` → `x.pub.pem`: where keygen puts the public half."""
    return private_path.with_name(private_path.name.removesuffix(".key") + ".pub.pem")


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: Ed25519PublicKey) -> str:
    """`sha256:<hex>` of the DER public key (what `openssl pkey -pubin -outform DER | sha256sum` prints)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def write_key_pair(private_path: Path, overwrite: bool = False) -> SigningKey:
    """Make a new Ed25519 key pair: `private_path` (0600) and its `.pub.pem` beside it."""
    if private_path.exists() and not overwrite:
        raise BundleError(
            f"{private_path} already exists: keep using it, choose another path, or pass --force to "
            "replace it (bundles signed with the old key will no longer verify with the new one)"
        )
    key = Ed25519PrivateKey.generate()
    passphrase = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_path.with_name(f".{private_path.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = public_path(private_path)
    public_tmp = public.with_name(f".{public.name}.partial-{os.getpid()}")
    public_tmp.write_bytes(public_pem(key.public_key()))
    os.replace(public_tmp, public)
    os.replace(tmp, private_path)
    return SigningKey(key, private_path, generated=True)


def load_private_key(path: Path) -> SigningKey:
    """Read an Ed25519 private key (PEM, PKCS#8); errors name the file and the fix."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"signing key {path}: cannot be read ({exc.strerror}): pass --key with the path of a key "
            f"made by 'gapforge keygen', or set ${KEY_ENV}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase())
    except TypeError:
        raise BundleError(
            f"signing key {path}: it is encrypted: set ${PASSPHRASE_ENV} to its passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(
            f"signing key {path}: not a PEM private key ({exc}); make one with 'gapforge keygen'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(
            f"signing key {path}: a {type(key).__name__}, not an Ed25519 key: make one with 'gapforge keygen'"
        )
    return SigningKey(key, path)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM); a private key file works too (its public half is used)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"public key {path}: cannot be read ({exc.strerror}): pass --key with the .pub.pem file "
            "of the key that signed the bundle"
        ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:
            key = load_private_key(path).private.public_key()
        except BundleError:
            raise BundleError(
                f"public key {path}: not a PEM public key: pass the .pub.pem file that 'gapforge keygen' "
                "wrote beside the signing key"
            ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"public key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def resolve_signing_key(explicit: Path | None, cache_root: Path) -> SigningKey:
    """--key, else $GAPFORGE_SIGNING_KEY, else the cache's own key (made on first use)."""
    chosen = explicit or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    if chosen is not None:
        return load_private_key(chosen.expanduser())
    default = development_key_path(cache_root)
    key = load_private_key(default) if default.is_file() else write_key_pair(default)
    return SigningKey(key.private, key.path, key.generated, development=True)


def development_key_path(cache_root: Path) -> Path:
    """The key a build makes once in the cache when it is given none: for development only."""
    return cache_root / "keys" / DEFAULT_KEY_NAME


def sign(key: SigningKey, data: bytes) -> bytes:
    return key.private.sign(data)


def signature_valid(public: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
