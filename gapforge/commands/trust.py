"""`gapforge trust init ROOT | show | update --metadata DIR` (inside): the site pins the release
repository's root once, out of band, and follows its rotations from then on."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gapforge.progress import console


def trust_arguments(trust: argparse.ArgumentParser) -> None:
    sub = trust.add_subparsers(dest="trust_command", required=True, metavar="SUBCOMMAND")
    init = sub.add_parser("init", help="pin the release repository's root.json (out of band)")
    init.add_argument("root_json", type=Path)
    init.add_argument("--channel", choices=("approved", "candidate"), default="approved")
    init.add_argument("--force", action="store_true", help="replace the site's trust state")
    sub.add_parser("show", help="what this site trusts")
    update = sub.add_parser("update", help="refresh from a metadata folder (follows rotations)")
    update.add_argument("--metadata", type=Path, required=True)


def _print_trust(state: Any) -> None:
    from rich.table import Table

    table = Table("", "", title=f"trust state {state.path}", title_justify="left")
    table.add_row("root version", str(state.root_version))
    table.add_row("root expires", state.as_json()["root_expires"])
    table.add_row("root threshold", f"{state.threshold} of {len(state.root_keys)}")
    for fp, keyid in state.root_keys:
        table.add_row("root key", f"{fp} (keyid {keyid[:8]})")
    table.add_row("channel", state.channel)
    table.add_row("timestamp version", str(state.timestamp_version or "none yet"))
    receipts = Path(state.path) / "receipts"
    count = len(list(receipts.glob("*.receipt.json"))) if receipts.is_dir() else 0
    table.add_row("receipts", f"{count} signed receipts in {receipts}")
    console.print(table)


def cmd_trust(args: argparse.Namespace) -> int:
    from gapforge.operator.tuf_client import trust_init, trust_state, trust_update

    if args.trust_command == "init":
        state = trust_init(args.root_json, args.channel, force=args.force)
        console.print(f"[bold green]trusted[/] release root version {state.root_version}")
        _print_trust(state)
    elif args.trust_command == "show":
        _print_trust(trust_state())
    else:
        before, after = trust_update(args.metadata)
        console.print(f"root version {before.root_version} → {after.root_version}")
        _print_trust(after)
    return 0
