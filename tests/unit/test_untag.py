"""The untagged archive stream `load` sends to the engine: tags out, every other byte as it was,
the original's sha256 computed in the same pass."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from gapforge.oci.untag import ArchiveFormatError, UntaggedStream


def _archive(path: Path, long_name: bool = False) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT if long_name else tarfile.USTAR_FORMAT) as tar:
        members = {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "blobs/sha256/" + "a" * 64: b"layer bytes " * 1000,
            "manifest.json": json.dumps([{"Config": "c", "Layers": ["l"], "RepoTags": ["gapforge/x:1.0"]}]).encode(),
        }
        if long_name:
            members["deep/" + "n" * 150] = b"a long name needs a pax header"
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("long_name", [False, True])
def test_tags_are_taken_out_and_nothing_else_changes(tmp_path: Path, long_name: bool) -> None:
    source = _archive(tmp_path / "image.tar", long_name)
    seen: list[int] = []
    with open(source, "rb") as handle:
        stream = UntaggedStream(handle, seen.append)
        data = b"".join(stream.chunks())
    assert stream.finished and stream.rewrote_manifest
    assert stream.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert sum(seen) == source.stat().st_size
    assert stream.tags == ["gapforge/x:1.0"]
    with tarfile.open(fileobj=io.BytesIO(data)) as out, tarfile.open(source) as original:
        assert out.getnames() == original.getnames()
        for member in original.getmembers():
            got = out.extractfile(member.name)
            assert got is not None
            if member.name == "manifest.json":
                assert json.loads(got.read())[0]["RepoTags"] is None
            else:
                want = original.extractfile(member)
                assert want is not None and got.read() == want.read()


def test_a_cut_archive_is_an_error(tmp_path: Path) -> None:
    source = _archive(tmp_path / "image.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(source.read_bytes()[:3000])
    with open(cut, "rb") as handle, pytest.raises(ArchiveFormatError, match="cut short"):
        b"".join(UntaggedStream(handle).chunks())
