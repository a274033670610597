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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from gapforge.bundle import IMAGE_TAR, INDEX, SUMS
from gapforge.bundle.archivemap import ArchiveMap, Inline, parse_map
from gapforge.bundle.transfer import (
    ARCHIVE_MAP,
    CHUNK,
    DELTA_BLOBS,
    DELTA_DIR,
    BundleFacts,
    TransferError,
    delta_record,
    is_delta,
    read_facts,
)
from gapforge.operator.anchor import Anchor
from gapforge.operator.delta_check import check_delta, copy_regular_tree
from gapforge.operator.inventory import HeldBlob, Source, blob_folder, scan_sources
from gapforge.operator.transfer_trust import verify_or_refuse
from gapforge.operator.verify_report import VerifyReport
from gapforge.progress import byte_progress

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
    report: VerifyReport | None = None
    """The trust gate's report on the rebuilt bundle (its folder renamed to `path`)."""


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
    looked += [str(s.path) for s in found if s.path != delta]
    return found, looked


@dataclass(frozen=True)
class Wanted:
    """A blob of the archive, or a file of the bundle the delta left out."""

    digest: str
    size: int | None
    what: str
    """`layer 'model'`, `the image config`, `file wheels/x.whl`."""


def _lookup(found: list[Source], wanted: Wanted) -> list[HeldBlob]:
    """Every held copy of `wanted`, in the order of the places (any content with its digest)."""
    copies: dict[tuple[Path, int], HeldBlob] = {}
    for source in found:
        for held_map in (source.blobs, source.files):
            held = held_map.get(wanted.digest)
            if held is not None and wanted.size in (None, held.size):
                copies.setdefault((held.path, held.offset), held)
    return list(copies.values())


def _missing_message(
    missing: list[Wanted], bad: dict[str, list[str]], facts: BundleFacts, looked: list[str]
) -> str:
    lines = [
        f"{len(missing)} blob{'s' if len(missing) != 1 else ''} of {facts.label} cannot be found "
        "(a damaged copy counts as missing):"
    ]
    for item in missing:
        size = f"{item.size} bytes" if item.size is not None else "size unknown"
        lines.append(f"  {item.digest} ({item.what}, {size})")
        lines += [f"    damaged copy: {problem}" for problem in bad.get(item.digest, [])]
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


def _damaged(held: HeldBlob, actual: str) -> str:
    where = f"{held.path}" + (f" at byte {held.offset}" if held.offset else "")
    return f"{where} hashes to sha256:{actual}" if actual else f"{where} cannot be read whole"


def _write_files(
    files: dict[str, Wanted],
    candidates: dict[str, list[HeldBlob]],
    work: Path,
    result: RebuildResult,
    bad: dict[str, list[str]],
) -> list[Wanted]:
    """Put back the bundle files the delta left out; returns those no good copy was found of."""
    unusable = []
    for name, wanted in files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        for held in candidates[wanted.digest]:
            with open(target, "wb") as out:
                actual = _copy_blob(held, out, [], lambda _n: None)
            if f"sha256:{actual}" == wanted.digest:
                result.from_sources[wanted.digest] = str(held.path)
                break
            bad.setdefault(wanted.digest, []).append(_damaged(held, actual))
            result.rejected.append(f"{wanted.digest} in {bad[wanted.digest][-1]}")
        else:
            target.unlink(missing_ok=True)
            unusable.append(wanted)
    return unusable


def _write_archive(
    archive: ArchiveMap,
    blobs: dict[str, Wanted],
    candidates: dict[str, list[HeldBlob]],
    target: Path,
    result: RebuildResult,
    bad: dict[str, list[str]],
) -> tuple[str, list[Wanted]]:
    """Write the archive; returns its sha256 hex and the blobs no good copy was found of (the
    damaged copies seen go into `bad`)."""
    whole = hashlib.sha256()
    unusable: list[Wanted] = []
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
                bad.setdefault(segment.digest, []).append(_damaged(held, actual))
                result.rejected.append(f"{segment.digest} in {bad[segment.digest][-1]}")
                out.seek(start)
                out.truncate()
            else:
                unusable.append(blobs[segment.digest])
                out.seek(start + segment.size)  # keep going, to name every bad blob at once
    return whole.hexdigest(), unusable


def _wanted(
    delta: Path, facts: BundleFacts, archive: ArchiveMap, lines: dict[str, str]
) -> tuple[dict[str, Wanted], dict[str, Wanted]]:
    """The blobs of the archive, and the bundle files the delta left out (by their signed line)."""
    names = facts.blob_names()
    blobs = {
        r.digest: Wanted(r.digest, r.size, names.get(r.digest, "a blob")) for r in archive.blobs
    }
    sizes = {
        str(f.get("name")): f.get("size") for f in delta_record(delta).get("files_left_out", [])
    }
    files = {
        name: Wanted(f"sha256:{sha256}", sizes.get(name), f"file {name}")
        for name, sha256 in lines.items()
        if name != IMAGE_TAR and not (delta / name).is_file()
    }
    return blobs, files


def rebuild_bundle(
    delta: Path, sources: list[Path], out: Path, anchor: Anchor, command: str = "join"
) -> RebuildResult:
    """Rebuild the full bundle of `delta` as `out/<name>-<version>/` (atomically) from the delta
    and the blobs `sources` hold. The delta is checked against `anchor` first (check_delta:
    nothing is read from the sources or written before its signature is proven), and the rebuilt
    folder goes through the trust gate before it is renamed into place. Raises TransferError
    naming every missing or damaged blob (digest, layer, size, each place looked), or when the
    rebuilt image.tar is not its SHA256SUMS line; NotVerified when the result fails its check."""
    start = time.monotonic()
    if not is_delta(delta):
        raise TransferError(
            f"{delta}: not a delta (no {DELTA_DIR}/delta.json and archive-map.json): pass the "
            "folder 'gapforge delta' wrote, copied whole"
        )
    checked = check_delta(delta, anchor)
    facts = read_facts(delta)
    archive = _read_map(delta, facts)
    blobs, files = _wanted(delta, facts, archive, checked.lines)
    for read_only in [delta, *sources]:
        if out.resolve().is_relative_to(read_only.resolve()):
            raise TransferError(
                f"--out {out} is inside {read_only}: the delta and the sources are read only "
                "(removable media, usually); pass an --out folder elsewhere"
            )
    found, looked = _places(delta, sources)
    wanted = [*blobs.values(), *files.values()]
    candidates = {item.digest: _lookup(found, item) for item in wanted}
    missing = [item for item in wanted if not candidates[item.digest]]
    if missing:
        raise TransferError(_missing_message(missing, {}, facts, looked))
    final = out / checked.label
    if final.exists() or final.is_symlink():
        raise TransferError(f"{final}: already exists: delete it, or pass another --out folder")
    result = RebuildResult(final, archive.size)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{checked.label}.rebuild-", dir=out))
    try:
        copy_regular_tree(delta, work, skip=(DELTA_DIR,))
        bad: dict[str, list[str]] = {}
        unusable = _write_files(files, candidates, work, result, bad)
        sha256, unusable_blobs = _write_archive(
            archive, blobs, candidates, work / IMAGE_TAR, result, bad
        )
        unusable = unusable_blobs + unusable
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
        result.report = verify_or_refuse(work, anchor, command)
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
    result.report.bundle = final
    result.archive_sha256 = sha256
    result.seconds = time.monotonic() - start
    return result
