"""A file of a bundle is read through real folders only: a folder swapped for a link after the walk
saw it cannot lead a read (the hashing of verify) out of the bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gapforge.bundle.sums import HashJob, hash_jobs
from gapforge.names import UnsafeName, open_regular


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A bundle with `evidence/report.txt`, and outside it a host folder with the same name."""
    bundle = tmp_path / "bundle"
    (bundle / "evidence").mkdir(parents=True)
    (bundle / "evidence" / "report.txt").write_bytes(b"inside\n")
    host = tmp_path / "host"
    host.mkdir()
    (host / "report.txt").write_bytes(b"host secret\n")
    return bundle, host


def _swap_for_link(bundle: Path, host: Path) -> None:
    """What a medium does between the walk and the read: the folder becomes a link out."""
    (bundle / "evidence" / "report.txt").unlink()
    (bundle / "evidence").rmdir()
    os.symlink(host, bundle / "evidence")


def test_a_file_in_real_folders_opens(tree: tuple[Path, Path]) -> None:
    bundle, _host = tree
    fd = open_regular(bundle / "evidence" / "report.txt", bundle)
    with os.fdopen(fd, "rb") as handle:
        assert handle.read() == b"inside\n"


def test_a_folder_swapped_for_a_link_is_refused(tree: tuple[Path, Path]) -> None:
    bundle, host = tree
    _swap_for_link(bundle, host)
    # Without the root only the last component is checked, and the link is followed.
    os.close(open_regular(bundle / "evidence" / "report.txt"))
    with pytest.raises(UnsafeName, match="its folder evidence is a link or not a folder"):
        open_regular(bundle / "evidence" / "report.txt", bundle)


def test_a_path_outside_the_root_is_refused(tree: tuple[Path, Path]) -> None:
    bundle, host = tree
    with pytest.raises(UnsafeName, match="not inside"):
        open_regular(host / "report.txt", bundle)
    with pytest.raises(UnsafeName, match="not a file name inside"):
        open_regular(bundle / "evidence" / ".." / "evidence" / "report.txt", bundle)


def test_hashing_a_bundle_file_behind_a_swapped_folder_reads_nothing(
    tree: tuple[Path, Path],
) -> None:
    bundle, host = tree
    job = HashJob("evidence/report.txt", bundle / "evidence" / "report.txt", root=bundle)
    _swap_for_link(bundle, host)
    result = hash_jobs([job], workers=1)["evidence/report.txt"]
    assert result.sha256 is None and result.size == 0
    assert "not a regular file" in result.error
