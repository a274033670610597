"""`gapforge cache info | prune`: what the build cache holds, and removing what no build used."""

from __future__ import annotations

import argparse
import shutil
import time

from gapforge.commands._shared import add_cache_dir, cache_of, gigabytes
from gapforge.errors import GapforgeError
from gapforge.progress import console

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5T' or plain bytes (decimal units, as df -H and docker print them)."""
    value = text.strip().upper().removesuffix("B")
    unit = value[-1] if value and value[-1] in "KMGT" else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: write bytes or a number with K, M, G or T (e.g. 20G)"
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size cannot be negative")
    return int(number * _UNITS[unit])


def cache_arguments(cache: argparse.ArgumentParser) -> None:
    cache.add_argument("action", choices=["info", "prune"])
    cache.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="prune entries that no build has used for this many days",
    )
    cache.add_argument(
        "--max-size",
        type=parse_size,
        metavar="SIZE",
        help="then prune least recently used entries until the cache holds at most SIZE (e.g. 20G)",
    )
    cache.add_argument(
        "--images",
        action="store_true",
        help="also untagged sealed images in the Docker engine (left when a rebuild took the tag)",
    )
    cache.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    add_cache_dir(cache)


def cmd_cache(args: argparse.Namespace) -> int:
    """Show what the cache and the engine hold for gapforge; prune what no build used lately."""
    from rich.table import Table

    cache = cache_of(args)
    if args.action == "info":
        entries = cache.entries()
        table = Table(title=f"gapforge cache {cache.root}")
        for column in ("area", "entries", "size", "oldest last use (days)"):
            table.add_column(column, justify="left" if column == "area" else "right")
        now = time.time()
        for area in ("blobs", "files", "venvs"):
            mine = [e for e in entries if e.area == area]
            oldest = max((now - e.last_used) / 86400 for e in mine) if mine else 0.0
            table.add_row(
                area, str(len(mine)), gigabytes(sum(e.size for e in mine)), f"{oldest:.1f}"
            )
        table.add_row("total", str(len(entries)), gigabytes(sum(e.size for e in entries)), "")
        console.print(table)
        free = shutil.disk_usage(cache.root).free
        console.print(f"free on the cache's filesystem: {gigabytes(free)}")
        if args.images:
            from gapforge.engine import connect, stale_images

            stale = stale_images(connect())
            console.print(
                f"Docker engine: {len(stale)} untagged gapforge image(s) left by rebuilds, "
                f"{gigabytes(sum(size for _, size in stale))} before sharing"
            )
        return 0
    if args.older_than is None and args.max_size is None and not args.images:
        raise GapforgeError(
            "gapforge cache prune: nothing to prune by: give --older-than DAYS (entries no build "
            "used for that long), --max-size SIZE (least recently used first) and/or --images "
            "(untagged sealed images in the Docker engine)"
        )
    older = args.older_than * 86400 if args.older_than is not None else None
    result = cache.prune(older_than_s=older, max_bytes=args.max_size, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in result.removed:
        console.print(f"    {verb} {entry.area}/{entry.path.name[:24]}  {gigabytes(entry.size)}")
    console.print(
        f"cache: {verb} {len(result.removed)} entries ({gigabytes(result.removed_bytes)}); "
        f"{gigabytes(result.kept_bytes)} kept"
    )
    if args.images:
        from gapforge.engine import connect, remove_images, stale_images

        client = connect()
        stale = stale_images(client)
        kept = [] if args.dry_run else remove_images(client, [image_id for image_id, _ in stale])
        console.print(
            f"Docker engine: {verb} {len(stale) - len(kept)} untagged gapforge image(s)"
            + (f"; kept, in use: {', '.join(kept)}" if kept else "")
        )
    return 0
