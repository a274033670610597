"""`gapforge verify`: check a bundle offline and name every bad file.

Fail closed: the report is `ok` only when the signature over SHA256SUMS was proven by a key the
anchor gives and nothing else is wrong (gapforge.operator.verify_report); whatever cannot be decided
is a refusal (exit 2). Files are read without following links, a link anywhere in the folder is a
failed check, and every file is listed in SHA256SUMS or is release metadata in release/metadata/
(gapforge.operator.coverage). Documents are shape-checked where read (gapforge.bundle.documents).

In order: the signature over SHA256SUMS against the operator's trust anchor (gapforge.operator.anchor:
a pinned key; or the trusted TUF release root, when the bundle must also be a release the repository
lists on the site's channel, unrevoked, with this very SHA256SUMS; or, with --insecure only, the
bundle's own key, which proves integrity but not origin); every file against SHA256SUMS (none missing, none extra);
inside the image archive, the index → manifest → config chain; then that bundle.json, the SBOM, the
provenance and the pretest evidence all name the image digest and image ID the archive really
holds (the provenance's own DSSE signature is checked with the same key first), and that the
pretest passed.

The archive's bytes are authenticated by its line in the signed SHA256SUMS. When that line does not
match (or with `deep=True`), every blob inside the archive is checked too, to say which layer or
config was altered, and the SBOM is validated against the CycloneDX 1.6 schema again (the build
validated it before signing). Hashing runs on a thread pool (hashlib releases the GIL). With
`deep`, the archive is read once: its blobs are hashed in the same pass as the whole file, on other
cores; a plain verify hashes the whole file only (its signed digest covers the blobs) and reads a bad
archive again to name the altered blobs. `load` leaves the archive's bytes out (`stream_archive`)
and hashes them as they stream into Docker instead.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import IMAGE_TAR, INDEX, SBOM, SUMS
from gapforge.bundle.documents import read_bytes_no_follow
from gapforge.bundle.imagetar import ImageArchive, read_archive
from gapforge.bundle.sbom import validate_sbom
from gapforge.bundle.sums import (
    HashJob,
    HashResult,
    Prefetch,
    SumsLine,
    default_workers,
    hash_jobs,
    job_bytes,
    parse_sums,
)
from gapforge.errors import BundleError
from gapforge.names import UnsafeName
from gapforge.operator.anchor import Anchor
from gapforge.operator.coverage import (
    Tree,
    check_entries,
    check_release_dir,
    is_covered_elsewhere,
    walk_bundle,
)
from gapforge.operator.crosscheck import cross_check, read_index
from gapforge.operator.signature import (
    anchored_keys,
    blame_signature,
    check_signature,
    read_signed_file,
)
from gapforge.operator.verify_report import VerifyReport
from gapforge.progress import byte_progress

MAX_SUMS = 16 * 1024 * 1024
"""Bytes of SHA256SUMS: a line per file, far below this for any bundle gapforge writes."""


def _check_folder(bundle: Path) -> None:
    if not bundle.is_dir():
        raise BundleError(
            f"{bundle}: no such folder: pass the bundle folder that 'gapforge build' wrote "
            "(dist/<recipe>-<version>/), copied whole"
        )
    if ".partial-" in bundle.name:
        raise BundleError(
            f"{bundle}: a half-written bundle left by an interrupted build: delete it and use the "
            "complete one beside it, or build again"
        )


def _blob_names(index: dict[str, Any], archive: ImageArchive) -> dict[str, str]:
    """digest → what the blob is, for messages: `layer 'model'`, `config`, `manifest`."""
    names = {
        archive.config_digest: "the image config",
        archive.manifest_digest: "the image manifest",
    }
    for layer in index.get("image", {}).get("layers", []):
        names.setdefault(layer.get("digest", ""), f"layer '{layer.get('name')}'")
    for number, digest in enumerate(archive.layer_digests):
        names.setdefault(digest, f"layer {number}")
    return names


def _compare_files(
    report: VerifyReport, lines: list[SumsLine], results: dict[str, HashResult]
) -> list[str]:
    bad = []
    for line in lines:
        result = results.get(line.name)
        if result is None:
            continue
        if result.sha256 is None:
            report.add(line.name, f"unreadable: {result.error}")
            bad.append(line.name)
        elif result.sha256 != line.sha256:
            report.add(
                line.name,
                f"sha256 is {result.sha256}, {SUMS} line {line.number} says {line.sha256}",
            )
            bad.append(line.name)
    return bad


def _compare_blobs(
    report: VerifyReport, archive: ImageArchive, results: dict[str, HashResult]
) -> None:
    names = _blob_names(report.index, archive)
    for label, result in sorted(results.items()):
        if not label.startswith(f"{IMAGE_TAR}:"):
            continue
        digest = label.removeprefix(f"{IMAGE_TAR}:")
        what = names.get(digest, "an unreferenced blob")
        if result.sha256 is None:
            report.add(IMAGE_TAR, f"blob {digest} ({what}) is unreadable: {result.error}")
        elif "sha256:" + result.sha256 != digest:
            report.add(
                IMAGE_TAR,
                f"blob {digest} ({what}) hashes to sha256:{result.sha256}: {what} was altered",
            )


def _check_archive_size(report: VerifyReport) -> None:
    """A shorter or longer archive than the build wrote: say so plainly (a copy cut short, usually)."""
    path = report.bundle / IMAGE_TAR
    expected = report.index.get("image", {}).get("size")
    if not path.is_file() or not isinstance(expected, int):
        return
    size = path.stat().st_size
    if size < expected:
        report.add(
            IMAGE_TAR,
            f"truncated: {size} of {expected} bytes (an interrupted copy?): copy it again",
        )
    elif size > expected:
        report.add(IMAGE_TAR, f"{size - expected} bytes longer than the {expected} the build wrote")


def _sbom_schema(report: VerifyReport) -> Callable[[], None]:
    """Validate the SBOM against CycloneDX 1.6 on a thread (importing the validator alone takes a
    second or two); returns a function that waits for it and reports the result."""
    path = report.bundle / SBOM
    outcome: list[str] = []
    readable = path.is_file() and not path.is_symlink()  # a link is reported, never read

    def validate() -> None:
        try:
            outcome.append(validate_sbom(read_bytes_no_follow(path).decode("utf-8")))
        except (OSError, ValueError, UnsafeName) as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=validate, daemon=True)
    if readable:
        thread.start()

    def finish() -> None:
        if not readable:
            return
        thread.join()
        if outcome and outcome[0]:
            report.add(SBOM, f"not valid CycloneDX 1.6: {outcome[0]}")

    return finish


def _hash(
    report: VerifyReport, jobs: list[HashJob], label: str, prefetched: Prefetch | None = None
) -> dict[str, HashResult]:
    total = job_bytes(jobs)
    report.bytes_hashed += total
    with byte_progress(label, total) as advance:
        return hash_jobs(jobs, advance, report.workers, prefetched)


@dataclass(frozen=True)
class ScanOptions:
    """`--scan`: ClamAV over every file and every layer's contents (gapforge.scan)."""

    database: Path | None = None
    """--clamav-db: the site's signature database (default /var/lib/clamav)."""
    scratch: Path | None = None
    """--scan-tmp: where the layers are unpacked for the scan (default $TMPDIR)."""


def verify_bundle(
    bundle: Path, anchor: Anchor, workers: int | None = None, deep: bool = False,
    scan: ScanOptions | None = None, prefetched: Prefetch | None = None,
) -> VerifyReport:  # fmt: skip
    """Check everything against `anchor` (gapforge.operator.anchor.choose_anchor), and with `scan`
    run ClamAV over it; never stop at the first problem. Raises BundleError only for bad input.
    `prefetched`: the archive's hash already begun (gapforge.bundle.sums.prefetch)."""
    report, _ = _verify(bundle, anchor, workers, deep, scan, False, prefetched)
    return report


def verify_all_but_archive_bytes(
    bundle: Path, anchor: Anchor, scan: ScanOptions | None = None
) -> tuple[VerifyReport, SumsLine | None]:
    """What `load` checks before it streams the archive into Docker: everything `verify_bundle`
    does but hash the archive's bytes. Returns the report and the archive's line of the very
    SHA256SUMS whose signature was checked (None when it has none): the stream must hash to it."""
    report, lines = _verify(bundle, anchor, None, False, scan, True)
    return report, next((line for line in lines if line.name == IMAGE_TAR), None)


def blame_archive(report: VerifyReport, line: SumsLine | None) -> None:
    """After a load saw the archive's bytes differ: hash it as `verify` does, and report the file
    and every altered blob with `verify`'s messages."""
    archive = report.archive
    job = HashJob(IMAGE_TAR, report.bundle / IMAGE_TAR, parts=_parts(archive, report.workers),
                  root=report.bundle)  # fmt: skip
    results = _hash(report, [job], "hashing the archive again to find what was altered")
    lines = [line] if line is not None else []
    if (line is None or IMAGE_TAR in _compare_files(report, lines, results)) and archive:
        _check_blobs(report, archive, results)


def _check_blobs(
    report: VerifyReport, archive: ImageArchive, results: dict[str, HashResult]
) -> None:
    """Say which layer or config was altered, not just that the archive was: from the blobs the
    archive's own pass hashed, or (where it hashed none) from a read of each blob."""
    blob_jobs = archive.blob_jobs(IMAGE_TAR)
    if all(job.label in results for job in blob_jobs):
        report.bytes_hashed += job_bytes(blob_jobs)  # hashed in the archive's pass
    else:
        results = _hash(report, blob_jobs, "hashing every blob")
    _compare_blobs(report, archive, results)


def _parts(archive: ImageArchive | None, workers: int) -> tuple[HashJob, ...]:
    """The archive's blobs, hashed in the pass that hashes the archive (with a core to spare)."""
    if archive is None or workers < 2:
        return ()
    return tuple(archive.blob_jobs(IMAGE_TAR))


def _read_sums(report: VerifyReport) -> tuple[bytes | None, list[SumsLine]]:
    """SHA256SUMS (no link followed) and its lines; a refusal when it is missing or unreadable."""
    sums = read_signed_file(report, SUMS, MAX_SUMS)
    if sums is None:
        if not any(p.file == SUMS for p in report.problems):
            report.refuse(
                SUMS,
                "missing: not a complete bundle (or it was deleted); nothing can be checked against it",
            )
        return None, []
    report.sums_sha256 = hashlib.sha256(sums).hexdigest()
    lines, syntax = parse_sums(sums.decode(errors="replace"))
    for problem in syntax:
        report.add(SUMS, problem)
    return sums, lines


def _check_listing(
    report: VerifyReport, tree: Tree, lines: list[SumsLine], sums: bytes | None
) -> set[str]:
    """Every file listed and every listed file present; returns the regular files SHA256SUMS covers."""
    present = {name for name in tree.files if not is_covered_elsewhere(name)}
    listed = {line.name for line in lines}
    linked = set(tree.links)
    for name in sorted(listed - present - linked):
        report.add(name, f"listed in {SUMS} but missing from the bundle")
    if sums is not None:
        for name in sorted(present - listed):
            report.add(name, f"not listed in {SUMS}: not part of the signed release; remove it")
        for name in (INDEX, IMAGE_TAR):
            if name not in listed:
                report.refuse(name, f"not listed in {SUMS}: a bundle's signed list must hold it")
    check_release_dir(report, tree)
    return present


def _verify(
    bundle: Path, anchor: Anchor, workers: int | None, deep: bool, scan: ScanOptions | None,
    stream_archive: bool, prefetched: Prefetch | None = None,
) -> tuple[VerifyReport, list[SumsLine]]:  # fmt: skip
    _check_folder(bundle)
    # A scan unpacks the archive's layers: only after its bytes were hashed (check, then touch),
    # so `load --scan` hashes the archive here as well as in the stream into the engine.
    stream_archive = stream_archive and scan is None
    if scan is not None:  # a bad database or no clamscan fails now, not after the hashing
        from gapforge.clamscan import choose_database, find_clamscan

        find_clamscan()
        choose_database(scan.database)
    start = time.monotonic()
    report = VerifyReport(bundle, workers=workers or default_workers())
    # The SBOM was validated when it was written; its signed checksum says these are those bytes.
    sbom_schema = _sbom_schema(report) if deep else (lambda: None)
    tree = walk_bundle(bundle)
    check_entries(report, tree)
    sums, lines = _read_sums(report)
    read_index(report, lines)
    signature_ok = check_signature(report, anchored_keys(report, anchor, sums), sums)
    present = _check_listing(report, tree, lines, sums)
    listed = {line.name for line in lines}
    _check_archive_size(report)
    archive = read_archive(bundle / IMAGE_TAR) if IMAGE_TAR in present else None
    report.archive = archive
    if archive is not None:
        for problem in archive.problems:
            report.add(IMAGE_TAR, problem)
    # Blobs in the archive's pass only for --deep: a plain verify's signed whole-file digest already
    # covers them, and on few cores the extra hashing slows the pass; a bad archive is read again.
    parts = _parts(archive, report.workers) if deep else ()
    jobs = [
        HashJob(
            line.name,
            bundle / line.name,
            parts=parts if line.name == IMAGE_TAR else (),
            root=bundle,
        )
        for line in lines
        if line.name in present and not (stream_archive and line.name == IMAGE_TAR)
    ]
    results = _hash(report, jobs, "hashing", prefetched)
    report.archive_hashed = any(job.label == IMAGE_TAR for job in jobs)
    report.files_checked = len(lines)
    sums_bad = _compare_files(report, lines, results)
    if archive is not None and (deep or IMAGE_TAR in sums_bad or IMAGE_TAR not in listed):
        _check_blobs(report, archive, results)
    if archive is not None and not archive.problems:
        cross_check(report, archive, lines)
    for name in sorted(report.changed_reads - set(sums_bad) - {IMAGE_TAR}):
        report.add(name, "its bytes changed between two reads (hashed, then read to be used): "
                   "the medium or folder is being altered; copy the bundle to a local disk")  # fmt: skip
    sbom_schema()
    if signature_ok is False:
        blame_signature(report, sums_bad + sorted(listed - present))
    report.signature_ok = signature_ok is True
    if scan is not None:
        _scan(report, scan)
    report.seconds = time.monotonic() - start
    return report, lines


def _scan(report: VerifyReport, scan: ScanOptions) -> None:
    """ClamAV over the bundle's files and every layer's contents, only once everything else is
    proven (check, then touch: nothing is unpacked from a bundle that did not verify); each hit (or
    file it could not scan) is a problem naming the layer and the path inside it."""
    from gapforge.scan import scan_bundle, scan_problems

    if not report.ok or report.archive is None or not report.archive_hashed:
        report.add(
            "clamscan",
            "not run: the bundle did not verify, and nothing of it is unpacked until it does",
        )
        return
    result = scan_bundle(
        report.bundle, scan.database, report.workers, scan.scratch, report.index, report.archive
    )
    report.scan = result.as_json()
    for file, message in scan_problems(result):
        report.add(file, message)


def authenticate_index(bundle: Path, anchor: Anchor) -> VerifyReport:
    """The check `run`, `preflight` and `inspect` make on a bundle folder: everything `verify`
    checks (the signature by the anchor, every file but the archive's bytes, the archive's
    structure, the documents against it) except hashing the archive. The image is then known by the
    image ID the signed bundle.json names: the engine's image IDs are content addresses, so the
    archive's bytes need no hashing here."""
    report, _ = _verify(bundle, anchor, None, False, None, True)
    return report
