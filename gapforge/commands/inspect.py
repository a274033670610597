"""`gapforge inspect BUNDLE | --registry HOST/REPO:TAG`: what a verified bundle holds, or what is
attached to an image in the site's registry."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gapforge.progress import console, step


def inspect_arguments(inspect: argparse.ArgumentParser) -> None:
    from gapforge.commands.inspect_registry import inspect_registry_arguments

    inspect.add_argument("bundle", type=Path, nargs="?", help="a bundle folder")
    inspect.add_argument("--json", action="store_true")
    inspect_registry_arguments(inspect)  # its --key (the release key) serves a bundle too
    inspect.add_argument("--repo", type=Path, metavar="METADATA",
                         help="with the trusted root: the release metadata folder to check against")  # fmt: skip
    inspect.add_argument("--channel", help="with the trusted root: the release channel to require")
    inspect.add_argument(
        "--insecure", action="store_true",
        help="show what a bundle that does not verify says about itself, marked UNVERIFIED",
    )  # fmt: skip


def cmd_inspect(args: argparse.Namespace) -> int:
    from gapforge.operator.inspect import bundle_table, describe_bundle

    if args.registry is not None:
        from gapforge.commands.inspect_registry import cmd_inspect_registry

        return cmd_inspect_registry(args)
    if args.bundle is None:
        from gapforge.errors import BundleError

        raise BundleError(
            "inspect: pass a bundle folder (dist/<recipe>-<version>), or --registry HOST/REPO:TAG "
            "to list and check what is attached to an image in a registry"
        )
    facts = _inspect_checked(args, describe_bundle)
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        console.print(bundle_table(facts))
        if facts["verified"]:
            console.print(
                "(verified against your trust anchor, but the archive's bytes: 'verify' hashes them)"
            )
        else:
            console.print("[bold red]UNVERIFIED[/]: what the bundle says about itself (--insecure)")
    return 0


def _inspect_checked(
    args: argparse.Namespace, describe: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """The facts of a bundle the gate proved (its verified bundle.json); with --insecure, of one it
    did not, marked `verified: false`. NotVerified (exit 1) otherwise."""
    from gapforge.operator.anchor import choose_anchor
    from gapforge.operator.gate import NotVerified, gate
    from gapforge.operator.verify import authenticate_index

    key = (args.registry_keys or [None])[0]
    anchor = choose_anchor("inspect", key, args.insecure, args.repo, args.channel)
    report = authenticate_index(args.bundle, anchor)
    if report.authenticated:
        verified = gate(report, "inspect")
        return describe(verified.folder, verified.index, verified.sums_sha256) | {"verified": True}
    if not args.insecure:
        raise NotVerified(report, "inspect")
    step(
        f"[bold red]--insecure[/]: {args.bundle} did not verify; showing what it says about itself"
    )
    return describe(args.bundle) | {"verified": False}
