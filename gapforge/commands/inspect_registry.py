"""`gapforge inspect --registry HOST/REPO:TAG|@DIGEST [--key PUB]`: what is attached to an image in
the site's registry (SBOM, provenance, signature) and, with --key, whether it verifies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from gapforge.errors import GapforgeError
from gapforge.progress import console

if TYPE_CHECKING:
    from gapforge.registry.verify import RegistryReport


def parse_image_reference(text: str) -> tuple[str, str, str]:
    """`HOST[:PORT]/REPO[:TAG]` or `HOST[:PORT]/REPO@sha256:<hex>` → (registry, repo, tag or
    digest); the tag defaults to `latest`."""
    host, _, rest = text.partition("/")
    if not host or not rest or "://" in text:
        raise GapforgeError(
            f"--registry {text}: expected HOST[:PORT]/REPOSITORY:TAG or HOST[:PORT]/REPOSITORY@DIGEST "
            "(for example registry.local:5000/team/model:1.0), without a scheme"
        )
    repo, at, digest = rest.partition("@")
    if at:
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise GapforgeError(f"--registry {text}: {digest!r} is not a sha256:<64 hex> digest")
        return host, repo, digest
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = repo.rpartition(":")
        return host, repo, tag
    return host, repo, "latest"


def inspect_registry_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `inspect --registry` (the caller owns the rest of `inspect`, --json included)."""
    parser.add_argument(
        "--registry", metavar="HOST/REPO:TAG|@DIGEST",
        help="inspect an image in a registry and what is attached to it (OCI referrers) instead of a bundle",
    )  # fmt: skip
    parser.add_argument(
        "--key", type=Path, action="append", default=None, dest="registry_keys",
        help="with --registry: the release key's public half (.pub.pem) to verify the attached "
        "signature, SBOM and provenance with (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--no-tls-verify", dest="tls_verify", action="store_const", const=False, default=None,
        help="talk plain HTTP to the registry (default: only for 127.0.0.0/8 and localhost)",
    )  # fmt: skip
    parser.add_argument(
        "--creds", metavar="USER:PASS",
        help="registry credentials (default: the registry's entry in docker's config.json or containers' auth.json)",
    )  # fmt: skip


def cmd_inspect_registry(args: argparse.Namespace) -> int:
    """Print what is attached to the image; with --key, verify it (exit 1 when a check fails)."""
    from gapforge.bundle.sign import load_public_key
    from gapforge.registry.client import RegistryClient
    from gapforge.registry.referrers import listed_referrers, resolve_image
    from gapforge.registry.verify import RegistryReport, verify_referrers

    registry, repo, reference = parse_image_reference(args.registry)
    tls_verify, creds = getattr(args, "tls_verify", None), getattr(args, "creds", None)
    key_paths = getattr(args, "registry_keys", None) or []
    if not key_paths and isinstance(getattr(args, "key", None), Path):  # a caller's own --key
        key_paths = [args.key]
    keys = [load_public_key(path) for path in key_paths]
    if keys:
        report = verify_referrers(registry, repo, reference, keys, tls_verify, creds)
    else:
        client = RegistryClient(registry, tls_verify, creds)
        report = RegistryReport(registry, repo, reference)
        report.digest = resolve_image(client, repo, reference).digest
        report.referrers, report.listed_by = listed_referrers(client, repo, report.digest)
    if getattr(args, "json", False):
        print(json.dumps(report_json(report, verified=bool(keys)), indent=2, sort_keys=True))
    else:
        print_report(report, verified=bool(keys))
    return 0 if not keys or report.ok else 1


def report_json(report: RegistryReport, verified: bool) -> dict[str, object]:
    """The report as JSON (`inspect --registry --json`)."""
    return {
        "image": f"{report.registry}/{report.repo}",
        "reference": report.reference,
        "digest": report.digest,
        "listed_by": report.listed_by,
        "referrers": [{"kind": r.kind, **r.descriptor.to_json()} for r in report.referrers],
        "verified": verified and report.ok,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
    }


def print_report(report: RegistryReport, verified: bool) -> None:
    """The attached artifacts, then the checks (with --key), as rich tables."""
    from gapforge.registry.referrers import CREATED

    where = f"{report.registry}/{report.repo}@{report.digest}"
    attached = Table(
        "kind", "artifact type", "digest", "created",
        title=f"attached to {where} ({len(report.referrers)}, listed by {report.listed_by})",
        title_justify="left",
    )  # fmt: skip
    for referrer in report.referrers:
        attached.add_row(
            referrer.kind, escape(referrer.artifact_type), referrer.digest,
            escape(referrer.annotations.get(CREATED, "")),
        )  # fmt: skip
    console.print(attached)
    if not verified:
        console.print(
            "(not verified: pass --key PUB.pem, the release key's public half, to check it)"
        )
        return
    checks = Table("check", "ok", "detail", title="verification", title_justify="left")
    for check in report.checks:
        checks.add_row(
            escape(check.name), "ok" if check.ok else "FAILED", escape(check.detail),
            style=None if check.ok else "red",
        )  # fmt: skip
    console.print(checks)
    if report.ok:
        console.print(f"[bold green]verified[/] {escape(where)}: signature, SBOM and provenance")
    else:
        console.print(
            f"[bold red]FAILED[/] {escape(where)}: {', '.join(report.failed)}. Do not trust what is "
            "attached; attach the verified bundle's again with 'gapforge load BUNDLE --to'"
        )
