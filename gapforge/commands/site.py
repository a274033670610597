"""The operator's commands for the site itself, inside the gap: trust (pin the release root once),
inventory (what the site holds), join (media parts or a delta into a verified bundle) and deploy
(the cluster hand-off of a verified bundle).

Each command is a pair: `<name>_arguments(parser)` adds its arguments, `cmd_<name>(args)` runs it and
returns the exit status. What a command needs is imported when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gapforge.commands.operator import print_verify
from gapforge.commands.trust_options import add_trust_options, anchor_of
from gapforge.progress import console, step


def inventory_arguments(parser: argparse.ArgumentParser) -> None:
    from gapforge.transfer.delta_cli import inventory_arguments as arguments

    arguments(parser)


def cmd_inventory(args: argparse.Namespace) -> int:
    from gapforge.transfer.delta_cli import cmd_inventory as run

    return run(args)


def join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", type=Path, nargs="+", metavar="PARTS_OR_DELTA",
        help="mounted media (disc-01 …), part files, the folder 'gapforge split' wrote; or one "
        "delta folder ('gapforge delta' wrote it) with --from",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="where the bundle folder goes")
    parser.add_argument(
        "--from", dest="held", type=Path, action="append", default=[], metavar="SOURCE",
        help="for a delta: where the site's blobs are (bundle folders, folders of bundles, "
        "blobs/sha256/ folders; repeatable; read only)",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true", help="only check the media given, block by block"
    )
    add_trust_options(parser, "verify the joined bundle against its own key only")


def cmd_join(args: argparse.Namespace) -> int:
    """Parts (repaired from parity) or a delta (plus what the site holds) into the full bundle.
    The parts manifest or the delta's SHA256SUMS is checked against the operator's trust anchor
    before anything it names is touched, and the result goes through the trust gate before it is
    renamed into place (gapforge.transfer.trust)."""
    from gapforge.errors import BundleError
    from gapforge.release.client import trusted_root_installed
    from gapforge.transfer import is_delta

    if args.check:  # one medium (or several) on its own: every block against the manifest
        from gapforge.transfer.split_cli import check_media
        from gapforge.transfer.split_cli import cmd_join as check_unpinned

        if args.key is None and not args.insecure and trusted_root_installed():
            from gapforge.transfer.join_sources import media_keys

            return check_media(args.sources, media_keys(args.sources, anchor_of(args)))
        return check_unpinned(args)  # --key, or no anchor: says UNPINNED loudly
    anchor = anchor_of(args)  # before any work: no anchor, no join
    if args.out is None:
        raise BundleError("gapforge join: --out DIR is needed (or --check to only check media)")
    if len(args.sources) == 1 and is_delta(args.sources[0]):
        from gapforge.transfer.rebuild import rebuild_bundle

        step(f"checking and rebuilding the full bundle from the delta {args.sources[0]}")
        report = rebuild_bundle(args.sources[0], list(args.held), args.out, anchor).report
    else:
        from gapforge.transfer.split_cli import join_verified

        report = join_verified(args.sources, args.out, anchor)
    print_verify(report)
    return 0


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
    from gapforge.release.client import trust_init, trust_state, trust_update

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


def deploy_arguments(parser: argparse.ArgumentParser) -> None:
    from gapforge.deploy.cli import deploy_arguments as arguments

    arguments(parser)


def cmd_deploy(args: argparse.Namespace) -> int:
    from gapforge.deploy.cli import cmd_deploy as run

    return run(args)


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "trust": trust_arguments,
    "inventory": inventory_arguments,
    "join": join_arguments,
    "deploy": deploy_arguments,
}


def register(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `name`, one of this module's commands, to its parser."""
    ARGUMENTS[name](parser)
