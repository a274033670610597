"""What the bundle's documents say, read once and shape-checked (gapforge.bundle.documents), and
compared with what the archive really holds: bundle.json, the SBOM, the provenance statement (its
DSSE signature checked with verify's anchored keys first) and the pretest evidence must all name the
archive's image digest and image ID, and the pretest must have passed."""

from __future__ import annotations

import hashlib
from typing import Any

from gapforge.bundle import IMAGE_TAR, INDEX, PRETEST, PROVENANCE, SBOM
from gapforge.bundle.documents import (
    BUNDLE_INDEX,
    PRETEST_EVIDENCE,
    PROVENANCE_STATEMENT,
    SBOM_FIELDS,
    Schema,
    is_digest,
    parse_document,
    read_raw,
    shape_problems,
)
from gapforge.bundle.imagetar import ImageArchive
from gapforge.bundle.provenance import read_provenance, subject_digest
from gapforge.bundle.sbom import image_digests
from gapforge.bundle.sums import SumsLine
from gapforge.operator.verify_report import VerifyReport


def signed_bytes(report: VerifyReport, name: str, lines: list[SumsLine]) -> bytes | None:
    """`name`'s bytes, read once, and only when those very bytes hash to its signed SHA256SUMS
    line: None otherwise (a missing or unreadable file refused here; bytes that differ from the
    line are named by the file comparison, or, when the hashed read matched, recorded in
    `report.changed_reads`: the medium served other bytes to another read)."""
    data, problems = read_raw(report.bundle, name)
    for problem in problems:
        if problem != "missing":  # a missing file is named by the SHA256SUMS comparison
            report.refuse(name, problem)
    if data is None:
        return None
    line = next((line for line in lines if line.name == name), None)
    if line is None or hashlib.sha256(data).hexdigest() != line.sha256:
        if line is not None:
            report.changed_reads.add(name)
        return None
    return data


def read_checked(
    report: VerifyReport, name: str, schema: Schema, lines: list[SumsLine]
) -> dict[str, Any]:
    """`name`, from bytes that hash to its signed line, shape-checked; {} and a refusal per
    problem (naming the field) when it is not."""
    data = signed_bytes(report, name, lines)
    if data is None:
        return {}
    value, problems = parse_document(data, schema)
    for problem in problems:
        report.refuse(name, problem)
    return value or {}


def read_index(report: VerifyReport, lines: list[SumsLine]) -> None:
    """bundle.json into `report.index`: required, shape-checked, its digests well-formed, parsed
    from the very bytes that hash to its signed line (read once: a medium that serves other bytes
    to a second read cannot slip in an index SHA256SUMS does not vouch for)."""
    data, problems = read_raw(report.bundle, INDEX)
    if problems == ["missing"]:
        report.refuse(
            INDEX, "missing: the bundle's index names its image; without it nothing is decided"
        )
        return
    value, problems = (None, problems) if data is None else parse_document(data, BUNDLE_INDEX)
    for problem in problems:
        report.refuse(INDEX, problem)
    if value is None or data is None:
        return
    image = value["image"]
    bad = [
        f"image.{key}" for key in ("manifest_digest", "config_digest") if not is_digest(image[key])
    ]
    for field_name in bad:
        report.refuse(
            INDEX, f"{field_name}: {image[field_name.split('.')[1]]!r} is not sha256:<64 hex>"
        )
    if bad:
        return
    line = next((line for line in lines if line.name == INDEX), None)
    if line is None or hashlib.sha256(data).hexdigest() != line.sha256:
        if line is not None:
            report.changed_reads.add(INDEX)
        return  # an index SHA256SUMS does not vouch for is not used
    report.index = value


def _read_provenance(report: VerifyReport, lines: list[SumsLine]) -> dict[str, Any]:
    """The statement inside provenance.json's DSSE envelope, checked with verify's key(s); {} when
    it is missing (already reported), unsigned or malformed (reported here)."""
    if not report.public_keys:
        return {}  # no key to check it with: the report already fails, nothing is read unchecked
    data = signed_bytes(report, PROVENANCE, lines)
    if data is None:
        return {}
    statement, problems = read_provenance(data, report.public_keys)
    for problem in problems:
        report.add(PROVENANCE, problem)
    if statement is None:
        return {}
    shape = shape_problems(statement, PROVENANCE_STATEMENT)
    for problem in shape:
        report.refuse(PROVENANCE, f"its statement's {problem}")
    return {} if shape else statement


def cross_check(report: VerifyReport, archive: ImageArchive, lines: list[SumsLine]) -> None:
    """bundle.json, SBOM, provenance and pretest evidence all name the archive's real digests."""
    manifest, config = archive.manifest_digest, archive.config_digest
    index = report.index
    sbom = read_checked(report, SBOM, SBOM_FIELDS, lines)
    provenance = _read_provenance(report, lines)
    evidence = read_checked(report, PRETEST, PRETEST_EVIDENCE, lines)
    claims: list[tuple[str, str, str, str]] = []
    if index:
        image = index["image"]
        claims += [(INDEX, "image.manifest_digest", image["manifest_digest"], manifest),
                   (INDEX, "image.config_digest", image["config_digest"], config)]  # fmt: skip
        tar_line = next((line for line in lines if line.name == IMAGE_TAR), None)
        if tar_line is not None:
            claims.append((INDEX, "image.sha256", image["sha256"], tar_line.sha256))
    if sbom:
        sbom_manifest, sbom_config = image_digests(sbom)
        claims += [(SBOM, "metadata.component (manifest digest)", sbom_manifest, manifest),
                   (SBOM, "metadata.component (config digest)", sbom_config, config)]  # fmt: skip
    if provenance:
        claims.append((PROVENANCE, "subject (image digest)", subject_digest(provenance), manifest))
    if evidence:
        pretested = evidence["image"]
        claims += [(PRETEST, "image.manifest_digest", pretested["manifest_digest"], manifest),
                   (PRETEST, "image.config_digest", pretested["config_digest"], config)]  # fmt: skip
        if evidence["passed"] is not True:
            report.add(
                PRETEST,
                f"the sealed pretest did not pass (verdict {evidence.get('verdict')}): do not run this image",
            )
    for name, field_name, claimed, actual in claims:
        if claimed != actual:
            report.add(
                name, f"{field_name} is {claimed or '(none)'}, but {IMAGE_TAR} holds {actual}"
            )
