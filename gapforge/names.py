"""The one parser of names that come from outside: a bundle, media, a delta, an inventory, a receipt,
TUF custom metadata, a recipe, a lock or data. Every such name passes here once, before it becomes
a path; what comes out is a plain relative path of plain components, or a single component.

And the one way such a name becomes a path: `under(root, name)`, which refuses anything that would
resolve outside `root`, and `no_links(root, name)`, which refuses a path through a symbolic link.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from pathlib import Path

from gapforge.errors import GapforgeError

MAX_COMPONENT = 255
"""Bytes of one component (NAME_MAX on Linux)."""
MAX_PATH = 1024
"""Bytes of a whole relative path; far above any name gapforge writes."""
MAX_DEPTH = 32
"""Components of a relative path."""


class UnsafeName(GapforgeError):
    """A name from outside is not a plain relative path (or not a single plain component)."""


def _problem(value: object) -> str | None:
    """Why `value` is not a plain relative path, or None when it is one."""
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value:
        return "empty"
    if len(value.encode("utf-8", errors="surrogatepass")) > MAX_PATH:
        return f"longer than {MAX_PATH} bytes"
    for char in value:
        if char == "\\":
            return "holds a backslash"
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            return f"holds a control or format character (U+{ord(char):04X})"
    if value.startswith("/"):
        return "absolute"
    parts = value.split("/")
    if len(parts) > MAX_DEPTH:
        return f"deeper than {MAX_DEPTH} components"
    for part in parts:
        if part == "":
            return "has an empty component (// or a trailing /)"
        if part in (".", ".."):
            return f"has a '{part}' component"
        if len(part.encode("utf-8", errors="surrogatepass")) > MAX_COMPONENT:
            return f"has a component longer than {MAX_COMPONENT} bytes"
    return None


def printable(text: str, newlines: bool = False) -> str:
    """`text` safe to show on a terminal: every control, format or line-separator character (ESC
    of an escape sequence that clears the screen and paints a fake "ok", a CR that overwrites a
    line, U+2028, a lone surrogate of an undecodable file name) written as `\\xNN` / `\\uNNNN`;
    with `newlines`, a plain newline is kept (messages of several lines)."""
    if text.isprintable():
        return text
    shown = []
    for char in text:
        category = unicodedata.category(char)
        if (char == "\n" and newlines) or category not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            shown.append(char)
        else:
            shown.append(f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")
    return "".join(shown)


def _refuse(value: object, where: str, why: str, expected: str) -> UnsafeName:
    shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return UnsafeName(
        f"{where}: {shown} is refused: {why}. Only {expected} is accepted here; the file was "
        "written by someone else and cannot be trusted to name paths. Use the bundle, media or "
        "file exactly as the release manager wrote it, or ask for a new one."
    )


def relative_path(value: object, where: str) -> str:
    """`value` as a plain relative path (`a/b/c`), or UnsafeName naming `where` (file and field).

    Refused: not a string, empty, absolute, `.` or `..` components, empty components, backslashes,
    control, format or line-separator characters (NUL, newline, U+2028, ...), over MAX_PATH bytes,
    over MAX_DEPTH components, a component over MAX_COMPONENT bytes."""
    why = _problem(value)
    if why is not None:
        raise _refuse(value, where, why, "a relative path of plain components (a/b/c)")
    assert isinstance(value, str)
    return value


def component(value: object, where: str) -> str:
    """`value` as one plain path component (a bundle name, a version, a label), or UnsafeName."""
    why = _problem(value)
    if why is None and "/" in str(value):
        why = "holds a '/'"
    if why is None and str(value).startswith("-"):
        why = "starts with '-' (it would read as an option)"
    if why is not None:
        raise _refuse(value, where, why, "a single plain name (no '/', no '..')")
    assert isinstance(value, str)
    return value


def is_relative_path(value: object) -> bool:
    """Whether `relative_path` would accept `value` (for parsers that collect problems)."""
    return _problem(value) is None


def under(root: Path, name: str, where: str) -> Path:
    """`root / name` for a name from outside, parsed by `relative_path`; refused (UnsafeName) if
    any existing part of the path is a symbolic link, so nothing is read or written through one."""
    path = root / relative_path(name, where)
    no_links(root, path, where)
    return path


def no_links(root: Path, path: Path, where: str) -> None:
    """Refuse (UnsafeName) a path below `root` that passes through, or is, a symbolic link."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing further exists to follow (or a file stands where a folder would)
        if stat.S_ISLNK(mode):
            raise _refuse(
                str(path.relative_to(root)),
                where,
                f"{current.relative_to(root)} is a symbolic link",
                "a path of regular files and folders",
            )


def open_regular(path: Path, root: Path | None = None) -> int:
    """A read-only descriptor of `path`, refusing a symbolic link at the last component and
    anything that is not a regular file (a device, a FIFO): the caller closes it. Opened
    non-blocking, so a FIFO is refused at once instead of waiting forever for a writer.

    With `root` (the folder an operator named, `path` inside it), every folder between them is
    opened in turn without following a link too: a folder swapped for a link after the walk saw
    it cannot lead the read out of `root`."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags) if root is None else _open_beneath(root, path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeName(f"{path}: not a regular file: only regular files are read from input")
    return fd


def _open_beneath(root: Path, path: Path, flags: int) -> int:
    """Open `path` by walking down from `root` one folder at a time (openat, no link followed)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise UnsafeName(f"{path}: not inside {root}") from None
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise UnsafeName(f"{path}: not a file name inside {root}")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=folder,
                )  # fmt: skip
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeName(
                        f"{path}: its folder {part} is a link or not a folder: only files in "
                        f"real folders inside {root} are read"
                    ) from None
                raise
            os.close(folder)
            folder = inner
        return os.open(parts[-1], flags, dir_fd=folder)
    finally:
        os.close(folder)


def links_out_of(folder: Path, root: Path) -> list[tuple[Path, Path]]:
    """Every symbolic link under `folder` (walked without following one) whose target resolves
    outside `root`, as (the link, where it leads), sorted. A folder shipped whole (a recipe's
    lm-eval tasks) must not carry a file of the host, through a link, into what is built from it."""
    inside = root.resolve()
    found = []
    for dirpath, dirs, files in os.walk(folder, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(dirpath) / name
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                found.append((path, path.resolve()))
    return sorted(found)
