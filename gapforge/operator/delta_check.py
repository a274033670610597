"""A delta, checked before anything it names is touched, and copied without following a link.

In order, before the rebuild reads a blob or writes a byte: no symbolic link, device or FIFO
anywhere in the delta; its SHA256SUMS parses, lists bundle.json, and its signature is proven by a
key the operator's anchor names (gapforge.operator.transfer_trust: the pinned key, or a build key of release
metadata verified from the trusted root, for this very release and SHA256SUMS); bundle.json is the
file its signed line names, and its name and version are single plain components; every other file
of the delta (but delta/ and release/) is one SHA256SUMS lists. With --insecure the delta's own key
is used, which proves integrity, not origin (the caller says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import INDEX, PUBLIC_KEY, RELEASE_DIR, SIGNATURE, SUMS
from gapforge.bundle.sign import SIGNATURE_SIZE, fingerprint, load_public_key, signature_valid
from gapforge.bundle.sums import parse_sums
from gapforge.bundle.transfer import DELTA_DIR, TransferError
from gapforge.names import component, open_regular, relative_path
from gapforge.operator.anchor import Anchor
from gapforge.operator.transfer_trust import (
    TransferNotTrusted,
    read_small,
    refuse_links,
    release_keys,
)


@dataclass(frozen=True)
class CheckedDelta:
    """What the check proved about a delta: the only source of its name, version and index."""

    folder: Path
    name: str
    version: str
    index: dict[str, Any]
    sums: bytes
    lines: dict[str, str]
    """SHA256SUMS: file name (a plain relative path) → sha256 hex."""
    signer: str
    pinned: bool

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


def _anchored(anchor: Anchor, delta: Path, index_name: tuple[str, str], sums: bytes) -> list[Any]:
    if anchor.kind == "key":
        return list(anchor.keys)
    if anchor.kind == "root":
        metadata = anchor.metadata or delta / RELEASE_DIR / "metadata"
        name, version = index_name
        digest = hashlib.sha256(sums).hexdigest()
        return list(release_keys(anchor, metadata, name, version, digest, f"{delta / SUMS}"))
    read_small(delta / PUBLIC_KEY, str(delta))  # a regular file, not a link
    return [load_public_key(delta / PUBLIC_KEY)]


def check_delta(delta: Path, anchor: Anchor) -> CheckedDelta:
    """The delta at `delta`, checked against `anchor` (module docstring); UnsafeName (exit 2) for a
    link or an unsafe name, TransferNotTrusted (exit 1) for a signature or file not proven."""
    where = str(delta)
    refuse_links(delta, where)
    sums = read_small(delta / SUMS, where)
    signature = read_small(delta / SIGNATURE, where, SIGNATURE_SIZE)
    try:
        text = sums.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TransferNotTrusted(f"{delta / SUMS}: not UTF-8 ({exc}): not a bundle's") from None
    parsed, problems = parse_sums(text)
    if problems:
        raise TransferNotTrusted(f"{delta / SUMS}: refused: {'; '.join(problems[:3])}")
    lines = {line.name: line.sha256 for line in parsed}
    index_bytes = read_small(delta / INDEX, where)
    if lines.get(INDEX) != hashlib.sha256(index_bytes).hexdigest():
        raise TransferNotTrusted(
            f"{delta / INDEX}: does not match its {SUMS} line: the delta was altered; ask for it again"
        )
    try:
        index = json.loads(index_bytes)
    except (ValueError, RecursionError) as exc:
        raise TransferError(f"{delta / INDEX}: not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise TransferError(f"{delta / INDEX}: not a JSON object: not a bundle's bundle.json")
    name = component(index.get("name"), f"{delta / INDEX}: name")
    version = component(index.get("version"), f"{delta / INDEX}: version")
    keys = _anchored(anchor, delta, (name, version), sums)
    signer = next(
        (
            key
            for key in keys
            if len(signature) == SIGNATURE_SIZE and signature_valid(key, sums, signature)
        ),
        None,
    )
    if signer is None:
        named = ", ".join(fingerprint(key) for key in keys) or "none"
        raise TransferNotTrusted(
            f"{delta / SIGNATURE}: does not prove {SUMS} with a key the trust anchor names "
            f"({anchor.source or anchor.kind}: {named}): the delta was altered or signed by someone "
            "else. Nothing was rebuilt; ask the release manager for the delta again"
        )
    _only_listed(delta, lines)
    return CheckedDelta(
        delta, name, version, index, sums, lines, fingerprint(signer), anchor.kind != "insecure"
    )


def _only_listed(delta: Path, lines: dict[str, str]) -> None:
    """Every file of the delta but delta/, release/ and the signature files is listed."""
    for dirpath, _dirs, files in os.walk(delta):
        for file in files:
            name = (Path(dirpath) / file).relative_to(delta).as_posix()
            top = name.split("/", 1)[0]
            if name in lines or name in (SUMS, SIGNATURE) or top in (DELTA_DIR, RELEASE_DIR):
                continue
            raise TransferNotTrusted(
                f"{delta / name}: a file {SUMS} does not list: the delta was altered; ask for it again"
            )


def copy_regular_tree(source: Path, target: Path, skip: tuple[str, ...]) -> None:
    """Copy the plain files and folders under `source` into `target` (which exists), leaving out
    the top-level names in `skip`: every name parsed (gapforge.names), every file opened without
    following a link and copied (never linked, so no inode is shared), a link refused."""
    refuse_links(source, str(source))
    for dirpath, dirs, files in os.walk(source):
        here = Path(dirpath)
        if here == source:
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        for name in sorted(dirs):
            relative = relative_path((here / name).relative_to(source).as_posix(), str(source))
            (target / relative).mkdir(mode=0o755)
        for name in sorted(files):
            relative = relative_path((here / name).relative_to(source).as_posix(), str(source))
            copy_regular(here / name, target / relative)


def copy_regular(source: Path, target: Path) -> None:
    """A copy of the regular file `source` (opened with O_NOFOLLOW) as the new file `target`
    (created exclusively, so an existing name or link there is never written through), 0644."""
    with (
        os.fdopen(open_regular(source), "rb") as reader,
        os.fdopen(
            os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb"
        ) as writer,
    ):
        shutil.copyfileobj(reader, writer, 4 * 1024 * 1024)
