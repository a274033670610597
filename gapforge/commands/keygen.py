"""`gapforge keygen --out FILE`: an Ed25519 key pair for signing bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.progress import console


def keygen_arguments(keygen: argparse.ArgumentParser) -> None:
    keygen.add_argument(
        "--out", type=Path, default=Path("gapforge-signing.key"),
        help="private key path; the public key goes beside it as .pub.pem (default: ./gapforge-signing.key)",
    )  # fmt: skip
    keygen.add_argument("--force", action="store_true", help="replace an existing key")


def cmd_keygen(args: argparse.Namespace) -> int:
    from gapforge.bundle.sign import public_path, write_key_pair

    key = write_key_pair(args.out.resolve(), overwrite=args.force)
    console.print("[bold green]made[/] an Ed25519 signing key pair")
    console.print(f"  private key   {key.path}  (mode 0600; keep it on the connected side)")
    console.print(
        f"  public key    {public_path(key.path)}  (give operators this file, out of band)"
    )
    console.print(f"  fingerprint   {key.fingerprint}")
    console.print(
        f"  build with    gapforge build RECIPE --key {key.path}   (or GAPFORGE_SIGNING_KEY)"
    )
    return 0
