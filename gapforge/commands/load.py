"""`gapforge load BUNDLE [--to HOST/REPO]`: verify, then load the image into Docker or copy it into
a registry, tagged only once its ID or digest matches the verified one."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.commands.trust_options import (
    add_delta_options,
    add_scan_options,
    add_trust_options,
    anchor_of,
    full_bundle,
    operator_key_help,
    scan_options,
)
from gapforge.commands.verify import print_verify
from gapforge.progress import console


def load_arguments(load: argparse.ArgumentParser) -> None:
    load.add_argument("bundle", type=Path)
    add_trust_options(
        load,
        "load with no trust anchor (the bundle's own key), or even if verification fails: "
        "never for production",
    )
    load.add_argument(
        "--to",
        metavar="HOST/REPO",
        help="push into this registry with skopeo instead of docker load",
    )
    load.add_argument("--operator-key", type=Path, help=operator_key_help())
    add_scan_options(load)
    add_delta_options(load)
    load.add_argument(
        "--no-tls-verify", dest="tls_verify", action="store_const", const=False, default=None,
        help="talk plain HTTP to the registry (default: only for 127.0.0.0/8 and localhost)",
    )  # fmt: skip


def cmd_load(args: argparse.Namespace) -> int:
    from gapforge.operator.load import load_bundle

    anchor = anchor_of(args)
    loaded = load_bundle(
        full_bundle(args), anchor, args.to, args.insecure, args.tls_verify,
        on_verified=print_verify, operator_key=args.operator_key, scan=scan_options(args),
    )  # fmt: skip
    console.print(f"[bold green]loaded[/] into {loaded.where}")
    console.print(f"  image digest  {loaded.manifest_digest}")
    console.print(f"  image ID      {loaded.config_digest}")
    if loaded.receipt is not None:
        console.print(f"  receipt       {loaded.receipt}")
    return 0
