"""SHA256SUMS (the format `sha256sum -c` reads) and hashing many byte ranges on every core.

hashlib releases the GIL while it hashes a large buffer, and file reads release it too, so a thread
pool hashes several files (or several blobs of one image tar) at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHUNK = 4 * 1024 * 1024
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


@dataclass(frozen=True)
class HashJob:
    """A byte range of a file to hash: a whole file, or one blob inside an image tar."""

    label: str
    path: Path
    offset: int = 0
    length: int | None = None
    """None: to the end of the file."""


@dataclass(frozen=True)
class HashResult:
    label: str
    sha256: str | None
    """None when the file could not be read or is shorter than the range."""
    size: int
    error: str = ""


def _hash_range(job: HashJob, advance: Callable[[int], None]) -> HashResult:
    digest = hashlib.sha256()
    done = 0
    try:
        with open(job.path, "rb", buffering=0) as handle:
            if job.offset:
                handle.seek(job.offset)
            remaining = job.length
            while remaining is None or remaining > 0:
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = handle.read(want)
                if not chunk:
                    break
                digest.update(chunk)
                done += len(chunk)
                advance(len(chunk))
                if remaining is not None:
                    remaining -= len(chunk)
    except OSError as exc:
        return HashResult(job.label, None, done, exc.strerror or str(exc))
    if job.length is not None and done < job.length:
        return HashResult(job.label, None, done, f"ends after {done} of {job.length} bytes")
    return HashResult(job.label, digest.hexdigest(), done)


def default_workers() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def hash_jobs(
    jobs: Iterable[HashJob],
    advance: Callable[[int], None] = lambda _n: None,
    workers: int | None = None,
) -> dict[str, HashResult]:
    """Hash every job on a thread pool (biggest first, so the pool ends together); label → result."""

    def size_of(job: HashJob) -> int:
        if job.length is not None:
            return job.length
        try:
            return job.path.stat().st_size - job.offset
        except OSError:
            return 0

    ordered = sorted(jobs, key=size_of, reverse=True)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        results = list(pool.map(lambda job: _hash_range(job, advance), ordered))
    return {result.label: result for result in results}


def job_bytes(jobs: Iterable[HashJob]) -> int:
    total = 0
    for job in jobs:
        if job.length is not None:
            total += job.length
        elif job.path.is_file():
            total += job.path.stat().st_size - job.offset
    return total


# --- SHA256SUMS ----------------------------------------------------------------------------------------


def check_name(name: str) -> None:
    """Names sha256sum would escape (backslash, newline) are refused rather than escaped."""
    if "\n" in name or "\\" in name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"{name!r}: not a plain relative path; rename it")


def render_sums(digests: dict[str, str]) -> bytes:
    """`<hex>  <path>` lines, sorted by path: the text-mode format of `sha256sum`."""
    for name in digests:
        check_name(name)
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests)).encode()


@dataclass(frozen=True)
class SumsLine:
    number: int
    sha256: str
    name: str


def parse_sums(text: str) -> tuple[list[SumsLine], list[str]]:
    """Lines of a SHA256SUMS file, and one problem per line that is not `<hex>  <path>`."""
    lines: list[SumsLine] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        match = _LINE.match(raw)
        if match is None:
            problems.append(f"line {number} is not '<sha256>  <file>': {raw[:80]!r}")
            continue
        name = match[2]
        if name in seen:
            problems.append(f"line {number} lists {name} a second time")
            continue
        try:
            check_name(name)
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        seen.add(name)
        lines.append(SumsLine(number, match[1], name))
    return lines, problems


def bundle_files(root: Path) -> list[str]:
    """Every regular file under `root` as a relative POSIX path, sorted; symlinks count as files."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            found.append(path.relative_to(root).as_posix())
    return found
