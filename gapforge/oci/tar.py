"""Deterministic tar writing: the same input tree gives the same bytes, on any machine.

Every entry is sorted by path, has a fixed mtime (SOURCE_DATE_EPOCH), no user or group names and no
host path. Every member name, and every hard link's target, is normalized (relative, no `.` or empty
parts) and may not climb out of the root with `..`: a layer never writes outside the image. Our own layers get uid/gid 0 and normalized modes (0755 for directories and executables,
0644 otherwise); a base root filesystem keeps its numeric owners and modes, which the packages set.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from gapforge.errors import BuildError
from gapforge.oci.sink import HashingSink


@dataclass(frozen=True)
class Entry:
    """One member of a layer: a directory, a regular file, a symlink or a hard link."""

    path: str
    """Relative POSIX path inside the image, no leading slash: `opt/gapforge/venv/bin/python`."""
    kind: str  # "dir" | "file" | "symlink" | "hardlink" | "chardev" | "blockdev" | "fifo"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    source: Path | None = None
    """Where a file's bytes come from on disk (staging directory)."""
    data: bytes | None = None
    """Or the bytes themselves, for small generated files."""
    opener: Callable[[], BinaryIO] | None = field(default=None, compare=False)
    """Or a callable that opens them (a member of another tar)."""


_KINDS = {
    "dir": tarfile.DIRTYPE,
    "file": tarfile.REGTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def normalize_mode(mode: int, is_dir: bool) -> int:
    """0755 for directories and anything executable, 0644 for the rest."""
    if is_dir or mode & 0o111:
        return 0o755
    return 0o644


class UnsafeTarPath(BuildError, ValueError):
    """A member name or hard-link target that would leave the image root, or names nothing."""


def clean_path(path: str) -> str:
    """Normalize an in-image path: relative, POSIX, no `.` or `..` parts."""
    # What PurePosixPath(...).parts gives for a relative path, without building one per member.
    parts = [p for p in path.lstrip("/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeTarPath(
            f"path escapes the image root: {path!r} has a '..' part, and no file of an image may "
            "lie outside it. The input that named it (a model's file list, a wheel, the base "
            "root filesystem) is unusable as it is: fix or replace it, then build again."
        )
    return "/".join(parts)


def _cleaned(entry: Entry) -> Entry:
    """The entry with its name (and a hard link's target) normalized; refused if it escapes.

    A symlink's target is left as it is: it is resolved inside the container's root when used,
    and absolute or `..` targets are how packages link (`/usr/bin/python3`, `../lib/x.so`).
    """
    path = clean_path(entry.path)
    if not path:
        raise UnsafeTarPath(
            f"a {entry.kind} entry has the empty name {entry.path!r}, which is the image root "
            "itself: give it a path below the root"
        )
    linkname = entry.linkname
    if entry.kind == "hardlink":
        linkname = clean_path(entry.linkname)
        if not linkname:
            raise UnsafeTarPath(
                f"hard link {path!r} points to {entry.linkname!r}, which is no file: give the "
                "path of the file it shares its bytes with"
            )
    if (path, linkname) == (entry.path, entry.linkname):
        return entry
    return dataclasses.replace(entry, path=path, linkname=linkname)


def entries_from_tree(root: Path, prefix: str = "") -> list[Entry]:
    """Entries for every path under `root`, placed under `prefix` in the image, modes normalized."""
    entries: list[Entry] = []
    base = clean_path(prefix)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        names = sorted(dirnames + filenames)
        for name in names:
            full = Path(dirpath) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = clean_path(f"{base}/{rel}" if base else rel)
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(path, "symlink", 0o777, linkname=os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(path, "dir", 0o755))
            elif stat.S_ISREG(st.st_mode):
                entries.append(
                    Entry(
                        path,
                        "file",
                        normalize_mode(st.st_mode, False),
                        size=st.st_size,
                        source=full,
                    )
                )
            else:
                raise ValueError(f"unsupported file type in staging tree: {full}")
    return entries


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Add a directory entry for every parent that is missing, so extraction never invents one."""
    by_path = {e.path: e for e in entries}
    for path in list(by_path):
        parent = PurePosixPath(path).parent
        while str(parent) not in (".", ""):
            key = str(parent)
            if key not in by_path:
                by_path[key] = Entry(key, "dir", 0o755)
            parent = parent.parent
    return list(by_path.values())


def _ordered(entries: Iterable[Entry]) -> list[Entry]:
    """Clean and sort by path; a hard link whose target sorts after it swaps roles with that target."""
    ordered = sorted((_cleaned(e) for e in entries), key=lambda e: e.path)
    index = {e.path: i for i, e in enumerate(ordered)}
    written: set[str] = set()
    result: list[Entry] = []
    # hard-link targets that were emitted under another name: old target -> new first name
    renamed: dict[str, str] = {}
    for entry in ordered:
        if entry.kind == "hardlink":
            target = renamed.get(entry.linkname, entry.linkname)
            if target not in index:
                raise UnsafeTarPath(
                    f"hard link {entry.path!r} points to {target!r}, which is not in the same "
                    "layer: a hard link can only share the bytes of a file written beside it"
                )
            if target in written:
                result.append(
                    Entry(entry.path, "hardlink", entry.mode, entry.uid, entry.gid, linkname=target)
                )
            else:
                original = ordered[index[target]]
                result.append(
                    Entry(
                        entry.path,
                        original.kind,
                        original.mode,
                        original.uid,
                        original.gid,
                        size=original.size,
                        source=original.source,
                        data=original.data,
                        opener=original.opener,
                    )
                )
                renamed[target] = entry.path
                written.add(entry.path)
            continue
        if entry.path in renamed:
            # this file's bytes were already written under an earlier name: link to that
            result.append(
                Entry(
                    entry.path,
                    "hardlink",
                    entry.mode,
                    entry.uid,
                    entry.gid,
                    linkname=renamed[entry.path],
                )
            )
            continue
        result.append(entry)
        written.add(entry.path)
    return result


@dataclass(frozen=True)
class WrittenTar:
    digest: str
    """`sha256:<hex>` of the tar bytes."""
    size: int


def _tarinfo(entry: Entry, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path + ("/" if entry.kind == "dir" else ""))
    info.type = _KINDS[entry.kind]
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = mtime
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.kind == "file":
        info.size = len(entry.data) if entry.data is not None else entry.size
    return info


_USTAR_LIMIT = 8**11
"""Sizes and times below this fit a ustar header's 12-byte octal field (8**7 for ids)."""


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _header(entry: Entry, size: int, mtime: int) -> bytes:
    """The member's header: the bytes `TarInfo.tobuf(PAX_FORMAT)` gives, built directly when no PAX
    record is needed (ASCII names of at most 100 characters, ids and sizes that fit), which is
    almost every member; `tobuf` itself otherwise. A unit test compares both on many entries."""
    name = entry.path + "/" if entry.kind == "dir" else entry.path
    link = entry.linkname
    if not (
        len(name) <= 100
        and len(link) <= 100
        and name.isascii()
        and link.isascii()
        and 0 <= entry.uid < 8**7
        and 0 <= entry.gid < 8**7
        and 0 <= size < _USTAR_LIMIT
        and 0 <= mtime < _USTAR_LIMIT
    ):
        info = _tarinfo(entry, mtime)
        return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    device = entry.kind in ("chardev", "blockdev")
    block = b"".join(
        (
            name.encode().ljust(100, b"\0"),
            _octal(entry.mode & 0o7777, 8),
            _octal(entry.uid, 8),
            _octal(entry.gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",  # the checksum, counted as spaces
            _KINDS[entry.kind],
            link.encode().ljust(100, b"\0"),
            tarfile.POSIX_MAGIC,
            b"\0" * 64,  # no user or group name
            _octal(entry.devmajor, 8) if device else b"\0" * 8,
            _octal(entry.devminor, 8) if device else b"\0" * 8,
            b"\0" * 167,  # no prefix (PAX format never splits a name), then padding
        )
    )
    return block[:148] + b"%06o\0" % sum(block) + block[155:]


def _open(entry: Entry) -> BinaryIO:
    if entry.opener is not None:
        return entry.opener()
    if entry.source is not None:
        return open(entry.source, "rb", buffering=0)
    raise ValueError(f"file entry {entry.path} has no content")


def iter_ordered(entries: Iterable[Entry]) -> Iterator[Entry]:
    """The entries in the order they are written: for tests and listings."""
    yield from _ordered(entries)


def _padding(size: int) -> bytes:
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def write_tar(
    entries: Iterable[Entry],
    out: BinaryIO,
    mtime: int,
    progress: Callable[[int], None] | None = None,
) -> WrittenTar:
    """Write `entries` as a deterministic tar to `out`; return its digest and size.

    The bytes are those of `tarfile.open(mode="w|", format=PAX_FORMAT)` with `addfile` for every
    entry (a unit test compares them): PAX keeps long names and large sizes exact, and with fixed
    inputs its headers are fixed too. Headers come from `TarInfo.tobuf`; file bytes are copied
    through reused blocks and hashed as they are written, never read back.
    """
    sink = HashingSink(out, progress)
    try:
        for entry in _ordered(entries):
            if entry.kind != "file":
                sink.write(_header(entry, 0, mtime))
                continue
            size = len(entry.data) if entry.data is not None else entry.size
            sink.write(_header(entry, size, mtime))
            if entry.data is not None:
                sink.write(entry.data)
            else:
                with _open(entry) as stream:
                    sink.copy_from(stream, size, entry.path)
            sink.write(_padding(size))
        # The end-of-archive marker (two zero blocks), then zeros to a whole record, as tarfile does.
        sink.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        sink.write(tarfile.NUL * (-sink.offset % tarfile.RECORDSIZE))
    except BaseException:
        sink.abandon()
        raise
    digest = sink.finish()
    return WrittenTar(digest=digest, size=sink.size)


def write_tar_file(
    entries: Iterable[Entry], path: Path, mtime: int, progress: Callable[[int], None] | None = None
) -> WrittenTar:
    """Write a deterministic tar to `path` atomically (a temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            written = write_tar(entries, handle, mtime, progress)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written
