"""Options and helpers that several commands share: the cache, the lock and profile folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.cache import Cache, default_cache_dir
from gapforge.profile import REPO_ROOT


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="content-addressed cache (default: $GAPFORGE_CACHE or ~/.cache/gapforge)",
    )


def add_common(parser: argparse.ArgumentParser) -> None:
    """--cache-dir, --lock-dir and --images-dir: what every command that reads the locks takes."""
    add_cache_dir(parser)
    parser.add_argument(
        "--lock-dir",
        type=Path,
        default=REPO_ROOT / "lockfiles",
        help="lockfiles folder (default: lockfiles/)",
    )
    parser.add_argument(
        "--images-dir",
        type=Path,
        default=REPO_ROOT / "images",
        help="profiles folder (default: images/)",
    )


def cache_dir(args: argparse.Namespace) -> Path:
    """--cache-dir, else $GAPFORGE_CACHE or ~/.cache/gapforge, resolved."""
    return (args.cache_dir or default_cache_dir()).resolve()


def cache_of(args: argparse.Namespace) -> Cache:
    return Cache(cache_dir(args))


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"
