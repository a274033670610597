"""`gapforge verify`: check a bundle offline and name every bad file.

In order: the signature over SHA256SUMS against the operator's trust anchor (gapforge.bundle.anchor:
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
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import (
    IMAGE_TAR,
    INDEX,
    PRETEST,
    PROVENANCE,
    SBOM,
    SIGNATURE,
    SUMS,
    is_unsigned,
)
from gapforge.bundle.anchor import Anchor
from gapforge.bundle.dsse import envelope_payload_unverified
from gapforge.bundle.imagetar import ImageArchive, read_archive
from gapforge.bundle.provenance import read_provenance, subject_digest
from gapforge.bundle.sbom import image_digests, validate_sbom
from gapforge.bundle.signature import anchored_keys, blame_signature, check_signature
from gapforge.bundle.sums import (
    HashJob,
    HashResult,
    Prefetch,
    SumsLine,
    bundle_files,
    default_workers,
    hash_jobs,
    job_bytes,
    parse_sums,
)
from gapforge.bundle.verify_report import VerifyReport
from gapforge.errors import BundleError
from gapforge.progress import byte_progress


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


def _load_json(report: VerifyReport, name: str) -> dict[str, Any]:
    path = report.bundle / name
    if not path.is_file():
        return {}  # already reported as missing
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        report.add(name, f"not valid JSON ({exc})")
        return {}
    if not isinstance(value, dict):
        report.add(name, "not a JSON object")
        return {}
    return value


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


def _read_provenance(report: VerifyReport) -> dict[str, Any]:
    """The statement inside provenance.json's DSSE envelope, checked with verify's key(s); {} when
    it is missing (already reported) or cannot be trusted (reported here)."""
    path = report.bundle / PROVENANCE
    if not path.is_file():
        return {}
    if not report.public_keys:  # no usable key, already reported: still compare the digests
        return envelope_payload_unverified(path.read_bytes())
    statement, problems = read_provenance(path.read_bytes(), report.public_keys)
    for problem in problems:
        report.add(PROVENANCE, problem)
    return statement or {}


def _cross_check(report: VerifyReport, archive: ImageArchive, lines: list[SumsLine]) -> None:
    """bundle.json, SBOM, provenance and pretest evidence all name the archive's real digests."""
    manifest, config = archive.manifest_digest, archive.config_digest
    index = report.index
    sbom = _load_json(report, SBOM)
    provenance = _read_provenance(report)
    evidence = _load_json(report, PRETEST)
    claims: list[tuple[str, str, str, str]] = []
    if index:
        image = index.get("image", {})
        claims += [(INDEX, "image.manifest_digest", image.get("manifest_digest", ""), manifest),
                   (INDEX, "image.config_digest", image.get("config_digest", ""), config)]  # fmt: skip
        tar_line = next((line for line in lines if line.name == IMAGE_TAR), None)
        if tar_line is not None:
            claims.append((INDEX, "image.sha256", image.get("sha256", ""), tar_line.sha256))
    if sbom:
        sbom_manifest, sbom_config = image_digests(sbom)
        claims += [(SBOM, "metadata.component (manifest digest)", sbom_manifest, manifest),
                   (SBOM, "metadata.component (config digest)", sbom_config, config)]  # fmt: skip
    if provenance:
        claims.append((PROVENANCE, "subject (image digest)", subject_digest(provenance), manifest))
    if evidence:
        pretested = evidence.get("image", {})
        claims += [(PRETEST, "image.manifest_digest", pretested.get("manifest_digest", ""), manifest),
                   (PRETEST, "image.config_digest", pretested.get("config_digest", ""), config)]  # fmt: skip
        if evidence.get("passed") is not True:
            report.add(
                PRETEST,
                f"the sealed pretest did not pass (verdict {evidence.get('verdict')}): do not run this image",
            )
    for name, field_name, claimed, actual in claims:
        if claimed != actual:
            report.add(
                name, f"{field_name} is {claimed or '(none)'}, but {IMAGE_TAR} holds {actual}"
            )


def _sbom_schema(report: VerifyReport) -> Callable[[], None]:
    """Validate the SBOM against CycloneDX 1.6 on a thread (importing the validator alone takes a
    second or two); returns a function that waits for it and reports the result."""
    path = report.bundle / SBOM
    outcome: list[str] = []

    def validate() -> None:
        try:
            outcome.append(validate_sbom(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=validate, daemon=True)
    if path.is_file():
        thread.start()

    def finish() -> None:
        if not path.is_file():
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
    """Check everything against `anchor` (gapforge.bundle.anchor.choose_anchor), and with `scan`
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
    job = HashJob(IMAGE_TAR, report.bundle / IMAGE_TAR, parts=_parts(archive, report.workers))
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


def _verify(
    bundle: Path, anchor: Anchor, workers: int | None, deep: bool, scan: ScanOptions | None,
    stream_archive: bool, prefetched: Prefetch | None = None,
) -> tuple[VerifyReport, list[SumsLine]]:  # fmt: skip
    _check_folder(bundle)
    if scan is not None:  # a bad database or no clamscan fails now, not after the hashing
        from gapforge.scan import choose_database, find_clamscan

        find_clamscan()
        choose_database(scan.database)
    start = time.monotonic()
    report = VerifyReport(bundle, workers=workers or default_workers())
    # The SBOM was validated when it was written; its signed checksum says these are those bytes.
    sbom_schema = _sbom_schema(report) if deep else (lambda: None)
    sums_path = bundle / SUMS
    sums = sums_path.read_bytes() if sums_path.is_file() else None
    lines: list[SumsLine] = []
    if sums is None:
        report.add(
            SUMS,
            "missing: not a complete bundle (or it was deleted); nothing can be checked against it",
        )
    else:
        lines, syntax = parse_sums(sums.decode(errors="replace"))
        for problem in syntax:
            report.add(SUMS, problem)
    report.index = _load_json(report, INDEX)
    signature_ok = check_signature(report, anchored_keys(report, anchor, sums), sums)
    present = {name for name in bundle_files(bundle) if not is_unsigned(name)}
    listed = {line.name for line in lines}
    for name in sorted(listed - present):
        report.add(name, f"listed in {SUMS} but missing from the bundle")
    if sums is not None:
        for name in sorted(present - listed):
            report.add(name, f"not listed in {SUMS}: not part of the signed release; remove it")
    for name in sorted(present):
        if (bundle / name).is_symlink():
            report.add(name, "a symbolic link: a bundle holds regular files only")
    _check_archive_size(report)
    archive = read_archive(bundle / IMAGE_TAR) if (bundle / IMAGE_TAR).is_file() else None
    report.archive = archive
    if archive is not None:
        for problem in archive.problems:
            report.add(IMAGE_TAR, problem)
    # Blobs in the archive's pass only for --deep: a plain verify's signed whole-file digest already
    # covers them, and on few cores the extra hashing slows the pass; a bad archive is read again.
    parts = _parts(archive, report.workers) if deep else ()
    jobs = [
        HashJob(line.name, bundle / line.name, parts=parts if line.name == IMAGE_TAR else ())
        for line in lines
        if line.name in present and not (stream_archive and line.name == IMAGE_TAR)
    ]
    results = _hash(report, jobs, "hashing", prefetched)
    report.files_checked = len(lines)
    sums_bad = _compare_files(report, lines, results)
    if archive is not None and (deep or IMAGE_TAR in sums_bad or IMAGE_TAR not in listed):
        _check_blobs(report, archive, results)
    if archive is not None and not archive.problems:
        _cross_check(report, archive, lines)
    sbom_schema()
    if scan is not None:
        _scan(report, scan)
    if signature_ok is False:
        blame_signature(report, sums_bad + [p for p in (listed - present)])
    report.signature_ok = signature_ok is True
    report.seconds = time.monotonic() - start
    return report, lines


def _scan(report: VerifyReport, scan: ScanOptions) -> None:
    """ClamAV over the bundle's files and every layer's contents; each hit (or file it could not
    scan) is a problem naming the layer and the path inside it."""
    from gapforge.scan import scan_bundle, scan_problems

    result = scan_bundle(report.bundle, scan.database, report.workers, scan.scratch)
    report.scan = result.as_json()
    for file, message in scan_problems(result):
        report.add(file, message)


def authenticate_index(bundle: Path, anchor: Anchor) -> VerifyReport:
    """The light check `run` and `preflight` make on a bundle folder: SHA256SUMS signed by a key the
    anchor trusts (and, with the trusted root, a release on the site's channel), and bundle.json the
    file its line names. The image is then known by the image ID this authenticated bundle.json
    names: the engine's image IDs are content addresses, so nothing more needs hashing here."""
    _check_folder(bundle)
    report = VerifyReport(bundle)
    sums_path = bundle / SUMS
    sums = sums_path.read_bytes() if sums_path.is_file() else None
    if sums is None:
        report.add(SUMS, "missing: not a complete bundle; nothing can be checked against it")
    report.index = _load_json(report, INDEX)
    signature_ok = check_signature(report, anchored_keys(report, anchor, sums), sums)
    report.signature_ok = signature_ok is True
    if signature_ok is False:
        report.add(
            SIGNATURE,
            f"does not verify over {SUMS} with {report.key_fingerprint or 'any key'} "
            f"({report.key_source}): the bundle was altered or signed with another key",
        )
    lines, _ = parse_sums((sums or b"").decode(errors="replace"))
    line = next((line for line in lines if line.name == INDEX), None)
    if sums is not None and line is None:
        report.add(INDEX, f"not listed in {SUMS}")
    elif line is not None and (bundle / INDEX).is_file():
        actual = hashlib.sha256((bundle / INDEX).read_bytes()).hexdigest()
        if actual != line.sha256:
            report.add(INDEX, f"sha256 is {actual}, {SUMS} line {line.number} says {line.sha256}")
    return report
