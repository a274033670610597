"""Finding the parts of a media split: which manifest to trust and where each part's copies are.

Sources are read, never written: every file is opened read-only (media may be write-protected).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.parity import block_length
from gapforge.bundle.split_manifest import (
    MANIFEST_NAME,
    METADATA_DIR,
    PartEntry,
    PartsManifest,
    PartsNotTrusted,
    open_manifest,
)
from gapforge.bundle.transfer import TransferError
from gapforge.errors import BundleError
from gapforge.names import UnsafeName
from gapforge.operator.anchor import Anchor
from gapforge.operator.transfer_trust import read_small, release_keys


@dataclass
class Sources:
    manifest: PartsManifest
    payload: bytes
    envelope: bytes
    pinned: bool
    copies: dict[str, list[Path]] = field(default_factory=dict)
    """Part name → the files that hold it (one per medium given; a medium may come twice)."""
    warnings: list[str] = field(default_factory=list)


def _media_folders(paths: Sequence[Path]) -> list[tuple[Path, Path | None]]:
    """(medium folder, the one part file given or None for all) for each argument."""
    found: list[tuple[Path, Path | None]] = []
    for path in paths:
        if path.is_file():
            found.append((path.parent, path))
        elif (path / MANIFEST_NAME).is_file():
            found.append((path, None))
        elif path.is_dir() and any((sub / MANIFEST_NAME).is_file() for sub in path.iterdir()):
            found += [
                (sub, None) for sub in sorted(path.iterdir()) if (sub / MANIFEST_NAME).is_file()
            ]
        else:
            raise BundleError(
                f"{path}: neither a part file nor a medium of a split (a folder holding "
                f"{MANIFEST_NAME}): give the mounted media (disc-01 …), their part files, or the "
                "folder 'gapforge split --out' wrote"
            )
    return found


def find_sources(paths: Sequence[Path], keys: Sequence[Ed25519PublicKey]) -> Sources:
    """The trusted manifest (signature checked with `keys` when given) and every copy of each part.
    With a pinned key, a medium whose manifest fails is reported and its manifest ignored (its part
    is still used: every block is checked against the good manifest). Without one, all manifests
    must agree."""
    media = _media_folders(paths)
    chosen: tuple[PartsManifest, bytes, bytes] | None = None
    warnings: list[str] = []
    payloads: dict[str, list[str]] = {}
    unproven = False
    for folder, _ in media:
        where = str(folder / MANIFEST_NAME)
        try:
            data = read_small(folder / MANIFEST_NAME, where)
            manifest, payload = open_manifest(data, where, keys)
        except (BundleError, TransferError) as exc:
            if not keys:
                raise
            warnings.append(str(exc))
            unproven = unproven or isinstance(exc, PartsNotTrusted)
            continue
        payloads.setdefault(hashlib.sha256(payload).hexdigest(), []).append(folder.name)
        if chosen is None:
            chosen = (manifest, payload, data)
    if chosen is None:
        refusal = PartsNotTrusted if unproven else BundleError  # a failed check, or bad input
        raise refusal(
            "no medium given holds a parts manifest that passes its check:\n  "
            + "\n  ".join(warnings)
        )
    if len(payloads) > 1:
        described = "; ".join(", ".join(names) for names in payloads.values())
        raise BundleError(
            f"the media given hold different parts manifests ({described}): they come from "
            "different splits. Give the media of one split only"
            + ("" if keys else ", and pin the release key with --key to tell the right one")
        )
    manifest, payload, envelope = chosen
    sources = Sources(manifest, payload, envelope, bool(keys), warnings=warnings)
    for folder, only in media:
        for part in manifest.parts:
            path = folder / part.file
            if path.is_symlink():
                raise UnsafeName(
                    f"{path}: a symbolic link where {part.name} should be: a medium holds plain "
                    "part files only, and no link is followed; these media were altered"
                )
            if (only is None or only.name == part.file) and path.is_file():
                sources.copies.setdefault(part.name, []).append(path)
    return sources


def media_keys(paths: Sequence[Path], anchor: Anchor) -> list[Ed25519PublicKey]:
    """The keys the parts manifest must be signed with, by the operator's anchor: the pinned key;
    under the trusted root, the build keys of release metadata verified from it (from --repo, else
    the medium's own `release-metadata/`), once the release the manifest names is on the site's
    channel with the SHA256SUMS the manifest binds; none with --insecure (unpinned). Only the
    manifest's name, version and SHA256SUMS digest are read before its signature is checked, each
    parsed first; no part is touched."""
    if anchor.kind == "key":
        return list(anchor.keys)
    if anchor.kind != "root":
        return []
    folder, _ = _media_folders(paths)[0]
    where = str(folder / MANIFEST_NAME)
    manifest, _ = open_manifest(read_small(folder / MANIFEST_NAME, where), where, ())
    metadata = anchor.metadata or folder / METADATA_DIR
    if anchor.metadata is None and metadata.is_symlink():
        raise UnsafeName(
            f"{where}: {metadata} is a symbolic link: a medium holds plain files and folders "
            "only, and no link is followed; these media were altered"
        )
    name, version = manifest.name, manifest.version
    return list(release_keys(anchor, metadata, name, version, manifest.sums_sha256, where))


def read_block(path: Path, part: PartEntry, block_size: int, index: int) -> bytes | None:
    """Block `index` of a part file if it matches its hash, else None (short, unreadable, wrong)."""
    length = block_length(part.size, block_size, index)
    try:
        with open(path, "rb") as handle:
            handle.seek(index * block_size)
            data = handle.read(length)
    except OSError:
        return None
    if len(data) != length or hashlib.sha256(data).hexdigest() != part.blocks[index]:
        return None
    return data


@dataclass(frozen=True)
class PartCheck:
    part: PartEntry
    path: Path | None
    bad_blocks: list[int]
    sha256_ok: bool

    @property
    def ok(self) -> bool:
        return self.path is not None and not self.bad_blocks and self.sha256_ok


def check_part(path: Path, part: PartEntry, block_size: int) -> PartCheck:
    """Every block of one part file against the manifest, and the whole file's sha256."""
    bad, digest, size = [], hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            for index, expected in enumerate(part.blocks):
                data = handle.read(block_length(part.size, block_size, index))
                digest.update(data)
                size += len(data)
                if hashlib.sha256(data).hexdigest() != expected:
                    bad.append(index)
            extra = handle.read(1)
    except OSError:
        return PartCheck(part, path, list(range(len(part.blocks))), False)
    whole = not extra and size == part.size and digest.hexdigest() == part.sha256
    return PartCheck(part, path, bad, whole)


def ranges(numbers: Sequence[int]) -> str:
    """`3, 7, 10-20`: block numbers, runs collapsed."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
