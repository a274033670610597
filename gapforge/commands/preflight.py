"""`gapforge preflight BUNDLE --data FILE --out DIR`: go/no-go before a run: image, offline
start, data, disk, GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.commands.trust_options import (
    add_trust_options,
    target_anchor,
)
from gapforge.progress import console, step


def preflight_arguments(pre: argparse.ArgumentParser) -> None:
    pre.add_argument("target", help="a bundle folder, or an image reference already loaded")
    pre.add_argument("--data", type=Path, required=True)
    pre.add_argument("--out", type=Path, required=True)
    add_trust_options(
        pre,
        "check a bundle that does not authenticate, or an image no verified load imported",
    )


def cmd_preflight(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from gapforge.operator.preflight import preflight

    step(f"preflight: {args.target} on {args.data} → {args.out}")
    checks = preflight(args.target, args.data, args.out, target_anchor(args), args.insecure)
    table = Table("check", "", "detail")
    for check in checks:
        verdict = "[green]go[/]" if check.ok else "[bold red]NO-GO[/]"
        table.add_row(check.name, verdict, escape(check.detail))
    console.print(table)
    go = all(check.ok for check in checks)
    console.print("[bold green]GO[/]" if go else "[bold red]NO-GO[/]: fix the rows marked above")
    return 0 if go else 1
