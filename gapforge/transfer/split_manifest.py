"""The parts manifest of a media split: what every medium carries so any one of them says what the
whole set is, and each part and each block of it can be checked on its own.

It travels as one DSSE envelope, `parts.dsse.json` (payload type PAYLOAD_TYPE), signed with the
bundle's signing key: the payload is the manifest's JSON; read it by hand with
`jq -r .payload parts.dsse.json | base64 -d`. There is no separate unsigned `parts.json`, so no copy
can drift from what was signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.dsse import open_envelope, sign_envelope
from gapforge.bundle.sign import SigningKey
from gapforge.errors import BundleError

MANIFEST_NAME = "parts.dsse.json"
README_NAME = "README.txt"
PAYLOAD_TYPE = "application/vnd.gapforge.parts+json"
SCHEMA = "gapforge/parts/v1"


@dataclass(frozen=True)
class PartEntry:
    """One part: a data part is a plain byte range of the stream; a parity part is zfec's output."""

    name: str
    """`data-01` … `data-K`, `parity-01` … `parity-N`."""
    kind: str  # "data" | "parity"
    index: int
    """zfec's share number: 0 … K-1 for data parts, K … K+N-1 for parity parts."""
    medium: str
    """The folder (and label) of the medium it travels on: `disc-03`."""
    file: str
    """Its file name inside that folder: `data-03.part`."""
    offset: int
    """Where a data part starts in the stream (0 for parity parts)."""
    size: int
    sha256: str
    blocks: list[str] = field(default_factory=list)
    """sha256 of each block (block_size bytes at block_size * i; the last may be shorter)."""


@dataclass(frozen=True)
class PartsManifest:
    name: str
    version: str
    sums_sha256: str
    """sha256 of the bundle's SHA256SUMS: binds this split to one signed bundle."""
    stream_size: int
    stream_sha256: str
    stream_root: str
    """The folder every member of the stream (a tar) sits in: `<name>-<version>`."""
    medium: str
    capacity: int
    k: int
    n: int
    block_size: int
    part_size: int
    """The size of every data part but the last; parity parts are as long as data-01."""
    parts: list[PartEntry]
    schema: str = SCHEMA

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def data_parts(self) -> list[PartEntry]:
        return [p for p in self.parts if p.kind == "data"]

    @property
    def parity_parts(self) -> list[PartEntry]:
        return [p for p in self.parts if p.kind == "parity"]

    def part(self, name: str) -> PartEntry:
        for entry in self.parts:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, payload: bytes, where: str) -> PartsManifest:
        """The manifest in `payload`; a BundleError naming `where` when it is not one."""
        try:
            value = json.loads(payload)
            if value.get("schema") != SCHEMA:
                raise ValueError(f"schema is {value.get('schema')!r}, not {SCHEMA!r}")
            parts = [PartEntry(**p) for p in value.pop("parts")]
            manifest = cls(parts=parts, **value)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise BundleError(
                f"{where}: not a parts manifest this gapforge reads ({exc}): take the manifest from "
                "another medium of the same set, or a gapforge as new as the one that split it"
            ) from None
        manifest.validate(where)
        return manifest

    def validate(self, where: str) -> None:
        problems = []
        if self.k < 1 or self.n < 0 or self.k + self.n > 256:
            problems.append(f"k={self.k}, n={self.n} (need k >= 1, n >= 0, k + n <= 256)")
        if self.block_size < 1 or self.part_size < 1:
            problems.append("block_size and part_size must be > 0")
        if len(self.data_parts) != self.k or len(self.parity_parts) != self.n:
            problems.append("the part list does not hold k data and n parity parts")
        if sum(p.size for p in self.data_parts) != self.stream_size:
            problems.append("the data parts do not add up to the stream's size")
        for p in self.parts:
            if len(p.blocks) != -(-p.size // self.block_size):
                problems.append(f"{p.name}: {len(p.blocks)} block hashes for {p.size} bytes")
            if "/" in p.file or "/" in p.medium or p.file.startswith("."):
                problems.append(f"{p.name}: bad file or medium name")
        if problems:
            raise BundleError(f"{where}: inconsistent parts manifest: {'; '.join(problems)}")


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def sign_manifest(manifest: PartsManifest, key: SigningKey) -> bytes:
    return sign_envelope(manifest.to_json(), PAYLOAD_TYPE, key)


def open_manifest(
    data: bytes, where: str, keys: Sequence[Ed25519PublicKey]
) -> tuple[PartsManifest, bytes]:
    """The manifest and its payload bytes; checked against `keys` when given, else NOT checked."""
    if keys:
        payload, problems = open_envelope(data, PAYLOAD_TYPE, keys)
        if payload is None:
            raise BundleError(
                f"{where}: the parts manifest fails its check: {'; '.join(problems)}. Take these "
                "media from their sender again, or check that --key is the release key that "
                "signed this bundle"
            )
    else:
        raw = _raw_payload(data)
        if raw is None:
            raise BundleError(
                f"{where}: not a DSSE envelope of a parts manifest: take it from another medium"
            )
        payload = raw
    return PartsManifest.parse(payload, where), payload


def _raw_payload(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(json.loads(data)["payload"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
