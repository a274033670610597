"""`gapforge inventory`: the blobs and releases a site holds, signed with the operator key.

Read from bundle folders (their image.tar's headers only: a verified bundle's archive is content
addressed, so the member names are the digests; `verify_blobs` hashes them anyway), previously
rebuilt bundles (bundle folders too), delta folders (their delta/blobs), plain folders of
`blobs/sha256/<hex>` and folders of any of these. Blobs of INLINE_LIMIT bytes or less are not
listed: every delta carries them inline.

The bundles' other files (the operator wheels, mostly) are content too: `files` lists them by the
sha256 their bundle's SHA256SUMS gives, so a delta leaves out the wheels the site already holds.

The inventory leaves the gap, so it names places by bundle name or folder name, never by host
path. It is a DSSE envelope (payloadType INVENTORY_TYPE) signed with the operator key, whose public
half rides in the payload: without a pinned key a reader can still tell which key signed it (and
that the file was not damaged), never silently taken as proof of origin.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gapforge import __version__
from gapforge.bundle import IMAGE_TAR, INDEX, SUMS
from gapforge.bundle.archivemap import INLINE_LIMIT, map_archive
from gapforge.bundle.dsse import envelope_payload_unverified, open_envelope, sign_envelope
from gapforge.bundle.sign import SigningKey, fingerprint
from gapforge.bundle.sums import HashJob, hash_jobs, job_bytes, parse_sums
from gapforge.bundle.transfer import (
    DELTA_BLOBS,
    INVENTORY_SCHEMA,
    INVENTORY_TYPE,
    TransferError,
    is_delta,
)
from gapforge.names import UnsafeName, component, no_links, relative_path
from gapforge.operator.transfer_trust import TransferNotTrusted
from gapforge.progress import byte_progress

_HEX = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class HeldBlob:
    """Where one blob's bytes can be read: a byte range of a file (a whole file for a blob folder)."""

    digest: str
    size: int
    path: Path
    offset: int
    place: str
    """The source, as the inventory names it: `bundle <name>-<version>`, `folder <name>`."""


@dataclass
class Source:
    """One place that holds blobs: a bundle, a delta or a blob folder."""

    path: Path
    place: str
    blobs: dict[str, HeldBlob] = field(default_factory=dict)
    files: dict[str, HeldBlob] = field(default_factory=dict)
    """A bundle's files other than image.tar, by their SHA256SUMS line (`sha256:<hex>`)."""
    release: dict[str, str] | None = None
    """For a bundle: its name, version and the sha256 of its SHA256SUMS."""


def _bundle_label(folder: Path) -> tuple[str, dict[str, str] | None]:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        name = component(index["name"], f"{folder / INDEX}: name")
        version = component(index["version"], f"{folder / INDEX}: version")
    except (OSError, ValueError, KeyError, TypeError, RecursionError, UnsafeName):
        return f"bundle {folder.name}", None  # not a name to carry out: the folder's own
    sums = folder / SUMS
    digest = hashlib.sha256(sums.read_bytes()).hexdigest() if sums.is_file() else ""
    return f"bundle {name}-{version}", {"name": name, "version": version, "sums_sha256": digest}


def blob_folder(path: Path, folder: Path, place: str) -> Source:
    source = Source(path, place)
    for blob in sorted(folder.iterdir()) if folder.is_dir() else []:
        if _HEX.match(blob.name) and blob.is_file() and not blob.is_symlink():
            digest = f"sha256:{blob.name}"
            source.blobs[digest] = HeldBlob(digest, blob.stat().st_size, blob, 0, place)
    return source


def _files(source: Source) -> None:
    """The files SHA256SUMS lists that are present (the delta's or bundle's own wheels, …)."""
    sums = source.path / SUMS
    if not sums.is_file():
        return
    lines, _ = parse_sums(sums.read_bytes().decode(errors="replace"))
    for line in lines:
        path = source.path / line.name
        if line.name == IMAGE_TAR or not path.is_file() or path.is_symlink():
            continue
        no_links(source.path, path, str(sums))  # a folder on the way may be a link out
        size = path.stat().st_size
        if size > INLINE_LIMIT:
            digest = f"sha256:{line.sha256}"
            source.files[digest] = HeldBlob(digest, size, path, 0, source.place)


def _bundle(path: Path) -> Source:
    place, release = _bundle_label(path)
    source = Source(path, place, release=release)
    _files(source)
    for ref in map_archive(path / IMAGE_TAR).blobs:
        source.blobs[ref.digest] = HeldBlob(
            ref.digest, ref.size, path / IMAGE_TAR, ref.offset, place
        )
    return source


def _one(path: Path) -> Source | None:
    if (path / IMAGE_TAR).is_file():
        return _bundle(path)
    if is_delta(path):
        delta = blob_folder(path, path / DELTA_BLOBS, f"delta {path.name}")
        _files(delta)
        return delta
    if (path / "blobs" / "sha256").is_dir():
        return blob_folder(path, path / "blobs" / "sha256", f"folder {path.name}")
    if path.name == "sha256" and path.is_dir():
        return blob_folder(path, path, f"folder {path.parent.name}/sha256")
    return None


def scan_sources(paths: Sequence[Path]) -> list[Source]:
    """Each path as a bundle, a delta, a blob folder, or a folder of bundles and deltas (its
    subfolders, half-written ones skipped). Raises TransferError for a path that is none of these."""
    sources: list[Source] = []
    for path in paths:
        if not path.is_dir():
            raise TransferError(
                f"{path}: no such folder: pass bundle folders, delta folders, folders of "
                "blobs/sha256/<hex>, or a folder holding bundles"
            )
        one = _one(path)
        if one is not None:
            sources.append(one)
            continue
        inside = [
            found
            for child in sorted(path.iterdir())
            if child.is_dir() and not child.name.startswith(".")
            for found in [_one(child)]
            if found is not None
        ]
        if not inside:
            raise TransferError(
                f"{path}: holds no bundle (image.tar), no delta (delta/delta.json), no "
                "blobs/sha256/ folder, and no subfolder with one: pass the folder the bundles were "
                "copied into"
            )
        sources.extend(inside)
    return sources


def _damaged(sources: list[Source]) -> list[dict[str, str]]:
    """Hash every held blob; drop the ones whose bytes are not their digest; say which."""
    jobs = {
        f"{number}:{kind}:{digest}": (source, held)
        for number, source in enumerate(sources)
        for kind, held_map in (("blob", source.blobs), ("file", source.files))
        for digest, held in held_map.items()
    }
    hash_list = [HashJob(label, h.path, h.offset, h.size) for label, (_, h) in jobs.items()]
    with byte_progress("hashing every held blob", job_bytes(hash_list)) as advance:
        results = hash_jobs(hash_list, advance)
    damaged = []
    for label, (source, held) in jobs.items():
        result = results[label]
        if result.sha256 is None or f"sha256:{result.sha256}" != held.digest:
            held_map = source.blobs if ":blob:" in label else source.files
            del held_map[held.digest]
            damaged.append(
                {
                    "digest": held.digest,
                    "place": held.place,
                    "problem": result.error or f"hashes to sha256:{result.sha256}",
                }
            )
    return damaged


def make_inventory(sources: list[Path], verify_blobs: bool = False) -> dict[str, Any]:
    """Every blob (digest → size and the places holding it) and every release the sources hold;
    with `verify_blobs`, each blob is hashed and a damaged one is left out and listed."""
    scanned = scan_sources(sources)
    damaged = _damaged(scanned) if verify_blobs else []
    blobs: dict[str, dict[str, Any]] = {}
    files: dict[str, dict[str, Any]] = {}
    for source in scanned:
        for listing, held_map in ((blobs, source.blobs), (files, source.files)):
            for digest, held in held_map.items():
                entry = listing.setdefault(digest, {"size": held.size, "held_in": []})
                if held.place not in entry["held_in"]:
                    entry["held_in"].append(held.place)
    releases = [{**source.release, "held_in": source.place} for source in scanned if source.release]
    return {
        "schema": INVENTORY_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gapforge_version": __version__,
        "verified_blobs": verify_blobs,
        "blobs": dict(sorted(blobs.items())),
        "files": dict(sorted(files.items())),
        "releases": sorted(releases, key=lambda r: (r["name"], r["version"])),
        "damaged": damaged,
    }


def write_inventory(inventory: dict[str, Any], key: SigningKey, path: Path) -> Path:
    """Sign `inventory` (DSSE, with the signer's public key in the payload) and write it to
    `path` atomically; returns `path`."""
    payload = {
        **inventory,
        "operator_key": {"fingerprint": key.fingerprint, "public_pem": key.public_pem.decode()},
    }
    data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    envelope = sign_envelope(data, INVENTORY_TYPE, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_bytes(envelope)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise TransferError(
            f"{path}: could not write the inventory ({exc.strerror or exc}): pass --out in a "
            "folder you can write to"
        ) from None
    return path


def _embedded_key(payload: dict[str, Any], where: str) -> Ed25519PublicKey:
    pem = (payload.get("operator_key") or {}).get("public_pem")
    try:
        key = load_pem_public_key(str(pem).encode())
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise TransferError(f"{where}: names no Ed25519 operator key: not a gapforge inventory")
    return key


def check_inventory_names(value: dict[str, Any], where: str) -> None:
    """Every name an inventory carries, parsed once: blob and file digests are `sha256:<hex>` with
    a size >= 0, places (`held_in`) plain relative paths, releases' name and version single
    components and their SHA256SUMS digest 64 hex digits; TransferError or UnsafeName otherwise."""
    for listing in ("blobs", "files"):
        entries = value.setdefault(listing, {})
        if not isinstance(entries, dict):
            raise TransferError(f"{where}: {listing} is not a map of digest → {{size, held_in}}")
        for digest, entry in entries.items():
            size = entry.get("size") if isinstance(entry, dict) else None
            if not _DIGEST.match(digest) or not isinstance(size, int) or isinstance(size, bool):
                raise TransferError(
                    f"{where}: {listing}: {digest[:80]!r} is not sha256:<hex> with a size >= 0: "
                    "ask the site for a fresh inventory"
                )
            if size < 0 or not isinstance(entry.get("held_in", []), list):
                raise TransferError(f"{where}: {listing}: {digest}: size or held_in malformed")
            for place in entry.get("held_in", []):
                relative_path(place, f"{where}: {listing}: {digest}: held_in")
    releases = value.setdefault("releases", [])
    if not isinstance(releases, list) or not all(isinstance(r, dict) for r in releases):
        raise TransferError(f"{where}: releases is not a list of objects")
    for number, release in enumerate(releases):
        component(release.get("name"), f"{where}: releases[{number}].name")
        component(release.get("version"), f"{where}: releases[{number}].version")
        relative_path(release.get("held_in"), f"{where}: releases[{number}].held_in")
        if not _HEX.match(str(release.get("sums_sha256", ""))):
            raise TransferError(f"{where}: releases[{number}].sums_sha256 is not 64 hex digits")


def read_inventory(path: Path, keys: Sequence[Ed25519PublicKey] | None = None) -> dict[str, Any]:
    """The inventory at `path`. With `keys`, its signature must verify with one of them (else
    TransferError); without, it is checked against the key it names, and `verification` says
    that key's fingerprint and `pinned: false`. The result carries `verification`: path, the
    envelope's sha256, the signer's fingerprint, pinned."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TransferError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    pinned = bool(keys)
    try:
        candidates = (
            list(keys) if keys else [_embedded_key(envelope_payload_unverified(data), str(path))]
        )
        payload, problems = open_envelope(data, INVENTORY_TYPE, candidates)
    except RecursionError:
        raise TransferError(f"{path}: not a DSSE envelope (JSON nested too deep)") from None
    if payload is None:
        fix = (
            "ask the site for a fresh inventory signed with its operator key, or pass that key"
            if pinned
            else "the file was damaged or altered; ask the site for it again"
        )
        raise TransferNotTrusted(f"{path}: refused: {'; '.join(problems)}: {fix}")
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise TransferError(f"{path}: its signed payload is not JSON ({exc})") from None
    if not isinstance(value, dict) or value.get("schema") != INVENTORY_SCHEMA:
        raise TransferError(f"{path}: not a gapforge inventory (schema {INVENTORY_SCHEMA})")
    check_inventory_names(value, str(path))
    signer = next(
        key for key in candidates if open_envelope(data, INVENTORY_TYPE, [key])[0] is not None
    )
    value["verification"] = {
        "path": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "fingerprint": fingerprint(signer),
        "pinned": pinned,
    }
    return value
