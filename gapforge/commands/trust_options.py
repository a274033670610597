"""The trust options every operator command shares (--key, --repo, --channel, --insecure), the
anchor they choose, the ClamAV scan options, and a delta's rebuild before a command acts on it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gapforge.progress import step

KEY_HELP = (
    "the release key's public half (.pub.pem), received out of band: pins it for this command"
)


def operator_key_help() -> str:
    from gapforge.operator.receipt import OPERATOR_KEY_HELP

    return OPERATOR_KEY_HELP


def add_trust_options(parser: argparse.ArgumentParser, insecure_help: str) -> None:
    """The trust anchor (gapforge.operator.anchor): --key, or the root from 'gapforge trust init';
    --repo and --channel for the release check; --insecure, explicit and loud."""
    parser.add_argument("--key", type=Path, help=KEY_HELP)
    parser.add_argument(
        "--repo", type=Path, metavar="METADATA",
        help="the release repository's metadata folder to check against (default: the bundle's "
        "own release/metadata/); used with the trusted root from 'gapforge trust init'",
    )  # fmt: skip
    parser.add_argument(
        "--channel", help="the release channel to require (default: the site's, from trust init)"
    )
    parser.add_argument("--insecure", action="store_true", help=insecure_help)


def anchor_of(args: argparse.Namespace) -> Any:
    """The command's trust anchor, or NoTrustAnchor (exit 2) saying how to get one."""
    from gapforge.operator.anchor import choose_anchor

    return choose_anchor(args.command, args.key, args.insecure, args.repo, args.channel)


def target_anchor(args: argparse.Namespace) -> Any:
    """run/preflight: a bundle folder needs the anchor; an image reference is checked against the
    signed receipt of the verified load that imported it instead (None here)."""
    return anchor_of(args) if Path(args.target).is_dir() or args.key else None


def add_scan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scan", action="store_true",
        help="clean room: run ClamAV (clamscan) over every file and the contents of every layer "
        "before anything is loaded; a hit refuses the bundle, naming the layer and path",
    )  # fmt: skip
    parser.add_argument(
        "--clamav-db", type=Path, metavar="PATH",
        help="the site's ClamAV signature database, a folder or a file (default /var/lib/clamav)",
    )  # fmt: skip
    parser.add_argument(
        "--scan-tmp", type=Path, metavar="DIR",
        help="where the layers are unpacked for the scan (default $TMPDIR); needs the image's size free",
    )  # fmt: skip


def add_delta_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="held", type=Path, action="append", default=[], metavar="SOURCE",
        help="BUNDLE is a delta: rebuild it from these (the site's bundle folders, folders of "
        "bundles, blobs/sha256/ folders; repeatable; read only), then check it like a full bundle",
    )  # fmt: skip
    parser.add_argument(
        "--rebuild-into", type=Path, metavar="DIR", default=None,
        help="where a delta's full bundle is rebuilt (default: the current folder)",
    )  # fmt: skip


def full_bundle(args: argparse.Namespace) -> Path:
    """args.bundle, or, for a delta, the full bundle rebuilt from it and what the site holds."""
    from gapforge.bundle.transfer import is_delta
    from gapforge.errors import BundleError

    bundle: Path = args.bundle
    if not is_delta(bundle):
        return bundle
    if not args.held:
        raise BundleError(
            f"{bundle}: a delta bundle (it holds only the blobs the site lacked): pass --from with "
            "where the site keeps what it already holds (the bundle it was made against, a folder "
            "of bundles), and it is rebuilt and checked like the full bundle"
        )
    from gapforge.operator.rebuild import rebuild_bundle

    step(f"rebuilding the full bundle from the delta {bundle}")
    into = args.rebuild_into or Path.cwd()
    return rebuild_bundle(bundle, list(args.held), into, anchor_of(args), args.command).path


def scan_options(args: argparse.Namespace) -> Any:
    from gapforge.operator.verify import ScanOptions

    return ScanOptions(args.clamav_db, args.scan_tmp) if args.scan else None
