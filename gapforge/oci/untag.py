"""Stream an image archive with its tags taken out, hashing the original bytes in the same pass.

`docker load` tags an image with the `RepoTags` of the archive's `manifest.json` before anyone can
compare its ID with what was verified: for a moment a bad image would sit under the real name. So
the archive goes to the engine with `RepoTags` emptied (the image loads untagged, known only by its
ID), the ID is compared, and only then is the tag given (gapforge.engine.load).

The archive is rewritten on the fly at the level of tar blocks: every member is copied as it is,
except `manifest.json`, whose JSON gets `"RepoTags": null` and whose header gets the new size and
checksum. The bytes read are hashed as they pass, so the sha256 compared with SHA256SUMS is the
sha256 of exactly the bytes the engine was sent (check, then use the very thing checked).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Iterator
from typing import BinaryIO

BLOCK = 512
CHUNK = 4 * 1024 * 1024
MANIFEST = "manifest.json"
_METADATA_TYPES = {b"x", b"g", b"L", b"K"}
"""pax (per-file, global) and GNU long-name headers: their content describes the next member."""


class ArchiveFormatError(ValueError):
    """The archive is not a tar stream this reader understands."""


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")


def _extracted_name(name: str) -> str:
    """Where an extractor puts a member named `name`: leading `/` and `./` and any `..` or `.`
    collapsed, as docker's Untar cleans a name under its folder (`./manifest.json`, `/manifest.json`
    and `a/../manifest.json` all land on manifest.json)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _pax_values(data: bytes) -> dict[str, str]:
    """The records of a pax header (`<length> <key>=<value>\n` each)."""
    values = {}
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.index(b" ", position)
        length = int(data[position:space])
        if length <= 0:
            break
        key, _, value = data[space + 1 : position + length].rstrip(b"\n").partition(b"=")
        values[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        position += length
    return values


def _with_size(header: bytes, size: int) -> bytes:
    """The header with a new size field and a recomputed checksum."""
    block = bytearray(header)
    block[124:136] = f"{size:011o}\0".encode()
    block[148:156] = b" " * 8
    checksum = sum(block)
    block[148:156] = f"{checksum:06o}\0 ".encode()
    return bytes(block)


def untagged_manifest(data: bytes) -> bytes:
    """docker's manifest.json with every entry's RepoTags emptied."""
    entries = json.loads(data)
    if not isinstance(entries, list):
        raise ArchiveFormatError(f"{MANIFEST} is not a JSON list")
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for key in entry:
            # docker reads this file with Go's encoding/json, which matches a key to RepoTags
            # case-insensitively (and folds U+017F to s), the last one winning: `repotags` after
            # a nulled RepoTags would tag the image before its ID is compared.
            if key != "RepoTags" and key.replace("\u017f", "s").lower() == "repotags":
                raise ArchiveFormatError(
                    f"{MANIFEST} holds the key {key!r}, which docker reads as RepoTags: its tags "
                    "would reach the engine before the image ID is checked"
                )
        entry["RepoTags"] = None
    return json.dumps(entries, separators=(",", ":")).encode()


def _refuse_disguised_manifest(
    name: str, kind: bytes, named_by: str | None, sized_by_pax: bool
) -> None:
    """A member the engine would read as manifest.json must be the plain regular file this stream
    rewrites: one reached by a pax or GNU long name, `./` or `..`, or that is a link (hard or
    symbolic, to a member holding tags), would carry its RepoTags past the rewrite, and the engine
    would tag an image before its ID is compared. gapforge's writer never makes one."""
    why = ""
    if named_by is not None:
        why = "named by a pax or GNU long-name header"
    elif name != MANIFEST:
        why = f"named {name!r}"
    elif kind not in (b"0", b"\0"):
        why = f"a tar member of type {kind.decode('ascii', 'replace')!r}, not a file"
    elif sized_by_pax:
        why = "sized by a pax header"
    if why:
        raise ArchiveFormatError(
            f"a member the engine would read as {MANIFEST} is {why}: its tags would reach the "
            "engine before the image ID is checked"
        )


class UntaggedStream:
    """Iterate over `chunks()` to get the archive without tags; `sha256` is the original's hash once
    the iteration has finished; `tags` the RepoTags the archive carried."""

    def __init__(self, handle: BinaryIO, advance: Callable[[int], None] = lambda _n: None) -> None:
        self._handle = handle
        self._advance = advance
        self._hash = hashlib.sha256()
        self.tags: list[str] = []
        self.bytes_read = 0
        self.finished = False
        self.rewrote_manifest = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _read(self, size: int) -> bytes:
        data = self._handle.read(size)
        self._hash.update(data)
        self.bytes_read += len(data)
        self._advance(len(data))
        return data

    def _exactly(self, size: int) -> bytes:
        data = self._read(size)
        if len(data) != size:
            raise ArchiveFormatError(f"cut short: {len(data)} of {size} bytes at the end")
        return data

    def chunks(self) -> Iterator[bytes]:
        next_size: int | None = None
        next_name: str | None = None
        while True:
            header = self._read(BLOCK)
            if not header:
                break
            if len(header) != BLOCK:
                raise ArchiveFormatError("cut short inside a tar header")
            if header == b"\0" * BLOCK:  # the end-of-archive blocks, then any padding: copy as is
                yield header
                while rest := self._read(CHUNK):
                    yield rest
                break
            kind = header[156:157]
            size = next_size if next_size is not None else _octal(header[124:136])
            sized_by_pax, named_by, next_size, next_name = (
                next_size is not None,
                next_name,
                None,
                None,
            )
            if kind in _METADATA_TYPES:
                content = self._exactly(_padded(size))
                if kind == b"x":
                    values = _pax_values(content[:size])
                    next_size = int(values["size"]) if values.get("size") else None
                    next_name = values.get("path")
                elif kind == b"L":
                    next_name = content[:size].split(b"\0", 1)[0].decode("utf-8", "replace")
                yield header + content
                continue
            name = named_by if named_by is not None else _name(header)
            if kind in (b"1", b"2"):  # through a link `d -> .`, `d/manifest.json` is manifest.json
                raise ArchiveFormatError(
                    f"member {name!r} is a link: the image archive gapforge writes holds files "
                    "and folders only, and a link could put a manifest.json past the tag rewrite"
                )
            if _extracted_name(name) == MANIFEST:
                _refuse_disguised_manifest(name, kind, named_by, sized_by_pax)
            if name == MANIFEST and kind in (b"0", b"\0"):
                original = self._exactly(_padded(size))[:size]
                try:
                    self.tags = [
                        tag
                        for entry in json.loads(original)
                        for tag in (entry.get("RepoTags") or [])
                    ]
                except (ValueError, AttributeError, TypeError) as exc:
                    raise ArchiveFormatError(f"{MANIFEST} is not valid JSON: {exc}") from None
                rewritten = untagged_manifest(original)
                self.rewrote_manifest = True
                yield _with_size(header, len(rewritten))
                yield rewritten + b"\0" * (_padded(len(rewritten)) - len(rewritten))
                continue
            yield header
            remaining = _padded(size)
            while remaining:
                data = self._exactly(min(CHUNK, remaining))
                remaining -= len(data)
                yield data
        self.finished = True
