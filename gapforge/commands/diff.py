"""`gapforge diff A B`: what changed between two bundles or two release versions, each side through
the trust gate first (gapforge/release_manager/diff/ compares, this module parses arguments and prints)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gapforge.commands.release import add_repo_option, open_repository
from gapforge.errors import BundleError

BUNDLE_HELP = "a bundle folder (dist/<recipe>-<version>/)"


def diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "a", help=BUNDLE_HELP + ", or a release version: the one the site holds (old)"
    )
    parser.add_argument("b", help=BUNDLE_HELP + ", or a release version: the one to deliver (new)")
    add_repo_option(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="release notes in Markdown")
    output.add_argument("--json", action="store_true", help="machine-readable, stable keys")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write to FILE (atomically) instead of stdout"
    )
    parser.add_argument(
        "--key", type=Path, metavar="RELEASE.pub.pem",
        help="the key a bundle folder must be signed with (default: the trusted root from "
        "'gapforge trust init'); a release version is checked against the repository's build keys",
    )  # fmt: skip
    parser.add_argument(
        "--insecure", action="store_true",
        help="check a bundle folder against its own key only (integrity, not origin)",
    )  # fmt: skip


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling of `path`, then rename it into place."""
    from gapforge.atomic import write_atomic

    try:
        write_atomic(path, text.encode())
    except OSError as exc:
        raise BundleError(
            f"{path}: could not write the diff ({exc.strerror or exc}): pass an --out FILE in a "
            "folder you can write to"
        ) from None


def _diff_side(spec: str, args: argparse.Namespace) -> tuple[Path, str]:
    """One side of the diff, verified before it is read (gapforge.release_manager.diff.sides)."""
    from gapforge.release_manager.diff.sides import verified_side

    return verified_side(spec, args.key, args.insecure, lambda: open_repository(args))


def cmd_diff(args: argparse.Namespace) -> int:
    from gapforge.release_manager.diff import (
        compare_bundles,
        diff_json,
        render_markdown,
        render_text,
    )

    (a, a_sums), (b, b_sums) = _diff_side(args.a, args), _diff_side(args.b, args)
    diff = compare_bundles(a, b, (a_sums, b_sums))
    if args.json:
        text = json.dumps(diff_json(diff), indent=2, sort_keys=True) + "\n"
    elif args.markdown:
        text = render_markdown(diff)
    else:
        text = render_text(diff)
    if args.out is not None:
        write_atomically(args.out, text)
    else:
        print(text, end="")
    return 0
