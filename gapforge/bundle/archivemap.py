"""The archive map: image.tar as a sequence of segments, inline bytes and blob references.

A tar stream is header blocks, member contents, padding and end blocks. Every byte that is not the
content of a large `blobs/sha256/<hex>` member is kept inline (header blocks with pax and long-name
headers, index.json, manifest.json, oci-layout, small blobs, padding, the end blocks); each large
blob is kept as a reference (digest, size). Concatenating the segments gives back the archive byte
for byte, whatever tool wrote it, so its sha256 can be checked against the signed SHA256SUMS line.

Only headers and small members are read: the blobs are skipped by seeking, so mapping a 10 GB
archive reads a few hundred kilobytes. The member names are trusted here as the blobs' digests;
the rebuild hashes every blob it copies, and the rebuilt archive is checked whole.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gapforge.bundle.transfer import MAP_SCHEMA, TransferError
from gapforge.oci.untag import BLOCK, _name, _octal, _padded, _pax_values

INLINE_LIMIT = 4096
"""Blob members up to this size are kept inline: a reference would cost more than the bytes."""
TRAILER_LIMIT = 16 * 1024 * 1024
"""The end blocks and record padding after the last member are inline; more than this is not tar."""
_BLOB_NAME = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_FILE_TYPES = {b"0", b"\0", b"7"}
_LONG_NAME_TYPES = {b"L"}
_METADATA_TYPES = {b"x", b"g", b"L", b"K"}


@dataclass(frozen=True)
class BlobRef:
    """A blob member's content: `sha256:<hex>`, its size, and where it sits in the mapped archive."""

    digest: str
    size: int
    offset: int = -1
    """Where the content starts in the archive the map was read from; -1 when read from JSON."""

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass(frozen=True)
class Inline:
    data: bytes


Segment = Inline | BlobRef


@dataclass
class ArchiveMap:
    """image.tar as segments; `size` is the archive's, `sha256` its hex digest when known."""

    size: int
    segments: list[Segment] = field(default_factory=list)
    sha256: str = ""

    @property
    def blobs(self) -> list[BlobRef]:
        """Each referenced blob once, in archive order."""
        seen: dict[str, BlobRef] = {}
        for segment in self.segments:
            if isinstance(segment, BlobRef):
                seen.setdefault(segment.digest, segment)
        return list(seen.values())

    @property
    def inline_bytes(self) -> int:
        return sum(len(s.data) for s in self.segments if isinstance(s, Inline))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": MAP_SCHEMA,
            "size": self.size,
            "sha256": self.sha256,
            "segments": [
                {"inline": base64.b64encode(s.data).decode("ascii")}
                if isinstance(s, Inline)
                else {"blob": s.digest, "size": s.size}
                for s in self.segments
            ],
        }


def parse_map(value: Any, where: str) -> ArchiveMap:
    """The map in `value` (archive-map.json's JSON), checked: every segment well formed and the
    segments adding up to `size`. Raises TransferError naming `where`."""
    if not isinstance(value, dict) or value.get("schema") != MAP_SCHEMA:
        raise TransferError(
            f"{where}: not an archive map (schema {MAP_SCHEMA}): the delta is damaged or was "
            "made by another tool; ask for the delta again"
        )
    size, sha256, raw = value.get("size"), value.get("sha256"), value.get("segments")
    if not isinstance(size, int) or not isinstance(sha256, str) or not isinstance(raw, list):
        raise TransferError(f"{where}: size, sha256 or segments is missing or malformed")
    segments: list[Segment] = []
    for number, item in enumerate(raw):
        try:
            if "inline" in item:
                segments.append(Inline(base64.b64decode(item["inline"], validate=True)))
                continue
            digest, length = item["blob"], item["size"]
        except (TypeError, KeyError, ValueError) as exc:
            raise TransferError(f"{where}: segments[{number}] is malformed ({exc})") from None
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise TransferError(f"{where}: segments[{number}].blob is {digest!r}, not sha256:<hex>")
        if not isinstance(length, int) or length < 0:
            raise TransferError(f"{where}: segments[{number}].size is {length!r}")
        segments.append(BlobRef(digest, length))
    result = ArchiveMap(size, segments, sha256)
    total = sum(len(s.data) if isinstance(s, Inline) else s.size for s in segments)
    if total != size:
        raise TransferError(
            f"{where}: the segments add up to {total} bytes, the map says {size}: the delta is "
            "damaged; ask for it again"
        )
    return result


class _Mapper:
    """One pass over the headers; inline bytes are gathered until the next blob reference."""

    def __init__(self, handle: BinaryIO, where: str) -> None:
        self.handle = handle
        self.where = where
        self.position = 0
        self.pending = bytearray()
        self.segments: list[Segment] = []
        self.total = 0

    def read(self, size: int) -> bytes:
        if size < 0 or size > self.total - self.position:  # never ask for more than is there
            raise TransferError(
                f"{self.where}: a member of {size} bytes at byte {self.position} runs past the "
                f"archive's end ({self.total} bytes): the archive is truncated or not a tar"
            )
        data = self.handle.read(size)
        if len(data) != size:
            raise TransferError(
                f"{self.where}: cut short at byte {self.position + len(data)} (wanted {size} more "
                "bytes): the archive is truncated; copy it again"
            )
        self.position += size
        return data

    def keep(self, size: int) -> None:
        self.pending += self.read(size)

    def reference(self, digest: str, size: int) -> None:
        if self.pending:
            self.segments.append(Inline(bytes(self.pending)))
            self.pending = bytearray()
        if size > self.total - self.position:
            self.read(size)  # refused: past the end
        self.segments.append(BlobRef(digest, size, self.position))
        self.handle.seek(size, 1)
        self.position += size

    def run(self, total: int) -> list[Segment]:
        self.total = total
        next_size: int | None = None
        next_name: str | None = None
        while self.position < total:
            header = self.read(BLOCK)
            if header == b"\0" * BLOCK:  # the end blocks and the record padding: kept as they are
                rest = total - self.position
                if rest > TRAILER_LIMIT:
                    raise TransferError(
                        f"{self.where}: {rest} bytes after the end of the tar archive: not an "
                        "image archive gapforge wrote"
                    )
                self.pending += header
                self.keep(rest)
                break
            self.pending += header
            kind = header[156:157]
            size = next_size if next_size is not None else _octal(header[124:136])
            name = next_name if next_name is not None else _name(header)
            next_size = next_name = None
            if kind in _METADATA_TYPES:
                start = len(self.pending)
                self.keep(_padded(size))
                content = bytes(self.pending[start : start + size])
                if kind == b"x":
                    values = _pax_values(content)
                    next_size = int(values["size"]) if "size" in values else None
                    next_name = values.get("path")
                elif kind in _LONG_NAME_TYPES:
                    next_name = content.rstrip(b"\0").decode("utf-8", "replace")
                continue
            if kind == b"S":
                raise TransferError(f"{self.where}: {name} is a GNU sparse member: not supported")
            match = _BLOB_NAME.match(name)
            if kind in _FILE_TYPES and match and size > INLINE_LIMIT:
                self.reference(f"sha256:{match.group(1)}", size)
                self.keep(_padded(size) - size)
            else:
                self.keep(_padded(size))
        if self.pending:
            self.segments.append(Inline(bytes(self.pending)))
        return self.segments


def map_archive(path: Path, sha256: str = "") -> ArchiveMap:
    """The map of the image archive at `path` (headers and small members read, blobs skipped);
    `sha256` is recorded as given (the SHA256SUMS line), not computed."""
    try:
        total = path.stat().st_size
        with open(path, "rb") as handle:
            segments = _Mapper(handle, str(path)).run(total)
    except OSError as exc:
        raise TransferError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # a header field that is not a number
        raise TransferError(f"{path}: not a tar archive this reader understands ({exc})") from None
    return ArchiveMap(total, segments, sha256)
