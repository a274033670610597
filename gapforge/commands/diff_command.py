"""`gapforge diff A B`: what changed between two bundles (the release manager's command, connected side).

`diff_arguments(parser)` adds its arguments, `cmd_diff(args)` runs it and returns the exit status: 0
whether or not the bundles differ (like `git diff --no-exit`); a bad input is a BundleError (status 2).
To be moved into gapforge.commands.release_manager, with its row in gapforge.cli.COMMANDS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from gapforge.errors import BundleError

BUNDLE_HELP = "a bundle folder (dist/<recipe>-<version>/)"


def diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", type=Path, help=BUNDLE_HELP + ": the one the site holds (old)")
    parser.add_argument("b", type=Path, help=BUNDLE_HELP + ": the one to deliver (new)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="release notes in Markdown")
    output.add_argument("--json", action="store_true", help="machine-readable, stable keys")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write to FILE (atomically) instead of stdout"
    )


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling of `path`, then rename it into place."""
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise BundleError(
            f"{path}: could not write the diff ({exc.strerror or exc}): pass an --out FILE in a "
            "folder you can write to"
        ) from None


def cmd_diff(args: argparse.Namespace) -> int:
    from gapforge.diff import compare_bundles, diff_json, render_markdown, render_text

    diff = compare_bundles(args.a, args.b)
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


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {"diff": diff_arguments}


def register(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `name`, one of this module's commands, to its parser."""
    ARGUMENTS[name](parser)
