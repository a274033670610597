"""The cache trusts only what it verified itself: unchanged entries are not rehashed, anything
changed since is, and `verify_all` (`build --verify-cache`) rehashes everything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gapforge import cache as cache_module
from gapforge import cache_records
from gapforge.cache import Cache
from gapforge.hashing import sha256_file


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the cache hashes, in order."""
    seen: list[Path] = []

    def counting(path: Path) -> str:
        seen.append(path)
        return sha256_file(path)

    monkeypatch.setattr(cache_module, "sha256_file", counting)
    monkeypatch.setattr(cache_records, "sha256_file", counting)
    return seen


def _put(cache: Cache, tmp_path: Path, content: bytes) -> str:
    source = tmp_path / "source"
    source.write_bytes(content)
    return cache.put_blob(source, move=True)


def _tamper(path: Path, content: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(content)


def test_a_blob_the_cache_hashed_is_trusted_while_unchanged(
    tmp_path: Path, hashed: list[Path]
) -> None:
    cache = Cache(tmp_path / "cache")
    digest = _put(cache, tmp_path, b"layer bytes")
    assert len(hashed) == 1, "hashed once, when it was added"
    for _ in range(3):
        assert cache.has_blob(digest)
    assert len(hashed) == 1, "an unchanged, recorded entry is not read again"


def test_a_tampered_blob_with_a_new_mtime_is_rehashed_and_deleted(
    tmp_path: Path, hashed: list[Path]
) -> None:
    cache = Cache(tmp_path / "cache")
    digest = _put(cache, tmp_path, b"good bytes")
    path = cache.blob_path(digest)
    _tamper(path, b"evil bytes")  # same size
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert not cache.has_blob(digest)
    assert hashed[-1] == path, "the changed entry was rehashed"
    assert not path.exists() and cache.corrupt == [path]


def test_a_tampered_blob_with_its_old_mtime_put_back_is_still_rehashed(
    tmp_path: Path, hashed: list[Path]
) -> None:
    cache = Cache(tmp_path / "cache")
    digest = _put(cache, tmp_path, b"good bytes")
    path = cache.blob_path(digest)
    before = path.stat()
    _tamper(path, b"evil bytes")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as recorded
    assert not cache.has_blob(digest), "the ctime still differs: rehashed, caught"
    assert not path.exists()


def test_a_replaced_file_is_rehashed(tmp_path: Path, hashed: list[Path]) -> None:
    cache = Cache(tmp_path / "cache")
    digest = _put(cache, tmp_path, b"content")
    path = cache.blob_path(digest)
    copy = tmp_path / "copy"
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # another inode, same bytes
    count = len(hashed)
    assert cache.has_blob(digest)
    assert len(hashed) == count + 1, "a file the cache never hashed is hashed"
    assert cache.has_blob(digest)
    assert len(hashed) == count + 1, "and recorded: trusted from then on"


def test_verify_all_rehashes_every_entry_and_catches_rot_the_stat_cannot_show(
    tmp_path: Path, hashed: list[Path]
) -> None:
    cache = Cache(tmp_path / "cache")
    digest = _put(cache, tmp_path, b"good bytes")
    path = cache.blob_path(digest)
    assert Cache(tmp_path / "cache", verify_all=True).has_blob(digest)
    assert hashed[-1] == path and len(hashed) == 2
    # Bytes that rot under an unchanged stat (as a disk can): simulated by re-recording the stat.
    _tamper(path, b"rot! bytes")
    cache.records.record(path, digest.removeprefix("sha256:"))
    assert cache.has_blob(digest), "without --verify-cache the cache's record is trusted"
    strict = Cache(tmp_path / "cache", verify_all=True)
    assert not strict.has_blob(digest)
    assert not path.exists() and strict.corrupt == [path]


def test_a_blob_hashed_while_written_is_stored_without_a_rehash(
    tmp_path: Path, hashed: list[Path]
) -> None:
    cache = Cache(tmp_path / "cache")
    layer = tmp_path / "layer.tar"
    layer.write_bytes(b"tar bytes")
    digest = "sha256:" + sha256_file(layer)
    assert cache.put_blob(layer, expected=digest, move=True, hashed=True) == digest
    assert cache.has_blob(digest)
    assert hashed == [], "neither stored nor read back with a rehash"
    with pytest.raises(ValueError, match="needs the digest"):
        cache.put_blob(layer, hashed=True, move=True)


def test_a_hit_moves_the_record_with_the_mtime(tmp_path: Path, hashed: list[Path]) -> None:
    cache = Cache(tmp_path / "cache")
    digest = _put(cache, tmp_path, b"old")
    path = cache.blob_path(digest)
    os.utime(path, (1_000_000, 1_000_000))  # long unused (and the record is now stale)
    assert cache.has_blob(digest)  # rehashed once: the stat changed
    count = len(hashed)
    assert path.stat().st_mtime > 1_000_000, "the hit marked it used"
    assert cache.has_blob(digest)
    assert len(hashed) == count, "the touch did not make the next read a rehash"


def test_named_files_are_trusted_and_checked_the_same_way(
    tmp_path: Path, hashed: list[Path]
) -> None:
    cache = Cache(tmp_path / "cache")
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    placed = cache.put_file(wheel)
    digest = placed.parent.name
    assert cache.find_file(digest) == placed and len(hashed) == 1
    _tamper(placed, b"WHEEL")
    os.utime(placed, (2_000_000, 2_000_000))
    assert cache.find_file(digest) is None
    assert not placed.exists() and cache.corrupt == [placed]


def test_prune_removes_the_records_of_what_it_removes(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    digest = _put(cache, tmp_path, b"x" * 10)
    os.utime(cache.blob_path(digest), (1_000_000, 1_000_000))
    marker = tmp_path / "cache" / "verified" / "blobs" / digest.removeprefix("sha256:")
    assert marker.is_file()
    cache.prune(older_than_s=86400)
    assert not marker.exists() and not cache.blob_path(digest).exists()
