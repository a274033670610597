"""The deterministic tar writer: golden digests, ordering, normalization, hard links."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from gapforge.errors import GapforgeError
from gapforge.oci.tar import (
    Entry,
    UnsafeTarPath,
    clean_path,
    entries_from_tree,
    iter_ordered,
    with_parents,
    write_tar,
)

EPOCH = 1735689600


def _fixed_entries() -> list[Entry]:
    return [
        Entry("b/file.txt", "file", 0o644, data=b"hello\n"),
        Entry("a", "dir", 0o755),
        Entry("a/run.sh", "file", 0o755, data=b"#!/bin/sh\necho hi\n"),
        Entry("a/link", "symlink", 0o777, linkname="run.sh"),
        Entry("b", "dir", 0o755),
    ]


def test_golden_digest_for_a_fixed_input() -> None:
    written = write_tar(_fixed_entries(), io.BytesIO(), EPOCH)
    # Recorded once; any change to the byte layout of our layers changes every image digest.
    assert written.digest == GOLDEN_DIGEST
    assert written.size == 10240


def test_same_entries_in_any_order_give_the_same_bytes() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    write_tar(_fixed_entries(), first, EPOCH)
    write_tar(list(reversed(_fixed_entries())), second, EPOCH)
    assert first.getvalue() == second.getvalue()


def test_members_are_sorted_with_fixed_metadata() -> None:
    buffer = io.BytesIO()
    write_tar(_fixed_entries(), buffer, EPOCH)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a", "a/link", "a/run.sh", "b", "b/file.txt"]
    for member in members:
        assert member.mtime == EPOCH
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")


def test_tree_modes_are_normalized_whatever_the_umask(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "secret").write_text("x")
    os.chmod(tmp_path / "d" / "secret", 0o600)
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "tool", 0o700)
    modes = {e.path: e.mode for e in entries_from_tree(tmp_path, "opt/x")}
    assert modes == {"opt/x/d": 0o755, "opt/x/d/secret": 0o644, "opt/x/tool": 0o755}


def test_tree_under_two_different_roots_gives_the_same_layer(tmp_path: Path) -> None:
    outputs = []
    for name in ("one", "two"):
        root = tmp_path / name
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "mod.py").write_text("print('same')\n")
        buffer = io.BytesIO()
        write_tar(with_parents(entries_from_tree(root, "/opt/app/")), buffer, EPOCH)
        outputs.append(buffer.getvalue())
    assert outputs[0] == outputs[1]
    assert str(tmp_path).encode() not in outputs[0]


def test_hard_link_before_its_target_swaps_roles() -> None:
    entries = [
        Entry("z/original", "file", 0o644, data=b"payload"),
        Entry("a/alias", "hardlink", 0o644, linkname="z/original"),
    ]
    ordered = list(iter_ordered(entries))
    assert [(e.path, e.kind) for e in ordered] == [("a/alias", "file"), ("z/original", "hardlink")]
    assert ordered[1].linkname == "a/alias"
    buffer = io.BytesIO()
    write_tar(entries, buffer, EPOCH)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        alias = tar.extractfile("a/alias")
        assert alias is not None and alias.read() == b"payload"


def test_paths_cannot_escape_the_root() -> None:
    assert clean_path("/opt//x/./y") == "opt/x/y"
    with pytest.raises(ValueError, match="escapes"):
        clean_path("opt/../../etc/passwd")


def _members(entries: list[Entry]) -> list[tarfile.TarInfo]:
    buffer = io.BytesIO()
    write_tar(entries, buffer, EPOCH)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        return tar.getmembers()


def test_every_member_name_and_hard_link_target_is_written_clean() -> None:
    members = _members(
        [
            Entry("/opt//app/./data.bin", "file", data=b"payload"),
            Entry("./opt/app/alias", "hardlink", linkname="/opt/./app//data.bin"),
            Entry("opt/app/link", "symlink", 0o777, linkname="../../usr/bin/python3"),
        ]
    )
    names = {m.name: m for m in members}
    assert sorted(names) == ["opt/app/alias", "opt/app/data.bin", "opt/app/link"]
    # the alias sorts first, so it carries the bytes and the original links to its clean name
    assert names["opt/app/alias"].isfile()
    assert names["opt/app/data.bin"].islnk() and names["opt/app/data.bin"].linkname == "opt/app/alias"
    # a symlink's target is resolved inside the container's root: kept as the package wrote it
    assert names["opt/app/link"].linkname == "../../usr/bin/python3"


@pytest.mark.parametrize(
    "entries",
    [
        [Entry("opt/../../etc/passwd", "file", data=b"x")],
        [Entry("../outside", "dir", 0o755)],
        [Entry("opt/a", "file", data=b"x"), Entry("opt/b", "hardlink", linkname="opt/../../etc/shadow")],
    ],
    ids=["file", "dir", "hard-link-target"],
)
def test_a_name_that_escapes_the_root_is_refused(entries: list[Entry]) -> None:
    with pytest.raises(UnsafeTarPath, match=r"escapes the image root: '.*\.\./.*' has a '\.\.' part") as caught:
        write_tar(entries, io.BytesIO(), EPOCH)
    assert isinstance(caught.value, GapforgeError)  # the CLI prints it as one paragraph, exit 2
    assert "fix or replace it" in str(caught.value)


def test_empty_names_and_dangling_hard_links_are_refused() -> None:
    with pytest.raises(UnsafeTarPath, match=r"empty name '\./'"):
        write_tar([Entry("./", "dir", 0o755)], io.BytesIO(), EPOCH)
    with pytest.raises(UnsafeTarPath, match="points to '/', which is no file"):
        write_tar([Entry("a", "hardlink", linkname="/")], io.BytesIO(), EPOCH)
    with pytest.raises(UnsafeTarPath, match="points to 'missing', which is not in the same layer"):
        write_tar([Entry("a", "hardlink", linkname="missing")], io.BytesIO(), EPOCH)


def test_parents_are_added() -> None:
    paths = sorted(e.path for e in with_parents([Entry("a/b/c.txt", "file", data=b"")]))
    assert paths == ["a", "a/b", "a/b/c.txt"]


GOLDEN_DIGEST = "sha256:5c28e3da3082684caacedeadcd098ba10a2f9d8c26ae05294676aaae72323a33"
