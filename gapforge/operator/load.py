"""`gapforge load`: verify the bundle, then load its image into Docker, or copy it into a registry.

An unverified or unsigned bundle is refused unless the operator says --insecure. Check, then use the
very thing checked: into Docker the archive is read once. Everything else is verified first (the
signature, every other file, the archive's structure and that bundle.json, SBOM, provenance and
pretest name its digests); then the archive streams untagged and is hashed in the same pass
(gapforge.engine.load), against its line in the SHA256SUMS whose signature was checked, never
against anything the archive says of itself. The image gets its name only once its ID and the bytes
sent match; otherwise what the load added is removed, the archive is hashed again to name the
altered blobs, and the load is refused as a failed verify is. Into a registry (skopeo reads the
archive itself) the bundle is verified whole first; skopeo (with --preserve-digests) pushes to a
temporary tag, and the real tag is given, by digest, only after the digest the registry reports is
the bundle's.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import IMAGE_TAR
from gapforge.errors import BundleError, EnvironmentProblem
from gapforge.operator.anchor import Anchor
from gapforge.operator.gate import VerifiedBundle, gate
from gapforge.operator.verify import (
    ScanOptions,
    blame_archive,
    verify_all_but_archive_bytes,
    verify_bundle,
)
from gapforge.operator.verify_report import VerifyReport
from gapforge.progress import note, step
from gapforge.registry import is_loopback


class Refused(BundleError):
    """The bundle did not verify: nothing was loaded (exit 1, like a failed verify)."""

    exit_status = 1


@dataclass(frozen=True)
class Loaded:
    where: str
    """`docker` or the registry reference pushed to."""
    manifest_digest: str
    config_digest: str
    report: VerifyReport
    receipt: Path | None = None
    """The signed receipt of this load, in the trust folder."""


def registry_destination(to: str, version: str) -> tuple[str, str]:
    """`HOST[:PORT]/REPO[:TAG]` → (`docker://HOST/REPO:TAG`, host); the tag defaults to the version."""
    host, _, repo = to.partition("/")
    if not repo or not host or "://" in to:
        raise BundleError(
            f"--to {to}: expected REGISTRY_HOST[:PORT]/REPOSITORY[:TAG] (for example "
            f"registry.local:5000/team/model), without a scheme"
        )
    last = repo.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        repo = f"{repo}:{version}"
    return f"docker://{host}/{repo}", host


def check_verified(report: VerifyReport, insecure: bool) -> None:
    """Refused (exit 1) unless the bundle is proven against an operator's anchor; with `insecure`,
    say loudly what was not proven and go on."""
    if report.authenticated:
        return
    if report.ok and insecure:  # the bundle's own key: integrity only
        step(
            "[bold red]--insecure[/]: the bundle checked against its own key only: origin NOT proven"
        )
        return
    bad = ", ".join(report.bad_files)
    if not insecure:
        raise Refused(
            f"refusing to load {report.bundle}: it failed verification ({bad}; details above). Get an "
            "intact copy of the bundle, or pass --insecure to load it anyway (not for production)"
        )
    step(f"[bold red]--insecure[/]: loading a bundle that failed verification ({bad})")


def _skopeo_copy(source: str, destination: str, tls: list[str], digest_file: Path) -> None:
    command = ["skopeo", "copy", "--preserve-digests", "--digestfile", str(digest_file), *tls,
               source, destination]  # fmt: skip
    note(" ".join(command))
    result = subprocess.run(command, check=False, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        hint = (
            " (an HTTP registry: pass --no-tls-verify)"
            if "http response to https" in result.stderr.lower()
            else ""
        )
        raise BundleError(
            f"skopeo could not copy {source} to {destination}{hint}:\n{result.stderr.strip()[-2000:]}\n"
            "Check that the registry is running and reachable, and the repository name."
        )


def staging_tag(destination: str, expected: str) -> str:
    """`docker://host/repo:tag` → `docker://host/repo:gapforge-unchecked-<12 hex of the digest>`."""
    repo = destination.rsplit(":", 1)[0] if ":" in destination.rsplit("/", 1)[-1] else destination
    return f"{repo}:gapforge-unchecked-{expected.removeprefix('sha256:')[:12]}"


def push_to_registry(
    tar: Path, destination: str, host: str, tls_verify: bool | None, expected: str = ""
) -> str:
    """skopeo copy the archive into a registry; return the manifest digest the registry stored.

    With `expected` (the verified manifest digest) it goes to a temporary tag first; only when the
    registry stored `expected` is the image copied, by digest, to `destination`'s own tag."""
    if shutil.which("skopeo") is None:
        raise EnvironmentProblem(
            "skopeo is not installed: 'apt-get install skopeo' (Debian), or load into Docker "
            "without --to and push with 'docker push'"
        )
    verify_tls = (not is_loopback(host)) if tls_verify is None else tls_verify
    flag = "true" if verify_tls else "false"
    with tempfile.TemporaryDirectory(prefix="gapforge-push-") as work:
        digest_file = Path(work) / "digest"
        if not expected:
            _skopeo_copy(
                f"oci-archive:{tar}", destination, [f"--dest-tls-verify={flag}"], digest_file
            )
            return digest_file.read_text().strip()
        staged = staging_tag(destination, expected)
        _skopeo_copy(f"oci-archive:{tar}", staged, [f"--dest-tls-verify={flag}"], digest_file)
        pushed = digest_file.read_text().strip()
        if pushed != expected:
            raise BundleError(
                f"the registry stored {staged.removeprefix('docker://')} as {pushed}, not as the "
                f"bundle's verified image digest {expected}; {destination.removeprefix('docker://')} "
                "was not touched. The registry rewrote the manifest, or the archive changed after "
                "it was checked: use a registry that keeps OCI manifests as pushed, and verify again"
            )
        by_digest = f"{staged.rsplit(':', 1)[0]}@{expected}"
        _skopeo_copy(by_digest, destination,
                     [f"--src-tls-verify={flag}", f"--dest-tls-verify={flag}"], digest_file)  # fmt: skip
        return digest_file.read_text().strip()


def receipt_checks(report: VerifyReport) -> list[dict[str, Any]]:
    """What verify checked, one row each, for a receipt: the trust anchor, the signature, the
    release, the files and every problem found."""
    checks: list[dict[str, Any]] = [
        {"check": "trust anchor", "ok": report.key_pinned, "detail": f"{report.anchor}: {report.key_source}"},
        {"check": "signature", "ok": report.signature_ok, "detail": f"SHA256SUMS.sig by {report.key_fingerprint}"},
    ]  # fmt: skip
    if report.release is not None:
        release = report.release
        checks.append({"check": "release", "ok": release.ok,
                       "detail": f"{release.name} {release.version} on {release.channel} "
                                 f"(root version {release.root_version})"})  # fmt: skip
    checks.append({"check": "files", "ok": report.ok,
                   "detail": f"{report.files_checked} files, {report.bytes_hashed} bytes hashed"})  # fmt: skip
    checks += [{"check": p.file, "ok": False, "detail": p.message} for p in report.problems]
    return checks


def record_receipt(
    verified: VerifiedBundle, action: str, loaded_into: str | None, operator_key: Path | None = None
) -> Path:
    """Write the signed receipt of `action` (load, verify) of a bundle the gate proved, in the trust
    folder's receipts/: a receipt records a success, so it takes the gate's record, nothing less."""
    from gapforge.operator.receipt import make_receipt, write_receipt
    from gapforge.operator.receipt import operator_key as resolve_key
    from gapforge.operator.tuf_client import trust_dir

    report = verified.report
    folder = trust_dir()
    release = report.release
    trust = {
        "anchor": report.anchor,
        "anchor_identity": verified.anchor_identity,
        "key_fingerprint": report.key_fingerprint,
        "key_source": report.key_source,
        **({"root_version": release.root_version, "channel": release.channel} if release else {}),
    }
    receipt = make_receipt(
        action=action, bundle=verified.folder, name=verified.name, version=verified.version,
        manifest_digest=verified.manifest_digest, config_digest=verified.config_digest,
        archive_sha256=str(verified.index["image"]["sha256"]), sums_sha256=verified.sums_sha256,
        anchor=verified.anchor_identity, checks=receipt_checks(report), trust=trust,
        loaded_into=loaded_into,
    )  # fmt: skip
    return write_receipt(receipt, resolve_key(folder, operator_key), folder / "receipts")


def _receipt_if_proven(
    report: VerifyReport, loaded_into: str, operator_key: Path | None
) -> Path | None:
    """The receipt of a load the gate proves; none (said loudly) for an --insecure one."""
    if not report.authenticated:
        step("[bold red]--insecure[/]: no receipt written: this load proved nothing about origin")
        return None
    return record_receipt(gate(report, "load"), "load", loaded_into, operator_key)


def _attach(bundle: Path, host: str, where: str, digest: str, tls_verify: bool | None) -> None:
    """The SBOM, provenance and signature, as OCI 1.1 referrers of the pushed image (with the
    referrers tag scheme for registries without the referrers API)."""
    from gapforge.registry.client import RegistryClient
    from gapforge.registry.referrers import attach_referrers

    repo = where.removeprefix(f"{host}/").rsplit(":", 1)[0]
    size = len(RegistryClient(host, tls_verify).get_manifest(repo, digest).data)
    attached = attach_referrers(host, repo, digest, size, bundle, tls_verify)
    note(
        f"attached {', '.join(r.kind for r in attached)} to {host}/{repo}@{digest[:19]}… (referrers)"
    )


def load_bundle(
    bundle: Path,
    anchor: Anchor,
    to: str | None = None,
    insecure: bool = False,
    tls_verify: bool | None = None,
    on_verified: Callable[[VerifyReport], None] = lambda _report: None,
    operator_key: Path | None = None,
    scan: ScanOptions | None = None,
) -> Loaded:
    """Verify against `anchor` (then `on_verified(report)`), refuse a bad bundle unless `insecure`,
    then load into Docker (default) or push to the registry `to`."""
    step(f"verifying {bundle} before loading")
    if to is None and not insecure:
        return _verify_and_stream(bundle, anchor, on_verified, operator_key, scan)
    report = verify_bundle(bundle, anchor, scan=scan)
    on_verified(report)
    check_verified(report, insecure)
    archive = report.archive
    if archive is None or not archive.manifest_digest:
        raise BundleError(
            f"{bundle / IMAGE_TAR}: no readable image archive in the bundle: nothing to load"
        )
    # Names and digests from the gate's record; only --insecure falls back on the archive's own.
    checked = gate(report, "load") if report.authenticated else None
    manifest = checked.manifest_digest if checked else archive.manifest_digest
    config = checked.config_digest if checked else archive.config_digest
    tar = bundle / IMAGE_TAR
    verified_sha256 = str(report.index.get("image", {}).get("sha256", "")) if report.ok else ""
    if to is not None:
        version = checked.version if checked else _unproven_version(report)
        destination, host = registry_destination(to, version)
        step(f"copying {tar.name} to {destination}")
        pushed = push_to_registry(tar, destination, host, tls_verify, manifest)
        if pushed != manifest:
            raise BundleError(
                f"the registry stored {destination} as {pushed}, not as the bundle's image digest "
                f"{manifest}: it rewrote the manifest; use a registry that keeps OCI manifests as "
                "pushed"
            )
        where = destination.removeprefix("docker://")
        note(f"pushed {where}@{pushed}")
        if checked is not None:
            _attach(bundle, host, where, pushed, tls_verify)
        else:
            step(
                "[bold red]--insecure[/]: nothing attached (SBOM, provenance, signature): the bundle is not proven"
            )
        receipt = _receipt_if_proven(report, f"{where}@{pushed}", operator_key)
        return Loaded(where, pushed, config, report, receipt)
    from gapforge import engine

    client = engine.connect()
    ref = (checked.ref if checked else (archive.repo_tags or [""])[0]) or None
    tagged = engine.load(client, tar, config, ref, verified_sha256)
    receipt = _receipt_if_proven(report, f"docker {tagged} {config}", operator_key)
    return Loaded("docker", manifest, config, report, receipt)


def _unproven_version(report: VerifyReport) -> str:
    """--insecure into a registry: the tag from bundle.json's version, if it is one plain name."""
    from gapforge.names import component

    version = report.index.get("version") or "latest"
    return component(version, f"{report.bundle}/bundle.json: version")


def _verify_and_stream(
    bundle: Path,
    anchor: Anchor,
    on_verified: Callable[[VerifyReport], None],
    operator_key: Path | None,
    scan: ScanOptions | None,
) -> Loaded:
    """Into Docker with one read of the archive: verify the rest, then hash the archive as it
    streams untagged; tag only when it hashed to its signed line (see the module docstring)."""
    from gapforge import engine

    report, line = verify_all_but_archive_bytes(bundle, anchor, scan)
    archive = report.archive
    if not report.authenticated or line is None or archive is None:
        on_verified(report)
        check_verified(report, insecure=False)
        raise BundleError(
            f"{bundle / IMAGE_TAR}: no readable image archive in the bundle: nothing to load"
        )
    checked = gate(report, "load")  # all but the archive's bytes, which are hashed as they stream
    tar = bundle / IMAGE_TAR
    client = engine.connect()
    ref = checked.ref or None
    start = time.monotonic()
    try:
        tagged = engine.load(client, tar, checked.config_digest, ref, line.sha256)
    except engine.ImageMismatch:
        blame_archive(report, line)
        if report.ok:  # the archive is intact: the engine made something else of it
            raise
        on_verified(report)
        check_verified(report, insecure=False)
        raise
    report.bytes_hashed += tar.stat().st_size
    report.archive_hashed = True  # the engine hashed what it was sent, and it matched the line
    report.seconds += time.monotonic() - start
    on_verified(report)
    receipt = record_receipt(
        checked, "load", f"docker {tagged} {checked.config_digest}", operator_key
    )
    return Loaded("docker", checked.manifest_digest, checked.config_digest, report, receipt)
