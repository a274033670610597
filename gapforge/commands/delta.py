"""`gapforge delta BUNDLE --against INVENTORY|BUNDLE|VERSION --out DIR` (outside): a delta bundle,
only the blobs and files the site lacks. The site rebuilds it with `gapforge join` (commands/join.py).
Every problem is a GapforgeError (one paragraph, exit 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gapforge.commands._shared import megabytes
from gapforge.progress import console, note, step

if TYPE_CHECKING:
    from gapforge.release_manager.delta import Against


def delta_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="the full bundle folder to send")
    parser.add_argument(
        "--against", required=True, metavar="INVENTORY|OLD_BUNDLE|VERSION",
        help="what the site holds: its signed inventory, the last bundle delivered there, or that "
        "bundle's release version (resolved through --repo)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write <name>-<version>.delta/ in"
    )
    parser.add_argument(
        "--repo", type=Path, default=None,
        help="the release repository that resolves a release version (default: "
        "$GAPFORGE_RELEASE_REPO, else ./release-repo)",
    )  # fmt: skip
    parser.add_argument(
        "--inventory-key", type=Path, action="append", default=[], metavar="OPERATOR.pub.pem",
        help="the site's operator public key: the inventory must be signed with it (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--insecure-inventory", action="store_true",
        help="accept an inventory checked only against the operator key it names itself (proves "
        "it was not damaged, not who wrote it); without it, --inventory-key is needed",
    )  # fmt: skip
    parser.add_argument(
        "--no-check", action="store_true",
        help="do not hash image.tar against SHA256SUMS first (faster; a damaged bundle is then "
        "only found inside the gap)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print delta.json's summary on stdout")


def _against(args: argparse.Namespace) -> Against:
    from gapforge.bundle.transfer import TransferError
    from gapforge.errors import BundleError
    from gapforge.release_manager.delta import against_bundle, against_spec

    spec = Path(args.against)
    if spec.is_file() or spec.is_dir():  # the site's inventory, or the last bundle delivered
        return against_spec(spec, args.inventory_key, args.insecure_inventory, "--against")
    from gapforge.release_manager.releases import resolve
    from gapforge.release_manager.repository import Repository, default_repository

    repository = args.repo or default_repository()
    if not repository.is_dir():
        raise TransferError(
            f"--against {args.against}: no such inventory file or bundle folder, and no release "
            f"repository at {repository} to resolve it as a release version: pass the site's "
            "inventory, the last bundle delivered, or --repo RELEASE_REPO with a version"
        )
    repo = Repository.open(repository)
    name, version = resolve(repo, args.against)
    recorded = repo.bundles.get(f"{name}-{version}")
    if recorded is None or not Path(recorded).is_dir():
        raise BundleError(
            f"--against {args.against}: release {name}/{version} is in {repo.path}, but the bundle "
            f"it was added from ({recorded or 'not recorded'}) is not on this machine: pass that "
            "bundle folder, or the site's inventory, instead"
        )
    return against_bundle(Path(recorded))


def cmd_delta(args: argparse.Namespace) -> int:
    from gapforge.release_manager.delta import make_delta

    against = _against(args)
    check = against.record
    if check["kind"] == "inventory" and not check["key_pinned"]:
        console.print(
            f"[bold yellow]note[/] the inventory is signed by operator key {check['operator_key']}, "
            "not checked against a pinned key: pass --inventory-key OPERATOR.pub.pem to require it"
        )
    step(f"writing a delta of {args.bundle} against {against.label}")
    result = make_delta(args.bundle, against, args.out, check_archive=not args.no_check)
    left = sum(item["size"] for item in result.left_out)
    note(f"left out, the site holds them ({len(result.left_out)} blobs, {megabytes(left)}):")
    for item in result.left_out:
        note(f"  {item['digest']}  {item['what']}  {megabytes(item['size'])}")
    if result.files_left_out:
        size = sum(item["size"] for item in result.files_left_out)
        note(
            f"left out, the site holds the same files ({len(result.files_left_out)}, {megabytes(size)}):"
        )
        for item in result.files_left_out:
            note(f"  {item['name']}  {megabytes(item['size'])}")
    note(f"included ({len(result.included)} blobs):")
    for item in result.included:
        note(f"  {item['digest']}  {item['what']}  {megabytes(item['size'])}")
    share = result.delta_bytes / result.full_bytes * 100 if result.full_bytes else 0.0
    console.print(
        f"[bold green]wrote[/] {result.path}: {megabytes(result.delta_bytes)}, the full bundle "
        f"{megabytes(result.full_bytes)} ({share:.2f}%), in {result.seconds:.1f} s"
    )
    if args.json:
        summary = {
            "delta": str(result.path), "delta_bytes": result.delta_bytes,
            "full_bytes": result.full_bytes, "included": result.included, "left_out": result.left_out,
            "files_left_out": result.files_left_out,
        }  # fmt: skip
        print(json.dumps(summary, indent=2))
    return 0
