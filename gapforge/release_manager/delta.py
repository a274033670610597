"""`gapforge delta`: a bundle without the blobs the site already holds.

Made against the site's signed inventory or, when nothing can come back out of the gap (a diode),
against the last bundle delivered there (a folder, or a release version the release repository
recorded). The delta holds every file of the bundle but image.tar (SHA256SUMS and its signature
unchanged: they still list image.tar, which the rebuild puts back byte for byte), the archive map,
the blobs the site lacks, and delta.json saying what it was made against.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from gapforge import __version__
from gapforge.atomic import swap_in
from gapforge.bundle import IMAGE_TAR, SUMS
from gapforge.bundle.archivemap import ArchiveMap, BlobRef, map_archive
from gapforge.bundle.transfer import (
    ARCHIVE_MAP,
    CHUNK,
    DELTA_BLOBS,
    DELTA_JSON,
    DELTA_SCHEMA,
    BundleFacts,
    TransferError,
    is_delta,
    read_facts,
)
from gapforge.operator.delta_check import copy_regular
from gapforge.operator.inventory import read_inventory, scan_sources
from gapforge.progress import byte_progress


@dataclass(frozen=True)
class Against:
    """What the site holds, as the delta is made against it."""

    kind: Literal["inventory", "bundle"]
    held: dict[str, int]
    """digest → size."""
    record: dict[str, Any]
    """What delta.json says it was made against."""
    label: str


def against_inventory(path: Path, keys: list[Any] | None = None) -> Against:
    """A signed inventory (read_inventory: checked with `keys` when given)."""
    inventory = read_inventory(path, keys)
    check = inventory["verification"]
    held = {
        digest: int(entry["size"])
        for listing in ("blobs", "files")
        for digest, entry in inventory[listing].items()
    }
    record = {
        "kind": "inventory",
        "sha256": check["sha256"],
        "operator_key": check["fingerprint"],
        "key_pinned": check["pinned"],
        "created": inventory.get("created"),
        "blobs": len(inventory["blobs"]),
        "files": len(inventory["files"]),
    }
    return Against("inventory", held, record, f"the inventory {path} ({len(held)} blobs)")


def against_site_inventory(
    spec: Path, key_paths: list[Path], insecure: bool, option: str = "--against"
) -> Against:
    """The site's inventory `spec`, trusted only when signed by a pinned operator key (`key_paths`,
    received from the site out of band); `insecure` accepts the key the inventory names itself
    (integrity, not origin). Used by `delta --against` and `build --delta-from` alike."""
    from gapforge.bundle.sign import load_public_key
    from gapforge.bundle.transfer import TransferError

    keys = [load_public_key(path) for path in key_paths]
    if not keys and not insecure:
        raise TransferError(
            f"{option} {spec}: an inventory is trusted only when it is signed by the site's "
            "operator key, pinned with --inventory-key OPERATOR.pub.pem (received from the site "
            "out of band; the release repository's metadata names no operator keys). Pass it, "
            "or --insecure-inventory to accept the key the inventory names itself (integrity, "
            "not origin)"
        )
    return against_inventory(spec, keys or None)


def against_spec(spec: Path, key_paths: list[Path], insecure: bool, option: str) -> Against:
    """What `option` names: the site's signed inventory (a file) or the last bundle delivered
    there (a folder)."""
    if spec.is_file():
        return against_site_inventory(spec, key_paths, insecure, option)
    return against_bundle(spec)


def against_bundle(folder: Path) -> Against:
    """The last bundle delivered (its image.tar's headers), standing in for an inventory."""
    facts = read_facts(folder)
    if not (folder / IMAGE_TAR).is_file():
        raise TransferError(
            f"{folder}: no {IMAGE_TAR}: a delta (or an incomplete bundle) cannot stand in for "
            "what the site holds; pass the full bundle or the site's inventory"
        )
    (source,) = scan_sources([folder])
    held = {digest: blob.size for digest, blob in [*source.blobs.items(), *source.files.items()]}
    record = {
        "kind": "bundle",
        "name": facts.index.get("name"),
        "version": facts.index.get("version"),
        "sums_sha256": facts.sums_sha256,
        "blobs": len(source.blobs),
        "files": len(source.files),
    }
    return Against("bundle", held, record, f"the bundle {facts.label} ({len(held)} blobs)")


@dataclass
class DeltaResult:
    path: Path
    included: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    files_left_out: list[dict[str, Any]] = field(default_factory=list)
    """Bundle files (wheels, mostly) the site holds: name, sha256, size."""
    delta_bytes: int = 0
    full_bytes: int = 0
    archive_size: int = 0
    map_seconds: float = 0.0
    seconds: float = 0.0


def _copy_range(source: BinaryIO, offset: int, size: int, target: BinaryIO) -> str:
    """Copy `size` bytes at `offset`; return their sha256 hex."""
    digest = hashlib.sha256()
    source.seek(offset)
    remaining = size
    while remaining:
        chunk = source.read(min(CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        target.write(chunk)
        remaining -= len(chunk)
    return digest.hexdigest() if not remaining else ""


def archive_sha256(path: Path) -> str:
    """The sha256 hex of a whole file, with a progress bar."""
    digest = hashlib.sha256()
    with byte_progress("hashing image.tar", path.stat().st_size) as advance, open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def _fill(
    work: Path,
    facts: BundleFacts,
    archive: ArchiveMap,
    included: list[BlobRef],
    held: dict[str, int],
) -> list[dict[str, Any]]:
    """Fill the delta; returns the files left out because the site holds their bytes."""
    bundle = facts.folder
    files_left_out = []
    for root, _dirs, files in os.walk(bundle):
        for name in sorted(files):
            path = Path(root) / name
            relative = path.relative_to(bundle).as_posix()
            if relative == IMAGE_TAR or path.is_symlink():
                continue
            sha256, size = facts.lines.get(relative), path.stat().st_size
            if sha256 is not None and held.get(f"sha256:{sha256}") == size:
                files_left_out.append({"name": relative, "sha256": sha256, "size": size})
                continue
            (work / relative).parent.mkdir(parents=True, exist_ok=True)
            copy_regular(path, work / relative)  # a copy: a link would share the source's inodes
    blobs = work / DELTA_BLOBS
    blobs.mkdir(parents=True)
    names = facts.blob_names()
    total = sum(ref.size for ref in included)
    with (
        byte_progress("copying the blobs the site lacks", total) as advance,
        open(bundle / IMAGE_TAR, "rb") as source,
    ):
        for ref in included:
            with open(blobs / ref.hex, "wb") as target:
                actual = _copy_range(source, ref.offset, ref.size, target)
            if f"sha256:{actual}" != ref.digest:
                raise TransferError(
                    f"{bundle / IMAGE_TAR}: blob {ref.digest} ({names.get(ref.digest, 'a blob')}, "
                    f"{ref.size} bytes) hashes to sha256:{actual or '(cut short)'}: the bundle is "
                    "damaged; run 'gapforge verify' on it and build or copy it again"
                )
            advance(ref.size)
    (work / ARCHIVE_MAP).write_bytes(json.dumps(archive.to_json(), indent=1).encode() + b"\n")
    return files_left_out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def make_delta(
    bundle: Path, against: Against, out: Path, check_archive: bool = True
) -> DeltaResult:
    """Write `out/<name>-<version>.delta/` (atomically) holding `bundle` without the blobs
    `against` holds. With `check_archive`, image.tar is hashed first and must match its
    SHA256SUMS line (a delta of a damaged bundle would fail only inside the gap)."""
    start = time.monotonic()
    if is_delta(bundle) or not (bundle / IMAGE_TAR).is_file():
        raise TransferError(
            f"{bundle}: no {IMAGE_TAR}: pass the full bundle folder 'gapforge build' wrote (a "
            "delta cannot be made from a delta)"
        )
    facts = read_facts(bundle)
    archive = map_archive(bundle / IMAGE_TAR, facts.archive_sha256)
    map_seconds = time.monotonic() - start
    if check_archive:
        actual = archive_sha256(bundle / IMAGE_TAR)
        if actual != facts.archive_sha256:
            raise TransferError(
                f"{bundle / IMAGE_TAR}: sha256 is {actual}, {SUMS} says {facts.archive_sha256}: "
                "the bundle is damaged; run 'gapforge verify' on it and build or copy it again"
            )
    names = facts.blob_names()
    included = [ref for ref in archive.blobs if against.held.get(ref.digest) != ref.size]
    left_out = [ref for ref in archive.blobs if against.held.get(ref.digest) == ref.size]

    def listed(refs: list[BlobRef]) -> list[dict[str, Any]]:
        return [
            {"digest": r.digest, "size": r.size, "what": names.get(r.digest, "a blob")}
            for r in refs
        ]

    result = DeltaResult(
        out / f"{facts.label}.delta", listed(included), listed(left_out),
        full_bytes=_folder_bytes(bundle), archive_size=archive.size, map_seconds=map_seconds,
    )  # fmt: skip
    record = {
        "schema": DELTA_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gapforge_version": __version__,
        "bundle": {"name": facts.index.get("name"), "version": facts.index.get("version"),
                   "sums_sha256": facts.sums_sha256},
        "against": against.record,
        "archive": {"file": IMAGE_TAR, "size": archive.size, "sha256": facts.archive_sha256,
                    "inline_bytes": archive.inline_bytes},
        "included": result.included,
        "left_out": result.left_out,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".{result.path.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir()
        result.files_left_out = _fill(work, facts, archive, included, against.held)
        record["files_left_out"] = result.files_left_out
        (work / DELTA_JSON).write_bytes(json.dumps(record, indent=2).encode() + b"\n")
        for directory in [work, *(p for p in work.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        swap_in(work, result.path)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise TransferError(
            f"{out}: could not write the delta ({exc.strerror or exc}): pass an --out folder "
            "you can write to, with room for it"
        ) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    result.delta_bytes = _folder_bytes(result.path)
    result.seconds = time.monotonic() - start
    return result
