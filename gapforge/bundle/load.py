"""`gapforge load`: verify the bundle, then load its image into Docker, or copy it into a registry.

An unverified or unsigned bundle is refused unless the operator says --insecure. A registry push goes
through skopeo with --preserve-digests, and the digest the registry reports must be the bundle's.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gapforge.bundle import IMAGE_TAR
from gapforge.bundle.verify import VerifyReport, verify_bundle
from gapforge.errors import BundleError, EnvironmentProblem
from gapforge.progress import note, step


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


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: Docker itself treats these registries as plain HTTP."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_verified(report: VerifyReport, insecure: bool) -> None:
    if report.ok:
        return
    bad = ", ".join(report.bad_files)
    if not insecure:
        raise Refused(
            f"refusing to load {report.bundle}: it failed verification ({bad}; details above). Get an "
            "intact copy of the bundle, or pass --insecure to load it anyway (not for production)"
        )
    step(f"[bold red]--insecure[/]: loading a bundle that failed verification ({bad})")


def push_to_registry(tar: Path, destination: str, host: str, tls_verify: bool | None) -> str:
    """skopeo copy the archive into a registry; return the manifest digest the registry stored."""
    if shutil.which("skopeo") is None:
        raise EnvironmentProblem(
            "skopeo is not installed: 'apt-get install skopeo' (Debian), or load into Docker "
            "without --to and push with 'docker push'"
        )
    verify_tls = (not is_loopback(host)) if tls_verify is None else tls_verify
    with tempfile.TemporaryDirectory(prefix="gapforge-push-") as work:
        digest_file = Path(work) / "digest"
        command = [
            "skopeo", "copy", "--preserve-digests", "--digestfile", str(digest_file),
            f"--dest-tls-verify={'true' if verify_tls else 'false'}", f"oci-archive:{tar}", destination,
        ]  # fmt: skip
        note(" ".join(command))
        result = subprocess.run(command, check=False, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            hint = (
                " (an HTTP registry: pass --no-tls-verify)"
                if "http response to https" in result.stderr.lower()
                else ""
            )
            raise BundleError(
                f"skopeo could not copy {tar} to {destination}{hint}:\n{result.stderr.strip()[-2000:]}\n"
                "Check that the registry is running and reachable, and the repository name."
            )
        return digest_file.read_text().strip()


def load_bundle(
    bundle: Path,
    key: Path | None = None,
    to: str | None = None,
    insecure: bool = False,
    tls_verify: bool | None = None,
    on_verified: Callable[[VerifyReport], None] = lambda _report: None,
) -> Loaded:
    """Verify (then `on_verified(report)`), refuse a bad bundle unless `insecure`, then load into
    Docker (default) or push to the registry `to`."""
    step(f"verifying {bundle} before loading")
    report = verify_bundle(bundle, key)
    on_verified(report)
    check_verified(report, insecure)
    archive = report.archive
    if archive is None or not archive.manifest_digest:
        raise BundleError(
            f"{bundle / IMAGE_TAR}: no readable image archive in the bundle: nothing to load"
        )
    tar = bundle / IMAGE_TAR
    if to is not None:
        version = str(report.index.get("version") or "latest")
        destination, host = registry_destination(to, version)
        step(f"copying {tar.name} to {destination}")
        pushed = push_to_registry(tar, destination, host, tls_verify)
        if pushed != archive.manifest_digest:
            raise BundleError(
                f"the registry stored {destination} as {pushed}, not as the bundle's image digest "
                f"{archive.manifest_digest}: it rewrote the manifest; use a registry that keeps OCI "
                "manifests as pushed"
            )
        note(f"pushed {destination.removeprefix('docker://')}@{pushed}")
        return Loaded(destination.removeprefix("docker://"), pushed, archive.config_digest, report)
    from gapforge import engine

    client = engine.connect()
    engine.load(client, tar, archive.config_digest)
    return Loaded("docker", archive.manifest_digest, archive.config_digest, report)
