"""`gapforge split BUNDLE --media M --out DIR` (outside): parts sized to the medium, with parity;
and the media checks `gapforge join` (commands/join.py) runs on them inside."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.sign import load_public_key, resolve_signing_key
from gapforge.cache import default_cache_dir
from gapforge.errors import BundleError
from gapforge.operator.anchor import Anchor
from gapforge.operator.join import JoinResult, join_parts
from gapforge.operator.join_sources import check_part, find_sources, media_keys, ranges
from gapforge.operator.verify_report import VerifyReport
from gapforge.progress import console, note, step
from gapforge.release_manager.split import DEFAULT_BLOCK_SIZE, MEDIA, split_bundle


def split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="the bundle folder (dist/<name>-<version>/)")
    parser.add_argument(
        "--media",
        required=True,
        help=f"{', '.join(MEDIA)}, or a capacity: 700M, 4.7G (powers of 1000), 64KiB, bytes",
    )
    parser.add_argument(
        "--parity", type=int, default=1, help="parity parts: how many media may be lost (default 1)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for disc-01/ … (new or empty)"
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=None,
        help="the bundle's signing key (default: $GAPFORGE_SIGNING_KEY, else the cache's own key)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        help="bytes per checked block: a bad sector costs one block (default 1 MiB)",
    )


def cmd_split(args: argparse.Namespace) -> int:
    key = resolve_signing_key(args.key, default_cache_dir())
    step(f"split {args.bundle} for {args.media}, {args.parity} parity")
    result = split_bundle(args.bundle, args.out, args.media, args.parity, key, args.block_size)
    m = result.manifest
    note(
        f"{m.k} data + {m.n} parity parts of {m.part_size} bytes; stream {m.stream_size} bytes, "
        f"sha256 {m.stream_sha256}"
    )
    note(f"any {m.k} of the {m.k + m.n} media rebuild the bundle: burn each folder to its medium:")
    for folder in result.media:
        note(f"  {folder}")
    return 0


def join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", type=Path, nargs="+", metavar="PARTS_OR_FOLDERS",
        help="mounted media (disc-01 …), part files, or the folder 'gapforge split' wrote",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="where the bundle folder goes")
    parser.add_argument(
        "--key",
        type=Path,
        default=None,
        help="the release key's public half, to check the parts manifest's signature",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check the media given, block by block"
    )


def _unpinned_warning() -> None:
    console.print(
        "[bold yellow]UNPINNED[/]: no --key: the parts manifest's signature is not checked against "
        "a key you trust. The join still checks every block against the manifest, and the bundle "
        "must still pass 'gapforge verify' with your own trust anchor."
    )


def print_join(result: JoinResult) -> None:
    """What a join did: its warnings, parts copied or already there, blocks rebuilt."""
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    note(
        f"copied {len(result.copied)} data parts, {len(result.skipped)} already there, "
        f"{result.repaired_blocks} blocks rebuilt from parity, {result.seconds:.1f} s"
    )


def cmd_join(args: argparse.Namespace) -> int:
    keys: list[Ed25519PublicKey] = [load_public_key(args.key)] if args.key else []
    if not keys:
        _unpinned_warning()
    if args.check:
        return check_media(args.sources, keys)
    if args.out is None:
        raise BundleError("gapforge join: --out DIR is needed (or --check to only check media)")
    result = join_parts(args.sources, args.out, keys)
    print_join(result)
    step(f"joined {result.bundle}")
    note(f"now: gapforge verify {result.bundle} --key RELEASE.pub.pem (or your trusted root)")
    return 0


def join_verified(paths: Sequence[Path], out: Path, anchor: Anchor) -> VerifyReport:
    """`gapforge join` of media under the operator's anchor: the parts manifest checked against the
    keys the anchor names before any part is read (join_sources.media_keys), the joined bundle
    through the trust gate before it is renamed into place; the gate's report, of the bundle in
    its place."""
    from gapforge.operator.transfer_trust import verify_or_refuse

    reports: list[VerifyReport] = []

    def gate(folder: Path) -> None:
        step(f"verifying {folder.name} against {anchor.source}")
        reports.append(verify_or_refuse(folder, anchor, "join"))

    result = join_parts(paths, out, media_keys(paths, anchor), verify=gate)
    print_join(result)
    report = reports[-1]
    report.bundle = result.bundle
    return report


def check_media(paths: Sequence[Path], keys: Sequence[Ed25519PublicKey]) -> int:
    """`join --check`: every block of every part given against the manifest (checked with `keys`
    when given); 1 when a part is bad or none is found."""
    sources = find_sources(paths, keys)
    m = sources.manifest
    for warning in sources.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    bad = 0
    for part in m.parts:
        for path in sources.copies.get(part.name, []):
            report = check_part(path, part, m.block_size)
            if report.ok:
                console.print(f"{part.medium}: OK  {path} ({part.name}, {len(part.blocks)} blocks)")
            else:
                bad += 1
                detail = (
                    f"bad blocks {ranges(report.bad_blocks)} of {len(part.blocks)}"
                    if report.bad_blocks
                    else "its blocks match but the file's size or sha256 does not"
                )
                console.print(f"{part.medium}: BAD {path} ({part.name}): {detail}")
    if not sources.copies:
        console.print("no part file found on the media given")
        return 1
    return 1 if bad else 0
