"""Rebuild a full bundle from a delta and what the site holds, on read-only media.

Every blob the archive map references is looked for in the delta first, then in each source in
the order given (bundle folders: the byte range straight out of their image.tar; delta folders;
folders of blobs/sha256/<hex>). Each blob is hashed as it is copied; a copy whose bytes are not
its digest is undone and the next place is tried, so one damaged copy costs nothing when another
is good. The rebuilt image.tar is hashed as it is written and must equal its SHA256SUMS line; the
result is then a bundle that `gapforge verify` checks exactly like the full one (its SHA256SUMS
and signature are the original's). Nothing is written into the delta or the sources.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from gapforge.bundle import IMAGE_TAR, INDEX, SUMS
from gapforge.progress import byte_progress
from gapforge.transfer import ARCHIVE_MAP, DELTA_BLOBS, DELTA_DIR, TransferError, is_delta
from gapforge.transfer.archivemap import ArchiveMap, BlobRef, Inline, parse_map
from gapforge.transfer.delta import CHUNK, BundleFacts, read_facts
from gapforge.transfer.inventory import HeldBlob, Source, blob_folder, scan_sources

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class RebuildResult:
    path: Path
    """The rebuilt bundle folder, `out/<name>-<version>/`."""
    archive_size: int = 0
    archive_sha256: str = ""
    from_delta: list[str] = field(default_factory=list)
    """Digests of the blobs the delta carried."""
    from_sources: dict[str, str] = field(default_factory=dict)
    """digest → the source it was read from (a path)."""
    rejected: list[str] = field(default_factory=list)
    """Damaged copies passed over for a good one: `<digest> in <path>: hashes to …`."""
    seconds: float = 0.0


def _read_map(delta: Path, facts: BundleFacts) -> ArchiveMap:
    where = str(delta / ARCHIVE_MAP)
    try:
        value = json.loads((delta / ARCHIVE_MAP).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TransferError(f"{where}: cannot be read ({exc}): ask for the delta again") from None
    archive = parse_map(value, where)
    if archive.sha256 != facts.archive_sha256:
        raise TransferError(
            f"{where}: made for an archive with sha256 {archive.sha256}, but {SUMS} lists "
            f"{IMAGE_TAR} as {facts.archive_sha256}: the delta's files come from two bundles; "
            "ask for the delta again"
        )
    # bundle.json is authenticated by its SHA256SUMS line; its archive size bounds what is written.
    lines = facts.sums.decode(errors="replace").splitlines()
    index_sha = hashlib.sha256((delta / INDEX).read_bytes()).hexdigest()
    if not any(line.endswith(f"  {INDEX}") and line.startswith(index_sha) for line in lines):
        raise TransferError(
            f"{delta / INDEX}: does not match its {SUMS} line: ask for the delta again"
        )
    expected = facts.index.get("image", {}).get("size")
    if isinstance(expected, int) and expected != archive.size:
        raise TransferError(
            f"{where}: describes {archive.size} bytes, {INDEX} says image.tar has {expected}: "
            "ask for the delta again"
        )
    return archive


def _places(delta: Path, sources: list[Path]) -> tuple[list[Source], list[str]]:
    """Where to look, in order (the delta first), and how each is named in messages."""
    found: list[Source] = []
    if (delta / DELTA_BLOBS).is_dir():
        found.append(blob_folder(delta, delta / DELTA_BLOBS, "the delta"))
    found += scan_sources(sources)
    looked = [f"{delta / DELTA_BLOBS} (the delta)"]
    looked += [
        str(s.path / IMAGE_TAR) if (s.path / IMAGE_TAR).is_file() else str(s.path)
        for s in found
        if s.path != delta
    ]
    return found, looked


def _missing_message(
    missing: list[BlobRef], bad: dict[str, list[str]], facts: BundleFacts, looked: list[str]
) -> str:
    names = facts.blob_names()
    lines = [
        f"{len(missing)} blob{'s' if len(missing) != 1 else ''} of {facts.label}'s {IMAGE_TAR} "
        "cannot be found (a damaged copy counts as missing):"
    ]
    for ref in missing:
        lines.append(f"  {ref.digest} ({names.get(ref.digest, 'a blob')}, {ref.size} bytes)")
        lines += [f"    damaged copy: {problem}" for problem in bad.get(ref.digest, [])]
    lines.append("Looked in: " + "; ".join(looked) + ".")
    lines.append(
        "Pass the folder that holds it with --from (the bundle it came with, or a rebuilt one), "
        "or ask for a delta made against a fresh inventory of this site ('gapforge inventory')."
    )
    return "\n".join(lines)


def _copy_blob(
    held: HeldBlob, target: BinaryIO, hashes: list[hashlib._Hash], advance: Callable[[int], None]
) -> str:
    """Copy one held blob into `target`, feeding every hash; return the blob's sha256 hex ('' when
    it could not be read whole)."""
    digest = hashlib.sha256()
    remaining = held.size
    try:
        with open(held.path, "rb") as source:
            source.seek(held.offset)
            while remaining:
                chunk = source.read(min(CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                for other in hashes:
                    other.update(chunk)
                target.write(chunk)
                remaining -= len(chunk)
                advance(len(chunk))
    except OSError:
        return ""
    return digest.hexdigest() if not remaining else ""


def _write_archive(
    archive: ArchiveMap, candidates: dict[str, list[HeldBlob]], target: Path, result: RebuildResult
) -> tuple[str, list[BlobRef], dict[str, list[str]]]:
    """Write the archive; returns its sha256 hex, the blobs no good copy was found of, and the
    damaged copies seen for each."""
    whole = hashlib.sha256()
    unusable: list[BlobRef] = []
    bad: dict[str, list[str]] = {}
    with byte_progress("rebuilding image.tar", archive.size) as advance, open(target, "wb") as out:
        for segment in archive.segments:
            if isinstance(segment, Inline):
                out.write(segment.data)
                whole.update(segment.data)
                advance(len(segment.data))
                continue
            start = out.tell()
            for held in candidates[segment.digest]:
                attempt = whole.copy()
                actual = _copy_blob(held, out, [attempt], advance)
                if f"sha256:{actual}" == segment.digest:
                    whole = attempt
                    if held.place == "the delta":
                        result.from_delta.append(segment.digest)
                    else:
                        result.from_sources[segment.digest] = str(held.path)
                    break
                where = f"{held.path}" + (f" at byte {held.offset}" if held.offset else "")
                bad.setdefault(segment.digest, []).append(
                    f"{where} hashes to sha256:{actual}"
                    if actual
                    else f"{where} cannot be read whole"
                )
                result.rejected.append(f"{segment.digest} in {bad[segment.digest][-1]}")
                out.seek(start)
                out.truncate()
            else:
                unusable.append(segment)
                out.seek(start + segment.size)  # keep going, to name every bad blob at once
    return whole.hexdigest(), unusable, bad


def rebuild_bundle(delta: Path, sources: list[Path], out: Path) -> RebuildResult:
    """Rebuild the full bundle of `delta` as `out/<name>-<version>/` (atomically) from the delta
    and the blobs `sources` hold. Raises TransferError naming every missing or damaged blob (digest,
    layer, size, each place looked), or when the rebuilt image.tar is not its SHA256SUMS line."""
    start = time.monotonic()
    if not is_delta(delta):
        raise TransferError(
            f"{delta}: not a delta (no {DELTA_DIR}/delta.json and archive-map.json): pass the "
            "folder 'gapforge delta' wrote, copied whole"
        )
    facts = read_facts(delta)
    archive = _read_map(delta, facts)
    found, looked = _places(delta, sources)
    candidates = {
        ref.digest: [
            s.blobs[ref.digest]
            for s in found
            if ref.digest in s.blobs and s.blobs[ref.digest].size == ref.size
        ]
        for ref in archive.blobs
    }
    missing = [ref for ref in archive.blobs if not candidates[ref.digest]]
    if missing:
        raise TransferError(_missing_message(missing, {}, facts, looked))
    final = out / facts.label
    if final.exists():
        raise TransferError(f"{final}: already exists: delete it, or pass another --out folder")
    result = RebuildResult(final, archive.size)
    work = out / f".{facts.label}.partial-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        # Copies, not links: the delta is read-only media, and a link would share its inodes.
        shutil.copytree(
            delta,
            work,
            symlinks=False,
            ignore=lambda d, _n: [DELTA_DIR] if Path(d) == delta else [],
        )
        sha256, unusable, bad = _write_archive(archive, candidates, work / IMAGE_TAR, result)
        if unusable:
            raise TransferError(_missing_message(unusable, bad, facts, looked))
        if sha256 != facts.archive_sha256:
            raise TransferError(
                f"the rebuilt {IMAGE_TAR} hashes to {sha256}, {SUMS} says {facts.archive_sha256} "
                f"(every blob matched its digest): the delta's {ARCHIVE_MAP} is damaged; ask "
                "for the delta again"
            )
        for directory in [work, *(p for p in work.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        for path in work.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
        os.rename(work, final)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise TransferError(
            f"{out}: could not write the rebuilt bundle ({exc.strerror or exc}): pass an --out "
            f"folder you can write to, with {archive.size / 1e9:.1f} GB free"
        ) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    result.archive_sha256 = sha256
    result.seconds = time.monotonic() - start
    return result
