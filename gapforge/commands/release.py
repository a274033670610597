"""`gapforge release SUBCOMMAND`: the release manager's TUF repository of releases (init, add,
promote, revoke, rotate, refresh, status, log, show, list, export); the library is gapforge/release/."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gapforge.progress import console

if TYPE_CHECKING:
    from gapforge.release_manager.repository import Repository


_KEY_HELP = "a private key file to sign with (repeatable; default: the repository's keys folder)"


def add_repo_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo", type=Path, default=None,
        help="the release repository (default: $GAPFORGE_RELEASE_REPO, else ./release-repo)",
    )  # fmt: skip


def release_arguments(release: argparse.ArgumentParser) -> None:
    sub = release.add_subparsers(dest="release_command", required=True, metavar="SUBCOMMAND")
    init = sub.add_parser("init", help="make a new release repository and its missing keys")
    init.add_argument("dir", type=Path)
    init.add_argument(
        "--keys-dir", type=Path, help="where keys are read or made (default DIR.keys/)"
    )
    init.add_argument("--root-keys", type=int, default=3)
    init.add_argument("--root-threshold", type=int, default=2)
    init.add_argument("--approvers", type=int, default=1)
    init.add_argument("--approve-threshold", type=int, default=1)
    init.add_argument("--build-key", type=Path, action="append", default=[],
                      help="an existing bundle signing key (private); default: make build.key")  # fmt: skip
    init.add_argument("--expires", action="append", default=[], metavar="ROLE=DAYS")
    add = sub.add_parser("add", help="list a built bundle on the candidate channel")
    add.add_argument("bundle", type=Path)
    add.add_argument("--key", type=Path, action="append", default=[], help=_KEY_HELP)
    promote = sub.add_parser("promote", help="promote a candidate release to approved")
    promote.add_argument("version", help="<name>-<version>, <name>/<version> or a bare version")
    promote.add_argument("--to", choices=("approved",), required=True)
    promote.add_argument("--key", type=Path, action="append", default=[], help=_KEY_HELP)
    revoke = sub.add_parser("revoke", help="revoke a release (it stays listed, marked revoked)")
    revoke.add_argument("version")
    revoke.add_argument("--reason", required=True)
    revoke.add_argument("--key", type=Path, action="append", default=[], help=_KEY_HELP)
    rotate = sub.add_parser("rotate", help="change a role's keys or threshold")
    rotate.add_argument("--role", required=True,
                        choices=("root", "targets", "snapshot", "timestamp", "candidate", "approved"))  # fmt: skip
    rotate.add_argument("--add-key", type=Path, action="append", default=[], metavar="PUBFILE")
    rotate.add_argument("--remove-key", action="append", default=[], metavar="FINGERPRINT_OR_KEYID")
    rotate.add_argument("--threshold", type=int)
    rotate.add_argument("--key", type=Path, action="append", default=[], help=_KEY_HELP)
    sub.add_parser("refresh", help="re-sign snapshot and timestamp (before each transfer)")
    sub.add_parser("status", help="each role's version and expiry; exit 1 if any expired")
    sub.add_parser("log", help="what was done, when and why")
    show = sub.add_parser("show", help="one release: channels, revocation, every custom field")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    sub.add_parser("list", help="every release and the channels that list it")
    exp = sub.add_parser("export", help="copy the current metadata into DEST (or a bundle)")
    exp.add_argument("dest", type=Path)
    for parser in sub.choices.values():
        if parser is not init:
            add_repo_option(parser)


def cmd_release(args: argparse.Namespace) -> int:
    handler = _HANDLERS[args.release_command]
    return handler(args)


def open_repository(args: argparse.Namespace) -> Repository:
    from gapforge.release_manager.repository import Repository, default_repository

    return Repository.open(args.repo or default_repository())


def _init(args: argparse.Namespace) -> int:
    from gapforge.bundle.sign import development_key_path
    from gapforge.cache import default_cache_dir
    from gapforge.release_manager.create import init_repository, parse_expires

    result = init_repository(
        args.dir, args.keys_dir, args.root_keys, args.root_threshold, args.approvers,
        args.approve_threshold, args.build_key, parse_expires(args.expires),
        development_key_path(default_cache_dir()),
    )  # fmt: skip
    repo = result.repository
    console.print(f"[bold green]release repository[/] {repo.path}")
    console.print(f"  keys folder   {repo.keys_dir}")
    for path in result.generated:
        console.print(f"  made key      {path} (+ .pub.pem)")
    console.print("[yellow]Move these private keys offline[/] (sign with them only when needed):")
    for path in result.offline:
        console.print(f"  {path}")
    console.print(f"Hand {repo.metadata_dir / 'root.json'} to each site out of band: "
                  "'gapforge trust init root.json'")  # fmt: skip
    return 0


def _add(args: argparse.Namespace) -> int:
    from gapforge.release_manager.releases import add_bundle

    done = add_bundle(open_repository(args), args.bundle, args.key)
    verb = "added" if done.added else "already listed (same SHA256SUMS): nothing changed"
    console.print(f"[bold green]{done.name} {done.version}[/] {verb} on candidate")
    console.print(f"  SHA256SUMS signed by build key {done.signer}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from gapforge.release_manager.releases import promote

    done = promote(open_repository(args), args.version, args.key, args.to)
    label = f"{done.name} {done.version}"
    if done.already:
        console.print(f"{label} is already on approved: nothing changed")
    elif done.published:
        console.print(f"[bold green]{label}[/] promoted to approved "
                      f"({done.signatures} of {done.threshold} approvals)")  # fmt: skip
    else:
        console.print(
            f"[yellow]{done.signatures} of {done.threshold} approvals[/] for {label}; the next "
            f"approver runs: gapforge release promote {done.name}/{done.version} --to approved "
            "--key THEIRS"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from gapforge.release_manager.releases import revoke

    release = revoke(open_repository(args), args.version, args.reason, args.key)
    console.print(f"[bold red]revoked[/] {release.name} {release.version}: {args.reason}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from gapforge.release_manager.maintenance import rotate

    written = rotate(
        open_repository(args), args.role, args.add_key, args.remove_key, args.threshold, args.key
    )
    versions = ", ".join(f"{role} version {v}" for role, v in written.items())
    console.print(
        f"[bold green]rotated[/] {args.role}: wrote {versions}, new snapshot and timestamp"
    )
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from gapforge.release.metadata import iso

    timestamp = open_repository(args).refresh()
    console.print(f"[bold green]refreshed[/]: timestamp version {timestamp.signed.version}, "
                  f"valid until {iso(timestamp.signed.expires)}")  # fmt: skip
    return 0


def _status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from gapforge.release.metadata import iso
    from gapforge.release_manager.maintenance import status

    rows = status(open_repository(args))
    table = Table("role", "version", "expires", "days left", "")
    colours = {"ok": "green", "WARN": "yellow", "EXPIRED": "bold red"}
    for row in rows:
        table.add_row(row.role, str(row.version), iso(row.expires), f"{row.days_left:.1f}",
                      f"[{colours[row.state]}]{row.state}[/]")  # fmt: skip
    console.print(table)
    expired = [row.role for row in rows if row.state == "EXPIRED"]
    if expired:
        console.print(f"[bold red]expired[/]: {', '.join(expired)}: run 'gapforge release refresh' "
                      "(and re-sign the expired roles)")  # fmt: skip
    return 1 if expired else 0


def _log(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    table = Table("time", "action", "release", "channel", "detail", "roles")
    for entry in open_repository(args).history():
        detail = entry.get("reason") or entry.get("approvals") or entry.get("role") or ""
        roles = " ".join(f"{k}:{v}" for k, v in sorted(entry.get("roles", {}).items()))
        table.add_row(entry["time"], entry["action"], entry.get("version", ""),
                      entry.get("channel", ""), escape(str(detail)), roles)  # fmt: skip
    console.print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from gapforge.release_manager.maintenance import show_rows
    from gapforge.release_manager.releases import releases, resolve

    repo = open_repository(args)
    release = releases(repo)[resolve(repo, args.version)]
    if args.json:
        print(json.dumps({"name": release.name, "version": release.version,
                          "channels": release.channels, "revoked": release.revoked,
                          "sha256": release.sha256, "custom": release.custom}, indent=2))  # fmt: skip
        return 0
    table = Table("field", "value", title=f"{release.name} {release.version}", title_justify="left")
    table.add_row("channels", ", ".join(release.channels) or "none")
    if release.revoked:
        table.add_row("[bold red]revoked[/]", escape(f"on {release.revoked.get('at')}: "
                      f"{release.revoked.get('reason')} (by {release.revoked.get('by')})"))  # fmt: skip
    else:
        table.add_row("revoked", "no")
    table.add_row("SHA256SUMS sha256", release.sha256)
    for name, value in show_rows(release.custom):
        table.add_row(name, escape(value))
    console.print(table)
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from gapforge.release import CHANNELS
    from gapforge.release_manager.releases import releases

    table = Table("name", "version", *CHANNELS, "revoked", "added")
    for _, release in sorted(releases(open_repository(args)).items()):
        marks = ["yes" if c in release.channels else "" for c in CHANNELS]
        revoked = f"[bold red]{release.revoked.get('at')}[/]" if release.revoked else ""
        table.add_row(release.name, release.version, *marks, revoked,
                      str(release.custom.get("added", "")))  # fmt: skip
    console.print(table)
    return 0


def _export(args: argparse.Namespace) -> int:
    from gapforge.release_manager.maintenance import export

    where = export(open_repository(args), args.dest)
    console.print(f"[bold green]exported[/] the current metadata to {where}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": _init, "add": _add, "promote": _promote, "revoke": _revoke, "rotate": _rotate,
    "refresh": _refresh, "status": _status, "log": _log, "show": _show, "list": _list,
    "export": _export,
}  # fmt: skip
