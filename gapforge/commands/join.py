"""`gapforge join PARTS... | DELTA --from HELD --out DIR` (inside): media parts (repaired from
parity) or a delta (plus what the site holds) into the full bundle, verified before it is renamed
into place."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.commands.trust_options import add_trust_options, anchor_of
from gapforge.commands.verify import print_verify
from gapforge.progress import step


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
    renamed into place (gapforge.operator.transfer_trust)."""
    from gapforge.bundle.transfer import is_delta
    from gapforge.errors import BundleError
    from gapforge.operator.tuf_client import trusted_root_installed

    if args.check:  # one medium (or several) on its own: every block against the manifest
        from gapforge.commands.split import check_media
        from gapforge.commands.split import cmd_join as check_unpinned

        if args.key is None and not args.insecure and trusted_root_installed():
            from gapforge.operator.join_sources import media_keys

            return check_media(args.sources, media_keys(args.sources, anchor_of(args)))
        return check_unpinned(args)  # --key, or no anchor: says UNPINNED loudly
    anchor = anchor_of(args)  # before any work: no anchor, no join
    if args.out is None:
        raise BundleError("gapforge join: --out DIR is needed (or --check to only check media)")
    if len(args.sources) == 1 and is_delta(args.sources[0]):
        from gapforge.operator.rebuild import rebuild_bundle

        step(f"checking and rebuilding the full bundle from the delta {args.sources[0]}")
        report = rebuild_bundle(args.sources[0], list(args.held), args.out, anchor).report
    else:
        from gapforge.commands.split import join_verified

        report = join_verified(args.sources, args.out, anchor)
    print_verify(report)
    return 0
