"""SHA256SUMS (the format `sha256sum -c` reads) and hashing many byte ranges on every core.

hashlib releases the GIL while it hashes a large buffer, and file reads release it too, so a thread
pool hashes several files (or several blobs of one image tar) at once. A file with `parts` (the image
archive and its blobs) is read once: each chunk goes to the whole file's hash on one thread and to
the hash of the blob it belongs to on another, so every blob's digest comes with the archive's.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gapforge.names import UnsafeName, is_relative_path, open_regular

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
    parts: tuple[HashJob, ...] = ()
    """Byte ranges of the same file (each with a length) hashed in the same pass: the blobs of an
    image archive. Only for a whole-file job."""
    root: Path | None = None
    """The folder the file was found in (a bundle): every folder between is opened without
    following a link (gapforge.names.open_regular)."""


@dataclass(frozen=True)
class HashResult:
    label: str
    sha256: str | None
    """None when the file could not be read or is shorter than the range."""
    size: int
    error: str = ""


def _open_input(path: Path, root: Path | None = None) -> io.FileIO:
    """`path` for hashing: a regular file, never through a link at its last component, never a
    FIFO that would wait forever (gapforge.names.open_regular): the walk saw a regular file, but
    the name may have been swapped since."""
    return os.fdopen(open_regular(path, root), "rb", buffering=0)


def _hash_range(job: HashJob, advance: Callable[[int], None]) -> HashResult:
    digest = hashlib.sha256()
    done = 0
    try:
        with _open_input(job.path, job.root) as handle:
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
    except UnsafeName:
        return HashResult(job.label, None, done, "not a regular file (a link, a FIFO, a device)")
    if job.length is not None and done < job.length:
        return HashResult(job.label, None, done, f"ends after {done} of {job.length} bytes")
    return HashResult(job.label, digest.hexdigest(), done)


def _consumer(
    digests: dict[int, hashlib._Hash], release: Callable[[int], None]
) -> tuple[queue.SimpleQueue[tuple[int, int, memoryview] | None], threading.Thread]:
    """A thread that hashes (digest number, buffer number, bytes) items in order, then releases."""
    items: queue.SimpleQueue[tuple[int, int, memoryview] | None] = queue.SimpleQueue()

    def run() -> None:
        while (item := items.get()) is not None:
            number, buffer, data = item
            digests[number].update(data)
            release(buffer)

    thread = threading.Thread(target=run, name="hash-pass", daemon=True)
    thread.start()
    return items, thread


def _end(part: HashJob) -> int:
    return part.offset + (part.length or 0)


def _sends(
    parts: list[HashJob], first: int, position: int, end: int, threads: int
) -> list[tuple[int, int, int, int]]:
    """Where the chunk `[position, end)` goes, as (consumer, digest, from, to): the whole file's
    digest, then each part from `first` on that the chunk holds, parts spread over the threads."""
    sends = [(0, 0, position, end)]
    for number in range(first, len(parts)):
        if parts[number].offset >= end:
            break
        low, high = max(parts[number].offset, position), min(_end(parts[number]), end)
        if low < high:
            sends.append((1 + number % threads, number + 1, low, high))
    return sends


def _results(
    label: str, parts: list[HashJob], digests: dict[int, hashlib._Hash], done: list[int], error: str
) -> list[HashResult]:
    """The whole file's result, then each part's: a part cut short fails with the read's error
    or, where the read ended cleanly, with how far it got."""
    results = [
        HashResult(label, None, done[0], error)
        if error
        else HashResult(label, digests[0].hexdigest(), done[0])
    ]
    for number, part in enumerate(parts, start=1):
        length = part.length or 0
        if done[number] < length:
            reason = error or f"ends after {done[number]} of {length} bytes"
            results.append(HashResult(part.label, None, done[number], reason))
        else:
            results.append(HashResult(part.label, digests[number].hexdigest(), done[number]))
    return results


def _hash_with_parts(
    job: HashJob, advance: Callable[[int], None], threads: int
) -> list[HashResult]:
    """One read of `job`'s file: its sha256 on one thread and every part's on `threads` others.

    Chunks are read into a few reused buffers; a buffer is read into again only when every hash
    that needed it is done with it. Results and errors read as `_hash_range`'s would."""
    parts = sorted(job.parts, key=lambda p: p.offset)
    digests = {number: hashlib.sha256() for number in range(len(parts) + 1)}  # 0: the whole
    done = [0] * (len(parts) + 1)
    buffers = [bytearray(CHUNK) for _ in range(2 * threads + 4)]
    pending = [0] * len(buffers)
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    lock = threading.Lock()
    for number in range(len(buffers)):
        free.put(number)

    def release(buffer: int) -> None:
        with lock:
            pending[buffer] -= 1
            last = pending[buffer] == 0
        if last:
            free.put(buffer)

    consumers = [_consumer(digests, release) for _ in range(threads + 1)]  # 0: the whole file
    error = ""
    position = 0
    first = 0
    try:
        with _open_input(job.path, job.root) as handle:
            while True:
                buffer = free.get()
                view = memoryview(buffers[buffer])
                read = handle.readinto(view)
                if not read:
                    free.put(buffer)
                    break
                end = position + read
                while first < len(parts) and _end(parts[first]) <= position:
                    first += 1
                sends = _sends(parts, first, position, end, threads)
                pending[buffer] = len(sends)
                for consumer, number, low, high in sends:
                    chunk = view[low - position : high - position]
                    consumers[consumer][0].put((number, buffer, chunk))
                    done[number] += high - low
                position = end
                advance(read)
    except OSError as exc:
        error = exc.strerror or str(exc)
    except UnsafeName:
        error = "not a regular file (a link, a FIFO, a device)"
    finally:
        for items, _ in consumers:
            items.put(None)
        for _, thread in consumers:
            thread.join()
    return _results(job.label, parts, digests, done, error)


class Prefetch:
    """A whole file's sha256 begun on a thread before the caller needs it (`verify` starts the
    archive's before its imports, trust anchor and signature checks, which then run beside it on
    another core). `take` gives the result for that path once, feeding `advance` as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hashed = 0
        self._told = 0
        self._result: HashResult | None = None
        self._thread = threading.Thread(target=self._run, name="prefetch-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        def count(size: int) -> None:
            self.hashed += size

        self._result = _hash_range(HashJob(self.path.name, self.path), count)

    def take(self, label: str, advance: Callable[[int], None]) -> HashResult:
        while True:
            self._thread.join(0.1)
            hashed = self.hashed
            advance(hashed - self._told)
            self._told = hashed
            if not self._thread.is_alive() and hashed == self.hashed:
                break
        assert self._result is not None
        return HashResult(label, self._result.sha256, self._result.size, self._result.error)


def prefetch(path: Path) -> Prefetch | None:
    """Start hashing `path` now if it is a regular file (else None)."""
    return Prefetch(path) if path.is_file() and not path.is_symlink() else None


def default_workers() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def hash_jobs(
    jobs: Iterable[HashJob],
    advance: Callable[[int], None] = lambda _n: None,
    workers: int | None = None,
    prefetched: Prefetch | None = None,
) -> dict[str, HashResult]:
    """Hash every job on a thread pool (biggest first, so the pool ends together); label → result.
    A whole-file job for the `prefetched` path takes that result instead of reading it again."""
    jobs = list(jobs)
    taken = None
    if prefetched is not None:
        taken = next(
            (j for j in jobs if j.path == prefetched.path and not j.offset and j.length is None
             and not j.parts),
            None,
        )  # fmt: skip
        jobs = [j for j in jobs if j is not taken]

    def size_of(job: HashJob) -> int:
        if job.length is not None:
            return job.length
        try:
            return job.path.stat().st_size - job.offset
        except OSError:
            return 0

    ordered = sorted(jobs, key=size_of, reverse=True)
    workers = workers or default_workers()

    def run(job: HashJob) -> list[HashResult]:
        if job.parts:  # a few blob threads suffice: the one read of the file sets the pace
            return _hash_with_parts(job, advance, max(1, min(workers - 1, 4)))
        return [_hash_range(job, advance)]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [result for batch in pool.map(run, ordered) for result in batch]
    if taken is not None and prefetched is not None:
        results.append(prefetched.take(taken.label, advance))
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
    """Only plain relative paths (gapforge.names, the one parser of names from outside): names
    sha256sum would escape (backslash, newline), `..`, absolute names, control characters and
    empty components are refused rather than escaped."""
    if not is_relative_path(name):
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
    rows = text.split("\n")  # "\n" only: a name holding U+2028 or U+0085 is one (refused) line
    if rows and rows[-1] == "":
        rows.pop()
    for number, raw in enumerate(rows, start=1):
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
