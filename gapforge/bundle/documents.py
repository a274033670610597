"""The JSON documents a bundle carries, read once and shape-checked where they are read.

A bundle comes from outside, so each document may hold anything: `[]` where an object belongs, a
number where a digest belongs, a nesting deep enough to exhaust the stack. One small checker
(`shape_problems`) compares a document with a schema written as data, and each wrong field is one
problem naming the file and the field (`bundle.json: image.config_digest: expected a string, found
a number`), never an AttributeError later. Documents are opened without following a link
(gapforge.names.open_regular) and read up to a size limit.

A schema is a Python value: a type (or tuple of types) for a leaf; a dict for an object, whose keys
ending in `?` are optional and whose key `*` checks every value of a free-form map; a one-item list
for a list of that item. Fields a schema does not name are not checked (and not read).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gapforge.bundle import SUMS
from gapforge.errors import BundleError
from gapforge.names import UnsafeName, no_links, open_regular

MAX_DOCUMENT = 64 * 1024 * 1024
"""Bytes of one JSON document; far above any gapforge writes (an SBOM of thousands of packages)."""

Schema = Any
"""type | tuple[type, ...] | dict[str, Schema] | list[Schema] (see the module docstring)."""

_DIGEST_PREFIX = "sha256:"

BUNDLE_INDEX: Schema = {
    "name": str,
    "version": str,
    "image": {
        "manifest_digest": str,
        "config_digest": str,
        "sha256": str,
        "size": int,
        "ref?": str,
        "file?": str,
        "profile?": str,
        "labels?": {"*": str},
        "layers?": [{"digest": str, "name": str, "size?": int}],
    },
    "signing_key?": {"fingerprint?": str, "development?": bool},
    "locks?": {"*": str},
    "model?": {"id?": str, "revision?": str, "source?": dict},
    "models?": {"*": {"id?": str, "revision?": str, "source?": dict}},
    "builder?": {"version?": str, "commit?": str},
    "pretest?": dict,
}
"""bundle.json: every field an operator command reads."""

PRETEST_EVIDENCE: Schema = {
    "passed": bool,
    "verdict?": str,
    "seconds?": (int, float),
    "image": {"manifest_digest": str, "config_digest": str, "ref?": str},
    "steps?": {"*": (int, float)},
    "gates?": [{"name": str, "passed": bool, "detail?": str}],
    "outputs?": {"*": {"sha256?": str, "size?": int}},
}
"""pretest/evidence.json."""

SBOM_FIELDS: Schema = {
    "metadata": {"component": {"properties?": [{"name": str, "value?": str}]}},
    "components?": [{"bom-ref?": str, "type?": str}],
}
"""The fields of sbom.cdx.json that verify and inspect read (the SBOM's full schema is CycloneDX's)."""

PROVENANCE_STATEMENT: Schema = {
    "_type": str,
    "predicateType": str,
    "subject": [{"name?": str, "digest": {"sha256": str}}],
    "predicate": {"buildDefinition": dict, "runDetails": dict},
}
"""The in-toto statement inside provenance.json's DSSE envelope."""


def _kind(value: object) -> str:
    """How a JSON value's type reads in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
          dict: "an object", list: "a list"}  # fmt: skip


def _leaf_ok(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not a number, though Python's bool is an int
    return isinstance(value, kinds)


def shape_problems(value: object, schema: Schema, where: str = "") -> list[str]:
    """Every field of `value` that does not have the shape `schema` gives, as `field: expected X,
    found Y` (the top level: `not a JSON object`)."""
    label = where or "the document"
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            found = _kind(value)
            return [f"{where}: expected an object, found {found}" if where else
                    f"not a JSON object (found {found})"]  # fmt: skip
        problems: list[str] = []
        for key, inner in schema.items():
            if key == "*":
                for name, item in value.items():
                    problems += shape_problems(item, inner, f"{where}.{name}" if where else name)
                continue
            optional = key.endswith("?")
            name = key.removesuffix("?")
            path = f"{where}.{name}" if where else name
            if name not in value:
                if not optional:
                    problems.append(f"{path}: missing")
                continue
            problems += shape_problems(value[name], inner, path)
        return problems
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{label}: expected a list, found {_kind(value)}"]
        return [
            p
            for n, item in enumerate(value)
            for p in shape_problems(item, schema[0], f"{where}[{n}]")
        ]
    kinds = schema if isinstance(schema, tuple) else (schema,)
    if _leaf_ok(value, kinds):
        return []
    expected = " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
    return [f"{label}: expected {expected}, found {_kind(value)}"]


def read_bytes_no_follow(path: Path, limit: int = MAX_DOCUMENT) -> bytes:
    """A regular file's bytes, never through a symbolic link at its last component, at most
    `limit` bytes: OSError, UnsafeName (a link, a device) or ValueError (too big) otherwise."""
    try:
        fd = open_regular(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeName(f"{path}: a symbolic link: refused") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def parse_document(data: bytes, schema: Schema) -> tuple[dict[str, Any] | None, list[str]]:
    """`data` as a JSON object of `schema`'s shape, or None and every problem (not JSON, too deep,
    a wrong type). Problems read as `field: ...`."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return None, [f"not valid JSON ({reason})"]
    problems = shape_problems(value, schema)
    if problems or not isinstance(value, dict):
        return None, problems
    return value, []


def read_raw(folder: Path, name: str) -> tuple[bytes | None, list[str]]:
    """`folder/name`'s bytes, read once without following links: the bytes, or None and the one
    problem (`missing`, or a sentence to put after the file's name). A caller that must know the
    bytes are the signed ones hashes these very bytes, never a second read (a medium may serve
    other bytes to each read)."""
    try:
        no_links(folder, folder / name, f"{folder}/{name}")
        return read_bytes_no_follow(folder / name), []
    except FileNotFoundError:
        return None, ["missing"]
    except UnsafeName:
        return None, ["not a regular file (a symbolic link, a device or a folder): refused"]
    except (OSError, ValueError) as exc:
        return None, [f"unreadable ({exc})"]


def read_document(
    folder: Path, name: str, schema: Schema
) -> tuple[dict[str, Any] | None, list[str]]:
    """`folder/name` read without following links and checked against `schema`: the document, or
    None and every problem (each a sentence to put after the file's name)."""
    data, problems = read_raw(folder, name)
    if data is None:
        return None, problems
    return parse_document(data, schema)


def is_digest(value: object) -> bool:
    """`sha256:` and 64 lowercase hex digits."""
    if not isinstance(value, str) or not value.startswith(_DIGEST_PREFIX):
        return False
    hex_part = value.removeprefix(_DIGEST_PREFIX)
    return len(hex_part) == 64 and all(c in "0123456789abcdef" for c in hex_part)


class SignedFiles:
    """A bundle's files read again after the trust gate (diff, inspect): once each, never through
    a link, and, when `pinned` (the sha256 of the SHA256SUMS whose signature the gate proved), only
    as the bytes its SHA256SUMS lines name: a file changed after the gate is refused (BundleError)."""

    def __init__(self, bundle: Path, pinned: str | None) -> None:
        from gapforge.bundle.sums import parse_sums

        self.bundle = bundle
        self.pinned = pinned
        self.sums_bytes = self.read(SUMS) if pinned else None
        self.lines: dict[str, str] = {}
        if self.sums_bytes is not None:
            parsed, _ = parse_sums(self.sums_bytes.decode("utf-8", errors="replace"))
            self.lines = {line.name: line.sha256 for line in parsed}

    def _changed(self, name: str, why: str) -> BundleError:
        after = " after it was verified" if self.pinned else ""
        return BundleError(
            f"{self.bundle / name}: {why}: it changed{after} (the folder or its medium is being "
            "altered), and is never read through a link. Copy the bundle to a local disk and run "
            "the command again."
        )

    def read(self, name: str) -> bytes:
        """`name`'s bytes, read once with no link followed: OSError when missing or unreadable,
        BundleError for a link, or (when pinned) for bytes other than the verified ones."""
        path = self.bundle / name
        try:
            no_links(self.bundle, path, str(path))
            data = read_bytes_no_follow(path)
        except UnsafeName:
            raise self._changed(name, "a symbolic link or not a regular file") from None
        except ValueError as exc:  # larger than a document may be
            raise OSError(str(exc)) from None
        if self.pinned is None:
            return data
        actual = hashlib.sha256(data).hexdigest()
        if name == SUMS and actual != self.pinned:
            raise self._changed(name, f"sha256 {actual}, the verified one was {self.pinned}")
        if name != SUMS and self.lines.get(name) != actual:
            raise self._changed(
                name, f"sha256 {actual}, its {SUMS} line says {self.lines.get(name)}"
            )
        return data
