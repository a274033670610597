"""`gapforge inventory SOURCE... --out inventory.json` (inside): the signed list of the blobs and
files the site holds, which the connected side makes deltas against (commands/delta.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gapforge.commands._shared import megabytes
from gapforge.operator.receipt import OPERATOR_KEY_HELP
from gapforge.progress import console, note, step


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
    from gapforge.operator.inventory import make_inventory, write_inventory
    from gapforge.operator.receipt import operator_key
    from gapforge.operator.tuf_client import trust_dir

    step(f"listing the blobs held in {', '.join(str(s) for s in args.sources)}")
    inventory = make_inventory(list(args.sources), verify_blobs=args.verify_blobs)
    key = operator_key(trust_dir(), args.operator_key)
    path = write_inventory(inventory, key, args.out)
    blobs = inventory["blobs"]
    note(
        f"{len(blobs)} blobs ({megabytes(sum(b['size'] for b in blobs.values()))}), "
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
