"""`--scan`: the clean room (ClamAV's own side, the database and the clamscan run: gapforge.clamscan). ClamAV's `clamscan` over every file of a bundle and over the contents of
every layer inside image.tar, before anything is loaded.

The layers are tars inside the image archive: their regular files are streamed out, by byte
range, into a private temporary folder (mode 0700) under names this module makes up
(`<layer>/<shard>/<number>`), so no name inside a layer ever becomes a path here: `..`, absolute
names and links cannot place a file outside the folder. Symbolic and hard links, devices and FIFOs
carry no bytes of their own and are not extracted. Then ONE clamscan process reads the list of
every file (the signature database loads once: seconds with the full database), and each hit is
mapped back to "layer 'model' (sha256:…), path opt/x" or "bundle file wheels/x.whl".

ClamAV 1.4 cannot scan a file of 2 GiB or more and by default skips files over 100 MB as clean: the
limits are raised to the most it accepts and `--alert-exceeds-max` makes it say when one is still
exceeded, so such a file is reported as not scanned, never passed silently. Everything fails
closed: no clamscan, no signatures, or an error of clamscan's is an error, not a clean result.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from gapforge.bundle import IMAGE_TAR
from gapforge.bundle.imagetar import BLOB_PREFIX, ImageArchive, read_archive
from gapforge.bundle.sums import bundle_files, default_workers
from gapforge.clamscan import (
    ENGINE_FILE_LIMIT,
    LIMIT_SIGNATURE,
    Finding,
    ScanError,
    ScanReport,
    Target,
    choose_database,
    find_clamscan,
    run_clamscan,
)
from gapforge.clamscan import scan_problems as scan_problems  # re-exported: verify's import
from gapforge.progress import byte_progress, step

CHUNK = 4 * 1024 * 1024
SHARD = 1000
"""Extracted files per folder."""
MAX_EXPANSION = 16
"""A layer may unpack to at most this many times its size in the archive (or MIN_LAYER_BUDGET):
a compression bomb is refused before it fills --scan-tmp."""
MIN_LAYER_BUDGET = 256 * 1024 * 1024
MAX_MEMBERS = 500_000
"""Members of one layer: far above a real layer (a CUDA layer holds tens of thousands)."""

# --- streaming the layers out -------------------------------------------------------------------


class ByteRange(io.RawIOBase):
    """A read-only, seekable window onto `size` bytes of `handle` from `offset`: one layer blob."""

    def __init__(self, handle: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self._handle, self._offset, self._size, self._position = handle, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        self._handle.seek(self._offset + self._position)
        data = self._handle.read(wanted)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def member_path(name: str) -> tuple[str, str]:
    """A layer member's name as reported (normalized) and why it is unsafe ('' when it is not)."""
    why = ""
    if name.startswith("/"):
        why = "an absolute name"
    if ".." in name.split("/"):
        why = "a name with '..' that leaves the image root"
    normalized = posixpath.normpath("/" + name).lstrip("/") if name else ""
    return (name if why else normalized or "."), why


_SKIPPED_KINDS = (
    ("symlink", tarfile.TarInfo.issym),
    ("hardlink", tarfile.TarInfo.islnk),
    ("device", tarfile.TarInfo.isdev),
)


@dataclass
class Extracted:
    """One layer's (or the archive's own small members') share of the work."""

    targets: dict[str, Target] = field(default_factory=dict)
    unsafe_names: list[tuple[str, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    empty: int = 0


def _copy(
    source: IO[bytes], path: Path, advance: Callable[[int], None], room: int | None = None
) -> int:
    """Stream `source` into a new file (never through a link: O_EXCL|O_NOFOLLOW); LayerBomb
    past `room` bytes."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
        while data := source.read(CHUNK):
            written += len(data)
            if room is not None and written > room:
                raise LayerBomb("bytes")
            out.write(data)
            advance(len(data))
    return written


class LayerBomb(Exception):
    """A layer unpacks past its cap (`bytes` or `members`); scan_bundle turns it into a ScanError."""


def layer_budget(size: int) -> int:
    """The most bytes a layer of `size` bytes in the archive may unpack to."""
    return max(MAX_EXPANSION * size, MIN_LAYER_BUDGET)


def extract_layer(
    archive: Path,
    offset: int,
    size: int,
    label: str,
    folder: Path,
    advance: Callable[[int], None] = lambda _n: None,
) -> Extracted:
    """Every regular file of the layer tar at `archive[offset:offset+size]` into `folder`, under
    made-up names; `label` (`layer 'model' (sha256:…)`) starts each target's `where`."""
    result = Extracted()
    folder.mkdir(mode=0o700)
    number = 0
    room = layer_budget(size)
    with (
        open(archive, "rb") as handle,
        tarfile.open(
            fileobj=io.BufferedReader(ByteRange(handle, offset, size), CHUNK), mode="r:*"
        ) as layer,
    ):
        for members, info in enumerate(layer, start=1):
            if members > MAX_MEMBERS:
                raise ScanError(_bomb_message(label, size, f"more than {MAX_MEMBERS} members"))
            if not info.isfile():
                if not info.isdir():
                    kind = next((k for k, test in _SKIPPED_KINDS if test(info)), "fifo")
                    result.skipped[kind] = result.skipped.get(kind, 0) + 1
                continue
            name, why = member_path(info.name)
            where = f"{label}, path {name}"
            if why:
                result.unsafe_names.append((where, why))
            if info.size > ENGINE_FILE_LIMIT:
                result.findings.append(Finding(IMAGE_TAR, where, LIMIT_SIGNATURE + "MaxFileSize"))
                advance(info.size)
                continue
            shard = folder / f"{number // SHARD:04d}"
            shard.mkdir(mode=0o700, exist_ok=True)
            path = shard / f"{number:07d}"
            number += 1
            source = layer.extractfile(info)
            if source is None:  # not reached for regular files; kept for the type checker
                continue
            try:
                with source:
                    copied = _copy(source, path, advance, room)
            except LayerBomb:
                raise ScanError(
                    _bomb_message(label, size, f"more than {room} bytes unpacked")
                ) from None
            room -= copied
            result.bytes += copied
            result.empty += copied == 0
            result.targets[str(path)] = Target(IMAGE_TAR, where)
    return result


def _bomb_message(label: str, size: int, what: str) -> str:
    return (
        f"{label}: {size} bytes in the archive hold {what} (the cap is {MAX_EXPANSION} times its "
        f"size, at least {MIN_LAYER_BUDGET} bytes, and {MAX_MEMBERS} members): a compression or "
        "member-count bomb, or a layer no build of gapforge writes. Nothing was scanned and the "
        "unpacked files were removed; do not load this bundle"
    )


def layer_names(index: dict[str, Any]) -> dict[str, str]:
    """digest → name, from bundle.json's `image.layers`."""
    layers = index.get("image", {}).get("layers", [])
    return {layer.get("digest", ""): str(layer.get("name")) for layer in layers}


def extract_archive(
    image: ImageArchive, names: dict[str, str], folder: Path, workers: int
) -> Extracted:
    """Every layer's files, plus the archive's own members (index, manifests, config) as they are."""
    total = Extracted()
    layers = [image.members[BLOB_PREFIX + d.removeprefix("sha256:")] for d in image.layer_digests]
    layer_blobs = {m.name for m in layers}
    own = [m for m in image.members.values() if m.name not in layer_blobs]
    with byte_progress("extracting layers", sum(m.size for m in layers)) as advance:
        jobs = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for number, (digest, member) in enumerate(
                zip(image.layer_digests, layers, strict=True)
            ):
                name = f"'{names[digest]}'" if digest in names else str(number)
                label = f"layer {name} ({digest})"
                jobs.append(
                    pool.submit(
                        extract_layer,
                        image.path,
                        member.offset,
                        member.size,
                        label,
                        folder / f"layer-{number:03d}",
                        advance,
                    )
                )
            for job in jobs:
                part = job.result()
                total.targets.update(part.targets)
                total.unsafe_names += part.unsafe_names
                total.findings += part.findings
                total.bytes += part.bytes
                total.empty += part.empty
                for kind, count in part.skipped.items():
                    total.skipped[kind] = total.skipped.get(kind, 0) + count
    own_folder = folder / "archive"
    own_folder.mkdir(mode=0o700)
    with open(image.path, "rb") as handle:
        for number, member in enumerate(sorted(own, key=lambda m: m.name)):
            path = own_folder / f"{number:07d}"
            source = io.BufferedReader(ByteRange(handle, member.offset, member.size))
            copied = _copy(source, path, lambda _n: None)
            total.bytes += copied
            total.empty += copied == 0
            total.targets[str(path)] = Target(IMAGE_TAR, f"{IMAGE_TAR} member {member.name}")
    return total


# --- the whole scan ------------------------------------------------------------------------------


def _bundle_targets(bundle: Path) -> tuple[dict[str, Target], list[str]]:
    """Every bundle file but image.tar (its members and layers are scanned unpacked), by path."""
    targets, errors = {}, []
    for name in bundle_files(bundle):
        path = bundle / name
        if name == IMAGE_TAR or path.is_symlink():
            continue  # a symlink is verify's problem to report; clamscan would not follow it
        if "\n" in str(path):
            errors.append(f"bundle file {name!r}: a name with a line break cannot be scanned")
            continue
        targets[str(path)] = Target(name, f"bundle file {name}")
    return targets, errors


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ScanError(
            f"{folder}: {free / 1e9:.1f} GB free, the layers need {needed / 1e9:.1f} GB unpacked: "
            "pass --scan-tmp FOLDER on a disk with room (or set TMPDIR)"
        )


def _read_image(bundle: Path) -> ImageArchive:
    image = read_archive(bundle / IMAGE_TAR)
    if image.problems:
        raise ScanError(
            f"{bundle / IMAGE_TAR}: cannot be scanned: {'; '.join(image.problems)} (verify it first)"
        )
    return image


def scan_bundle(
    bundle: Path,
    database: Path | None,
    workers: int | None = None,
    scan_tmp: Path | None = None,
    index: dict[str, Any] | None = None,
    image: ImageArchive | None = None,
) -> ScanReport:
    """clamscan over every bundle file and every file of every layer of image.tar, unpacked into a
    private folder under `scan_tmp` (default $TMPDIR) that is always removed. `index` and `image`:
    the verified bundle.json and archive (verify passes them: it scans a proven bundle only).
    Raises ScanError when no scan can be made (a layer over its unpacking cap included); hits,
    unscanned files and clamscan's errors go into the report."""
    start = time.monotonic()
    clamscan = find_clamscan()
    database, files = choose_database(database)
    if not (bundle / IMAGE_TAR).is_file():
        raise ScanError(
            f"{bundle}: no {IMAGE_TAR}: pass a bundle folder that 'gapforge build' wrote"
        )
    report = ScanReport(bundle, database, database_files=files)
    report.workers = workers or min(4, default_workers())
    image = image or _read_image(bundle)
    index = index or {}
    targets, errors = _bundle_targets(bundle)
    report.errors += errors
    parent = scan_tmp or Path(tempfile.gettempdir())
    layer_bytes = sum(image.members[BLOB_PREFIX + d[7:]].size for d in image.layer_digests)
    _check_space(parent, layer_bytes)
    step(f"scanning {bundle.name} with ClamAV ({database})")
    folder = Path(tempfile.mkdtemp(prefix="gapforge-scan-", dir=parent))  # mode 0700
    try:
        extracted = extract_archive(image, layer_names(index), folder, report.workers)
        report.extract_seconds = time.monotonic() - start
        report.bytes_extracted = extracted.bytes
        report.unsafe_names, report.skipped = extracted.unsafe_names, extracted.skipped
        report.findings += extracted.findings
        targets.update(extracted.targets)
        sizes = [Path(p).stat().st_size for p, t in targets.items() if t.file != IMAGE_TAR]
        report.bytes_scanned = extracted.bytes + sum(sizes)
        report.files_listed = len(targets)
        report.files_empty = extracted.empty + sizes.count(0)
        scan_start = time.monotonic()
        output = run_clamscan(clamscan, database, targets, folder, report.bytes_scanned)
        report.scan_seconds = time.monotonic() - scan_start
    except OSError as exc:  # a full --scan-tmp, an unreadable archive: no scan, never a clean one
        raise ScanError(
            f"{bundle}: the scan could not unpack the layers into {parent} ({exc}): pass "
            "--scan-tmp FOLDER on a disk with room"
        ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for path, signature in output.hits:
        target = targets.get(path, Target(IMAGE_TAR, f"an unlisted file {path}"))
        report.findings.append(Finding(target.file, target.where, signature))
    # clamscan names its own paths in errors: say which bundle file or layer path they were.
    for error in output.errors:
        for path, target in targets.items():
            if path in error:
                error = error.replace(path, target.where)
                break
        report.errors.append(error)
    report.signatures = int(output.summary.get("Known viruses", "0") or 0)
    report.engine = output.summary.get("Engine version", "")
    report.files_scanned = int(output.summary.get("Scanned files", "0") or 0)
    if report.files_scanned < report.files_listed - report.files_empty and not report.errors:
        report.errors.append(
            f"clamscan scanned {report.files_scanned} of the {report.files_listed - report.files_empty} "
            "non-empty files it was given, and said nothing of the rest"
        )
    report.seconds = time.monotonic() - start
    return report
