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
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.dsse import open_envelope, sign_envelope
from gapforge.bundle.sign import SigningKey
from gapforge.errors import BundleError
from gapforge.names import component

MANIFEST_NAME = "parts.dsse.json"
README_NAME = "README.txt"
METADATA_DIR = "release-metadata"
"""Each medium's copy of the bundle's release/metadata/ (TUF, self-signed): what a site under the
trusted root checks the parts manifest's signer against before any part is read."""
PAYLOAD_TYPE = "application/vnd.gapforge.parts+json"
SCHEMA = "gapforge/parts/v1"


class PartsNotTrusted(BundleError):
    """The parts manifest's signature is not proven by a key the anchor names: exit 1."""

    exit_status = 1


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
        """The manifest in `payload`; a BundleError naming `where` when it is not one, an
        UnsafeName when a name in it is not a plain component (nothing is touched before)."""
        try:
            value = json.loads(payload)
            if not isinstance(value, dict):
                raise ValueError(f"the payload is a JSON {type(value).__name__}, not an object")
            if value.get("schema") != SCHEMA:
                raise ValueError(f"schema is {value.get('schema')!r}, not {SCHEMA!r}")
            raw_parts = value.pop("parts")
            if not isinstance(raw_parts, list) or not all(isinstance(p, dict) for p in raw_parts):
                raise ValueError("parts is not a list of objects")
            parts = [
                PartEntry(**_typed(p, _PART_FIELDS, f"parts[{i}]")) for i, p in enumerate(raw_parts)
            ]
            manifest = cls(parts=parts, **_typed(value, _MANIFEST_FIELDS, "manifest"))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise BundleError(
                f"{where}: not a parts manifest this gapforge reads ({exc}): take the manifest from "
                "another medium of the same set, or a gapforge as new as the one that split it"
            ) from None
        manifest.check_names(where)
        manifest.validate(where)
        return manifest

    def check_names(self, where: str) -> None:
        """Every name that becomes a path, parsed once (gapforge.names.component): the bundle's
        name and version, the stream's root, each part's name, medium and file."""
        component(self.name, f"{where}: name")
        component(self.version, f"{where}: version")
        if self.stream_root != self.label:
            component(self.stream_root, f"{where}: stream_root")
            raise BundleError(
                f"{where}: stream_root is {self.stream_root!r}, not {self.label!r} (name-version): "
                "an altered manifest; take it from another medium"
            )
        for number, part in enumerate(self.parts):
            for field_name in ("name", "medium", "file"):
                component(getattr(part, field_name), f"{where}: parts[{number}].{field_name}")

    def _part_problems(self) -> list[str]:
        """What is wrong with the parts themselves: kinds, order, offsets, sizes, hashes, names."""
        problems: list[str] = []
        offset, first = 0, self.data_parts[0].size if self.data_parts else 0
        for number, p in enumerate(self.parts):
            if p.kind not in ("data", "parity") or p.size < 0 or p.offset < 0:
                problems.append(f"{p.name}: kind {p.kind!r}, size {p.size}, offset {p.offset}")
                continue
            if p.index != number or (p.kind == "data" and p.offset != offset):
                problems.append(f"{p.name}: index {p.index} or offset {p.offset} out of order")
            if p.kind == "data":
                offset += p.size
            elif p.size != first:
                problems.append(f"{p.name}: a parity part of {p.size} bytes, data-01 has {first}")
            if self.block_size > 0 and len(p.blocks) != -(-p.size // self.block_size):
                problems.append(f"{p.name}: {len(p.blocks)} block hashes for {p.size} bytes")
            if not _HEX.match(p.sha256) or not all(_HEX.match(b) for b in p.blocks):
                problems.append(f"{p.name}: a sha256 that is not 64 hex digits")
            if p.file.startswith("."):
                problems.append(f"{p.name}: a hidden file name {p.file!r}")
        return problems

    def validate(self, where: str) -> None:
        """Every inconsistency of the manifest at once, in one error that names `where`."""
        problems = []
        if self.k < 1 or self.n < 0 or self.k + self.n > 256:
            problems.append(f"k={self.k}, n={self.n} (need k >= 1, n >= 0, k + n <= 256)")
        if self.block_size < 1 or self.part_size < 1:
            problems.append("block_size and part_size must be > 0")
        if (
            self.stream_size < 0
            or not _HEX.match(self.stream_sha256)
            or not _HEX.match(self.sums_sha256)
        ):
            problems.append("stream_size, stream_sha256 or sums_sha256 is malformed")
        if len(self.data_parts) != self.k or len(self.parity_parts) != self.n:
            problems.append("the part list does not hold k data and n parity parts")
        if sum(p.size for p in self.data_parts) != self.stream_size:
            problems.append("the data parts do not add up to the stream's size")
        if len({p.name for p in self.parts}) != len(self.parts):
            problems.append("two parts share a name")
        problems += self._part_problems()
        if problems:
            raise BundleError(f"{where}: inconsistent parts manifest: {'; '.join(problems)}")


_HEX = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_FIELDS: dict[str, type] = {
    "name": str, "version": str, "sums_sha256": str, "stream_size": int, "stream_sha256": str,
    "stream_root": str, "medium": str, "capacity": int, "k": int, "n": int, "block_size": int,
    "part_size": int, "schema": str,
}  # fmt: skip
_PART_FIELDS: dict[str, type] = {
    "name": str, "kind": str, "index": int, "medium": str, "file": str, "offset": int,
    "size": int, "sha256": str, "blocks": list,
}  # fmt: skip


def _typed(value: dict[str, Any], fields: dict[str, type], where: str) -> dict[str, Any]:
    """`value` when it holds exactly `fields`, each of its type (bool is not an int here, and
    block hashes are strings); ValueError naming the first field that is not."""
    if set(value) != set(fields):
        odd = sorted(set(value) ^ set(fields))
        raise ValueError(f"{where}: fields {', '.join(map(str, odd))} missing or unknown")
    for name, kind in fields.items():
        item = value[name]
        if not isinstance(item, kind) or isinstance(item, bool):
            raise ValueError(f"{where}.{name} is {type(item).__name__}, not {kind.__name__}")
        if isinstance(item, list) and not all(isinstance(x, str) for x in item):
            raise ValueError(f"{where}.{name} holds a value that is not a string")
    return value


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def sign_manifest(manifest: PartsManifest, key: SigningKey) -> bytes:
    return sign_envelope(manifest.to_json(), PAYLOAD_TYPE, key)


def open_manifest(
    data: bytes, where: str, keys: Sequence[Ed25519PublicKey]
) -> tuple[PartsManifest, bytes]:
    """The manifest and its payload bytes; checked against `keys` when given, else NOT checked."""
    if keys:
        try:
            payload, problems = open_envelope(data, PAYLOAD_TYPE, keys)
        except RecursionError:
            payload, problems = None, ["not a DSSE envelope: JSON nested too deep"]
        if payload is None:
            raise PartsNotTrusted(
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
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error):
        return None
