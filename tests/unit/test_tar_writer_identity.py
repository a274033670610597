"""The block writer gives the very bytes the old tarfile-stream writer gave (image digests depend
on it): a varied tree written both ways, compared byte for byte."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import pytest

from gapforge.oci import tar as tar_module
from gapforge.oci.sink import CHUNK
from gapforge.oci.tar import Entry, WrittenTar, _ordered, _tarinfo, write_tar, write_tar_file

EPOCH = 1735689600


class _Hashing(io.RawIOBase):
    """The old writer's sink: hashes and counts what passes through."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sink.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def _reference_write_tar(entries: Iterable[Entry], out: BinaryIO, mtime: int) -> WrittenTar:
    """The writer as it was: tarfile's stream mode, PAX format, `addfile` for every entry."""
    sink = _Hashing(out)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tar:
        for entry in _ordered(entries):
            info = _tarinfo(entry, mtime)
            if entry.kind != "file":
                tar.addfile(info)
                continue
            if entry.data is not None:
                stream: BinaryIO = io.BytesIO(entry.data)
            elif entry.opener is not None:
                stream = entry.opener()
            else:
                assert entry.source is not None
                stream = open(entry.source, "rb")  # noqa: SIM115
            with stream:
                tar.addfile(info, stream)
    return WrittenTar("sha256:" + sink.digest.hexdigest(), sink.size)


def _opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def _varied_entries(tmp_path: Path) -> list[Entry]:
    big = bytes(range(256)) * (3 * CHUNK // 256 + 77)  # several blocks, odd tail
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "small.txt").write_bytes(b"small\n")
    (tmp_path / "empty").write_bytes(b"")
    exact = b"x" * CHUNK  # exactly one block
    (tmp_path / "exact.bin").write_bytes(exact)
    long_dir = "d" * 60 + "/" + "e" * 60  # > 100 characters: ustar prefix or PAX
    longer = "/".join(["segment-" + "s" * 50] * 6)  # > 255 characters: PAX path
    entries = [
        Entry("opt", "dir", 0o755),
        Entry("opt/big.bin", "file", 0o644, size=len(big), source=tmp_path / "big.bin"),
        Entry("opt/exact.bin", "file", 0o755, size=len(exact), source=tmp_path / "exact.bin"),
        Entry("opt/small.txt", "file", 0o644, size=6, source=tmp_path / "small.txt"),
        Entry("opt/empty", "file", 0o644, size=0, source=tmp_path / "empty"),
        Entry("opt/empty-data", "file", 0o644, data=b""),
        Entry("opt/data.json", "file", 0o644, data=b'{"a": 1}\n' * 1000),
        Entry("opt/opened", "file", 0o600, 1000, 1000, size=5000, opener=_opener(b"o" * 5000)),
        Entry(f"opt/{long_dir}/file", "file", 0o644, data=b"long\n"),
        Entry(f"opt/{longer}/file", "file", 0o644, data=b"longer\n"),
        Entry("opt/" + "n" * 99, "file", 0o644, data=b"99\n"),
        Entry("opt/" + "n" * 100, "file", 0o644, data=b"100\n"),
        Entry("opt/" + "r" * 95, "dir", 0o755),  # 100 characters with its slash: ustar
        Entry("opt/" + "q" * 96, "dir", 0o755),  # 101 with its slash: PAX
        Entry("opt/big-ids", "file", 0o644, uid=8**7, gid=2**31, data=b"ids\n"),  # PAX ids
        Entry("opt/ünïcødé/名前.txt", "file", 0o644, data="héllo".encode()),
        Entry("opt/link", "symlink", 0o777, linkname="/usr/bin/python3"),
        Entry("opt/long-link", "symlink", 0o777, linkname="../" * 40 + "target"),
        Entry("opt/ünï-link", "symlink", 0o777, linkname="ünïcødé/名前.txt"),
        # a hard link after its target, and one before it (the roles swap)
        Entry("opt/zz-hard", "hardlink", 0o644, linkname="opt/small.txt"),
        Entry("opt/aa-hard", "hardlink", 0o644, linkname="opt/big.bin"),
        Entry(f"opt/{longer}/hard", "hardlink", 0o644, linkname="opt/data.json"),
        Entry("dev", "dir", 0o755),
        Entry("dev/null", "chardev", 0o666, devmajor=1, devminor=3),
        Entry("dev/sda", "blockdev", 0o660, gid=6, devmajor=8, devminor=0),
        Entry("dev/fifo", "fifo", 0o644),
        Entry("tmp", "dir", 0o1777),
        Entry("usr/bin/sudo", "file", 0o4755, data=b"#!/bin/sh\n"),
    ]
    return tar_module.with_parents(entries)


def test_block_writer_matches_the_tarfile_stream_writer(tmp_path: Path) -> None:
    entries = _varied_entries(tmp_path)
    ours, theirs = io.BytesIO(), io.BytesIO()
    written = write_tar(entries, ours, EPOCH)
    reference = _reference_write_tar(entries, theirs, EPOCH)
    assert ours.getvalue() == theirs.getvalue()
    assert written == reference
    assert written.digest == "sha256:" + hashlib.sha256(ours.getvalue()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as archive:
        names = archive.getnames()
    assert any(len(name) > 255 for name in names), "a PAX path header was written"
    assert "opt/ünïcødé/名前.txt" in names


@pytest.mark.parametrize("count", [0, 1, 19, 20, 21])
def test_record_padding_matches_for_any_length(count: int) -> None:
    entries = [Entry(f"f{i:03}", "file", 0o644, data=b"z" * (i * 37)) for i in range(count)]
    ours, theirs = io.BytesIO(), io.BytesIO()
    assert write_tar(entries, ours, EPOCH) == _reference_write_tar(entries, theirs, EPOCH)
    assert ours.getvalue() == theirs.getvalue()


def test_write_tar_file_reports_the_bytes_on_disk(tmp_path: Path) -> None:
    entries = _varied_entries(tmp_path)
    seen: list[int] = []
    written = write_tar_file(entries, tmp_path / "out.tar", EPOCH, progress=seen.append)
    data = (tmp_path / "out.tar").read_bytes()
    assert written.size == len(data) == sum(seen)
    assert written.digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_file_shorter_than_planned_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"abc")
    entries = [Entry("short", "file", 0o644, size=10, source=tmp_path / "short")]
    with pytest.raises(OSError, match="unexpected end of data"):
        write_tar(entries, io.BytesIO(), EPOCH)
