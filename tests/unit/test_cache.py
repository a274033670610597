"""The cache's last-use bookkeeping and pruning, and the CLI around it (no Docker engine needed)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from gapforge import cli
from gapforge.cache import Cache
from gapforge.commands import cache as build_engineer
from gapforge.commands import validate as validate_command

DAY = 86400.0


def _blob(cache: Cache, tmp_path: Path, content: bytes, used_days_ago: float, now: float) -> str:
    source = tmp_path / f"src-{len(content)}-{content[:4].hex()}"
    source.write_bytes(content)
    digest = cache.put_blob(source, move=True)
    stamp = now - used_days_ago * DAY
    os.utime(cache.blob_path(digest), (stamp, stamp))
    return digest


def test_a_hit_marks_the_entry_as_used(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    now = time.time()
    digest = _blob(cache, tmp_path, b"x" * 100, used_days_ago=40, now=now)
    assert cache.has_blob(digest)
    assert now - cache.blob_path(digest).stat().st_mtime < DAY
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    placed = cache.put_file(wheel)
    os.utime(placed, (now - 40 * DAY, now - 40 * DAY))
    assert cache.find_file(placed.parent.name) == placed
    assert now - placed.stat().st_mtime < DAY


def test_prune_by_age_keeps_recent_entries_and_index_misses_cleanly(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    now = time.time()
    old = _blob(cache, tmp_path, b"old" * 1000, used_days_ago=45, now=now)
    new = _blob(cache, tmp_path, b"new" * 10, used_days_ago=1, now=now)
    cache.index_put("layers", "k", {"digest": old, "size": 3000})
    dry = cache.prune(older_than_s=30 * DAY, dry_run=True, now=now)
    assert [e.path.name for e in dry.removed] == [old.removeprefix("sha256:")]
    assert cache.blob_path(old).is_file(), "a dry run removes nothing"
    result = cache.prune(older_than_s=30 * DAY, now=now)
    assert result.removed_bytes == 3000 and result.kept_bytes == 30
    assert not cache.blob_path(old).exists() and cache.blob_path(new).is_file()
    known = cache.index_get("layers", "k")
    assert known is not None and not cache.has_blob(known["digest"]), "the index entry is a miss"


def test_prune_to_a_size_drops_least_recently_used_first(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    now = time.time()
    digests = [
        _blob(cache, tmp_path, bytes([i]) * 1000, used_days_ago=10 - i, now=now) for i in range(5)
    ]
    venv = cache.root / "venvs" / "build-x"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_bytes(b"p" * 500)
    (venv / ".complete").write_text("")
    os.utime(venv / ".complete", (now - 20 * DAY, now - 20 * DAY))  # the oldest of all
    result = cache.prune(max_bytes=2500, now=now)
    assert result.kept_bytes <= 2500
    assert not venv.exists()
    assert [cache.blob_path(d).exists() for d in digests] == [False, False, False, True, True]


def test_cache_cli_info_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = Cache(tmp_path / "cache")
    now = time.time()
    stale = _blob(cache, tmp_path, b"s" * 2000, used_days_ago=90, now=now)
    assert cli.main(["cache", "info", "--cache-dir", str(cache.root)]) == 0
    assert "0.00 GB" in capsys.readouterr().err
    assert cli.main(["cache", "prune", "--cache-dir", str(cache.root)]) == 2
    assert "--older-than" in capsys.readouterr().err
    assert cli.main(["cache", "prune", "--older-than", "30", "--cache-dir", str(cache.root)]) == 0
    assert "removed 1 entries" in capsys.readouterr().err
    assert not cache.blob_path(stale).exists()


@pytest.mark.parametrize(
    ("text", "size"), [("20G", 20 * 10**9), ("1.5t", 1.5e12), ("512", 512), ("300MB", 3e8)]
)
def test_sizes(text: str, size: float) -> None:
    assert build_engineer.parse_size(text) == int(size)


def test_a_full_disk_is_one_paragraph_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(args: object) -> int:
        raise OSError(
            errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "image.tar.partial")
        )

    monkeypatch.setattr(validate_command, "cmd_validate", full)
    assert cli.main(["validate", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "image.tar.partial" in err
    assert "gapforge cache prune" in err and "Traceback" not in err


def test_a_build_stops_before_writing_what_the_disk_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    from gapforge.errors import BuildError
    from gapforge.stages.assemble import ensure_free

    ensure_free(tmp_path, 1000, "the image archive", "--out")  # plenty free here
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**10, 10**10 - 5 * 10**8, 5 * 10**8))
    with pytest.raises(BuildError) as caught:
        ensure_free(tmp_path, 2 * 10**9, f"the image archive {tmp_path / 'image.tar'}", "--out")
    message = caught.value.message
    assert "needs 2.00 GB but only 0.50 GB is free" in message and "--out" in message
    assert "image.tar" in message and "gapforge cache prune" in message
    assert not list(tmp_path.iterdir())


def test_prune_refuses_while_a_build_uses_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gapforge.errors import GapforgeError

    cache = Cache(tmp_path / "cache")
    now = time.time()
    stale = _blob(cache, tmp_path, b"z" * 100, used_days_ago=90, now=now)
    with cache.using(), Cache(cache.root).using():  # two builds at once share the cache
        with pytest.raises(GapforgeError, match="is using this cache now"):
            cache.prune(older_than_s=30 * DAY)
        assert cli.main(["cache", "prune", "--older-than", "30", "--cache-dir", str(cache.root)]) == 2
        assert "when it has finished" in capsys.readouterr().err
        assert cache.blob_path(stale).is_file()
    assert cache.prune(older_than_s=30 * DAY).removed_bytes == 100
