"""The transfer commands' arguments and functions, for the CLI to wire: `inventory` (inside),
`delta` (outside), and the rebuild (inside; `join` or `rebuild`, the CLI names it). Each function
returns the exit status; every problem is a GapforgeError (one paragraph, exit 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gapforge.operator.receipt import OPERATOR_KEY_HELP
from gapforge.progress import console, note, step

if TYPE_CHECKING:
    from gapforge.transfer.delta import Against


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


# --- inventory (inside) ----------------------------------------------------------------------------


def inventory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", type=Path, nargs="+", metavar="SOURCE",
        help="bundle folders, rebuilt bundles, delta folders, folders of blobs/sha256/<hex>, or "
        "folders holding bundles",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("inventory.json"),
        help="where to write the signed inventory (default: ./inventory.json)",
    )  # fmt: skip
    parser.add_argument(
        "--verify-blobs", action="store_true",
        help="hash every blob and leave out (and list) any whose bytes are not its digest",
    )  # fmt: skip
    parser.add_argument("--operator-key", type=Path, help=OPERATOR_KEY_HELP)
    parser.add_argument("--json", action="store_true", help="print the inventory on stdout")


def cmd_inventory(args: argparse.Namespace) -> int:
    from gapforge.operator.receipt import operator_key
    from gapforge.release.client import trust_dir
    from gapforge.transfer.inventory import make_inventory, write_inventory

    step(f"listing the blobs held in {', '.join(str(s) for s in args.sources)}")
    inventory = make_inventory(list(args.sources), verify_blobs=args.verify_blobs)
    key = operator_key(trust_dir(), args.operator_key)
    path = write_inventory(inventory, key, args.out)
    blobs = inventory["blobs"]
    note(
        f"{len(blobs)} blobs ({_mb(sum(b['size'] for b in blobs.values()))}), "
        f"{len(inventory['releases'])} releases: "
        + (", ".join(f"{r['name']} {r['version']}" for r in inventory["releases"]) or "none")
    )
    for damaged in inventory["damaged"]:
        console.print(
            f"[bold red]damaged[/] {damaged['digest']} in {damaged['place']}: "
            f"{damaged['problem']} (left out of the inventory)"
        )
    note(f"signed with operator key {key.fingerprint}")
    console.print(f"[bold green]wrote[/] {path}: carry it out to make deltas against")
    if args.json:
        print(json.dumps(inventory, indent=2))
    return 0


# --- delta (outside) -------------------------------------------------------------------------------


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
    from gapforge.bundle.sign import load_public_key
    from gapforge.errors import BundleError
    from gapforge.transfer import TransferError
    from gapforge.transfer.delta import against_bundle, against_inventory

    spec = Path(args.against)
    if spec.is_file():
        keys = [load_public_key(path) for path in args.inventory_key]
        if not keys and not args.insecure_inventory:
            raise TransferError(
                f"--against {spec}: an inventory is trusted only when it is signed by the site's "
                "operator key, pinned with --inventory-key OPERATOR.pub.pem (received from the site "
                "out of band; the release repository's metadata names no operator keys). Pass it, "
                "or --insecure-inventory to accept the key the inventory names itself (integrity, "
                "not origin)"
            )
        return against_inventory(spec, keys or None)
    if spec.is_dir():
        return against_bundle(spec)
    from gapforge.release.releases import resolve
    from gapforge.release.repository import Repository, default_repository

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
    from gapforge.transfer.delta import make_delta

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
    note(f"left out, the site holds them ({len(result.left_out)} blobs, {_mb(left)}):")
    for item in result.left_out:
        note(f"  {item['digest']}  {item['what']}  {_mb(item['size'])}")
    if result.files_left_out:
        size = sum(item["size"] for item in result.files_left_out)
        note(
            f"left out, the site holds the same files ({len(result.files_left_out)}, {_mb(size)}):"
        )
        for item in result.files_left_out:
            note(f"  {item['name']}  {_mb(item['size'])}")
    note(f"included ({len(result.included)} blobs):")
    for item in result.included:
        note(f"  {item['digest']}  {item['what']}  {_mb(item['size'])}")
    share = result.delta_bytes / result.full_bytes * 100 if result.full_bytes else 0.0
    console.print(
        f"[bold green]wrote[/] {result.path}: {_mb(result.delta_bytes)}, the full bundle "
        f"{_mb(result.full_bytes)} ({share:.2f}%), in {result.seconds:.1f} s"
    )
    if args.json:
        summary = {
            "delta": str(result.path), "delta_bytes": result.delta_bytes,
            "full_bytes": result.full_bytes, "included": result.included, "left_out": result.left_out,
            "files_left_out": result.files_left_out,
        }  # fmt: skip
        print(json.dumps(summary, indent=2))
    return 0
