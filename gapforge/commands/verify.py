"""`gapforge verify BUNDLE`: the operator checks a bundle offline against the site's trust anchor
(signature, checksums, digests, documents), through the one gate (gapforge/operator/gate.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gapforge.commands.trust_options import (
    add_delta_options,
    add_scan_options,
    add_trust_options,
    anchor_of,
    full_bundle,
    operator_key_help,
    scan_options,
)
from gapforge.progress import console, step


def verify_arguments(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("bundle", type=Path, help="the bundle folder (dist/<recipe>-<version>)")
    add_trust_options(
        verify,
        "with no --key and no trusted root, check the files against the bundle's own key: "
        "integrity only, it proves nothing about who made the bundle (never for production)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    verify.add_argument(
        "--receipt", action="store_true",
        help="write a signed receipt of this check in the trust folder (receipts/), to file or carry back",
    )  # fmt: skip
    verify.add_argument("--operator-key", type=Path, help=operator_key_help())
    add_scan_options(verify)
    add_delta_options(verify)
    verify.add_argument(
        "--deep", action="store_true",
        help="also hash every blob inside the archive (done anyway when the archive's checksum "
        "fails) and validate the SBOM against the CycloneDX 1.6 schema",
    )  # fmt: skip
    verify.add_argument(
        "--workers", type=int, default=None, help="hashing threads (default: every core)"
    )


def print_verify(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    mb = report.bytes_hashed / 1e6
    speed = mb / report.seconds if report.seconds else 0.0
    console.print(
        f"    {report.files_checked} files: {mb:.0f} MB hashed in "
        f"{report.seconds:.1f} s ({speed:.0f} MB/s, {report.workers} threads)"
    )
    if report.key_fingerprint:
        colour = "" if report.key_pinned else "[bold red]"
        console.print(f"    key {report.key_fingerprint} from {colour}{escape(report.key_source)}")
    if not report.key_pinned:
        console.print(
            "[bold red]NOT AUTHENTICATED[/]: --insecure checked the files against the bundle's own "
            "key, which anyone who altered the bundle could have replaced. Pin trust with "
            "'gapforge trust init root.json' or --key."
        )
    if report.development_key:
        console.print(
            "[bold yellow]development key[/]: signed with the key a build cache made for itself "
            "(no --key at build time): for development only; a release repository refuses it on "
            "its approved channel."
        )
    if report.scan is not None:
        scanned = report.scan
        console.print(
            f"    ClamAV: {scanned.get('files_scanned')} files, "
            f"{(scanned.get('bytes_scanned') or 0) / 1e6:.0f} MB scanned with "
            f"{scanned['database'].get('signatures') or '?'} signatures "
            f"({scanned['database'].get('path')}) in {scanned.get('seconds')} s: "
            f"{len(scanned.get('hits') or [])} hits"
        )
    if report.release is not None and report.release.ok:
        release = report.release
        console.print(
            f"    release {release.name} {release.version} on channel {release.channel} "
            f"(root version {release.root_version})"
        )
    if report.ok and report.archive is not None:
        archive = report.archive
        if not report.authenticated:
            console.print(f"[bold red]INTEGRITY ONLY[/] {report.bundle} (origin NOT proven)")
        else:
            console.print(f"[bold green]verified[/] {report.bundle}")
        how = "" if report.authenticated else " (the bundle's own key: integrity only)"
        console.print(f"  signature     ok{how}")
        console.print(f"  image digest  {archive.manifest_digest}")
        console.print(f"  image ID      {archive.config_digest}")
        console.print("  pretest       PASS")
        return
    table = Table("file", "problem", title=f"{len(report.problems)} problems", title_justify="left")
    for problem in report.problems:
        table.add_row(escape(problem.file), escape(problem.message), style="red")
    console.print(table)
    console.print(
        f"[bold red]FAILED[/] {report.bundle}: bad files: {', '.join(report.bad_files)}. Do not load "
        "this bundle; get an intact copy from the release manager."
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from gapforge.bundle import IMAGE_TAR
    from gapforge.bundle.sums import prefetch

    # The archive is most of the bytes and its whole-file hash is sequential: begin it now, so the
    # imports, the trust anchor and the signature check run beside it (not for --deep, which
    # hashes each blob in the same pass).
    early = None if args.deep else prefetch(args.bundle / IMAGE_TAR)
    from gapforge.operator.verify import verify_bundle

    anchor = anchor_of(args)
    bundle = full_bundle(args)
    step(f"verifying {bundle}")
    report = verify_bundle(bundle, anchor, args.workers, args.deep, scan_options(args),
                           early if bundle == args.bundle else None)  # fmt: skip
    receipt = None
    if args.receipt and report.authenticated:  # a receipt records a proven success, never a failure
        from gapforge.operator.gate import gate
        from gapforge.operator.load import record_receipt

        receipt = record_receipt(
            gate(report, "verify --receipt"), "verify", None, args.operator_key
        )
    if args.json:
        print(json.dumps(report.as_json() | {"receipt": receipt and str(receipt)}, indent=2))
    else:
        print_verify(report)
        if receipt is not None:
            console.print(f"  receipt       {receipt}")
        elif args.receipt:
            console.print("  receipt       none written: a receipt records a verified bundle only")
    return report.exit_status
