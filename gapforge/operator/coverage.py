"""The whole bundle is covered: every file is listed in SHA256SUMS, or is release metadata in the
shape TUF writes (verified by the TUF client when the anchor is the trusted root); nothing in the
folder is a symbolic link, a device or a FIFO, in `release/` as anywhere else.

The folder is walked without following links (a link to `/` is reported, never entered)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gapforge.bundle import RELEASE_DIR, SIGNATURE, SUMS
from gapforge.bundle.documents import read_bytes_no_follow
from gapforge.names import UnsafeName
from gapforge.operator.verify_report import VerifyReport

METADATA_DIR = f"{RELEASE_DIR}/metadata"
_METADATA_NAME = re.compile(
    r"^(?:(root|timestamp)|([1-9][0-9]{0,8})\.([a-z][a-z0-9-]{0,63}))\.json$"
)
_MAX_METADATA = 16 * 1024 * 1024


@dataclass
class Tree:
    """What a bundle folder holds, found without following a link."""

    files: list[str] = field(default_factory=list)
    """Regular files, relative POSIX paths, sorted."""
    links: list[str] = field(default_factory=list)
    """Symbolic links (to files or folders), never followed."""
    odd: list[tuple[str, str]] = field(default_factory=list)
    """(path, kind) of devices, FIFOs and sockets."""


def walk_bundle(root: Path) -> Tree:
    """Every entry under `root`, by kind; a link to a folder is listed, not entered."""
    tree = Tree()
    for folder, dirs, names in os.walk(root, followlinks=False):
        base = Path(folder)
        for name in [*dirs, *names]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                tree.links.append(rel)
            elif stat.S_ISREG(mode):
                tree.files.append(rel)
            elif not stat.S_ISDIR(mode):
                kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
                tree.odd.append((rel, kind))
    tree.files.sort()
    tree.links.sort()
    return tree


def check_entries(report: VerifyReport, tree: Tree) -> None:
    """A link or a special file anywhere in the bundle is a failed check, named."""
    for name in tree.links:
        report.add(name, "a symbolic link: a bundle holds regular files only (never followed)")
    for name, kind in tree.odd:
        report.add(name, f"{kind}: a bundle holds regular files only")


def _metadata_problem(path: Path, name: str) -> str:
    """Why `release/metadata/<name>` is not a TUF metadata file of the role its name says ('' if
    it is one)."""
    from tuf.api.metadata import Metadata

    match = _METADATA_NAME.match(name)
    if match is None:
        return "not a TUF metadata file name (N.ROLE.json, root.json or timestamp.json)"
    try:
        metadata = Metadata.from_bytes(read_bytes_no_follow(path, _MAX_METADATA))
    except Exception as exc:  # python-tuf raises several kinds for malformed metadata
        return f"not TUF metadata ({type(exc).__name__})"
    role = match[1] or match[3]
    expected = role if role in ("root", "timestamp", "snapshot") else "targets"
    if metadata.signed.type != expected:
        return f"holds {metadata.signed.type} metadata, its name says {role}"
    if match[2] is not None and metadata.signed.version != int(match[2]):
        return f"holds version {metadata.signed.version}, its name says {match[2]}"
    return ""


def check_release_dir(report: VerifyReport, tree: Tree) -> None:
    """release/ holds release/metadata/ and, in it, TUF metadata files only; anything else there is
    refused as an unlisted file is elsewhere."""
    for name in tree.files:
        if not name.startswith(f"{RELEASE_DIR}/"):
            continue
        inside = name.removeprefix(f"{METADATA_DIR}/")
        if not name.startswith(f"{METADATA_DIR}/") or "/" in inside:
            report.add(
                name,
                f"not listed in {SUMS} and not release metadata ({METADATA_DIR}/N.ROLE.json): "
                "not part of the signed release; remove it",
            )
            continue
        why = _metadata_problem(report.bundle / name, inside) or _unverified(report, inside)
        if why:
            report.add(name, f"not listed in {SUMS}, and {why}: not part of the release; remove it")


def _unverified(report: VerifyReport, name: str) -> str:
    """Under the trusted root, with the bundle's own release/metadata/ as the TUF client's source:
    why `name` there is not metadata the client verified ('' when it is: fetched and verified, or a
    root version this site trusts, byte for byte). Root versions older than any this site trusts
    are inert (never read) and pass; under --key or --repo nothing reads it, so it is refused."""
    check = report.release
    source = report.bundle / METADATA_DIR
    if report.anchor != "root" or check is None or check.metadata_source != source:
        # Nothing reads it, so nothing proves it: a file no check covers is refused, inert or not.
        return (
            "nothing verified it (under --key or --repo the bundle's own release metadata is "
            "not read): verify under the trusted root from 'gapforge trust init' without --repo, "
            f"or remove {RELEASE_DIR}/ (only that check reads it)"
        )
    verified = check.verified_files.get(name)
    if verified is None:
        match = _METADATA_NAME.match(name)
        trusted = [int(n.split(".")[0]) for n in check.verified_files if n.endswith(".root.json")]
        if match and match[3] == "root" and trusted and int(match[2]) < min(trusted):
            return ""
        return "the TUF client never read it (extraneous: no verified metadata names it)"
    try:
        actual = hashlib.sha256(read_bytes_no_follow(source / name, _MAX_METADATA)).hexdigest()
    except (OSError, ValueError, UnsafeName) as exc:
        return f"unreadable ({exc})"
    if actual != verified:
        return "its bytes are not those the TUF client verified (altered)"
    return ""


def is_covered_elsewhere(name: str) -> bool:
    """SHA256SUMS does not list itself, its signature, or release/ (checked by check_release_dir)."""
    return name in (SUMS, SIGNATURE) or name.startswith(f"{RELEASE_DIR}/")
