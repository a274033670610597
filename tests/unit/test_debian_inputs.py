"""Locked .debs from the first source that has the right bytes, the frozen mode, and the cache's
owned temporary folders (no network: the sources are file:// folders made here)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gapforge.cache import Cache
from gapforge.errors import LockError
from gapforge.fetch.debian import DebianInputs
from gapforge.fetch.debs import MIRROR_ENV, DebsUnavailable, deb_sources, fetch_debs
from gapforge.fetch.rootfs import DebianPackage
from gapforge.lock.debian import debian_inputs_sha256, read_debian_lock, write_debian_lock
from gapforge.profile import DebianBase, load_profile

NOWHERE = DebianBase("bookworm", "minbase", (), ("deb file:///nonexistent/debian bookworm main",))


def _package(name: str, content: bytes) -> DebianPackage:
    return DebianPackage(name, "1.0-1", "amd64", hashlib.sha256(content).hexdigest(), len(content),
                         f"debian/pool/main/{name[0]}/{name}/{name}_1.0-1_amd64.deb")  # fmt: skip


def _serve(root: Path, package: DebianPackage, content: bytes) -> None:
    path = root / package.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _lock(tmp_path: Path, packages: tuple[DebianPackage, ...], snapshot: str = "") -> Path:
    path = tmp_path / "locks" / "cpu.debian.lock"
    write_debian_lock(path, load_profile("cpu"), packages, snapshot)
    return path


def test_sources_are_tried_in_order_and_wrong_bytes_are_never_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = b"the real .deb", b"something else"
    package = _package("zlib1g", good)
    _serve(tmp_path / "corrupt", package, bad)
    _serve(tmp_path / "org-mirror", package, good)
    monkeypatch.setenv(MIRROR_ENV, f"file://{tmp_path}/corrupt file://{tmp_path}/org-mirror")
    cache = Cache(tmp_path / "cache")
    lock = read_debian_lock(_lock(tmp_path, (package,)))
    files = fetch_debs(cache, lock, NOWHERE)
    assert files[package.sha256].read_bytes() == good
    assert files[package.sha256].name == "zlib1g_1.0-1_amd64.deb"
    # Now cached: no source is asked (they are all gone).
    monkeypatch.delenv(MIRROR_ENV)
    assert fetch_debs(cache, lock, NOWHERE) == files


def test_a_deb_no_source_has_is_named_with_every_source_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = _package("libpam0g", b"an old security release")
    old_form = DebianPackage("libzstd1", "1.5.4+dfsg2-5", "amd64", "e" * 64)  # no archive path
    _serve(tmp_path / "corrupt", gone, b"other bytes")
    monkeypatch.setenv(MIRROR_ENV, f"file://{tmp_path}/corrupt")
    lock = read_debian_lock(_lock(tmp_path, (gone, old_form), snapshot="20261123T000000Z"))
    with pytest.raises(DebsUnavailable) as caught:
        fetch_debs(Cache(tmp_path / "cache"), lock, NOWHERE)
    message = str(caught.value)
    assert "2 Debian packages locked in" in message
    assert "libpam0g 1.0-1 amd64: $GAPFORGE_DEBIAN_MIRROR" in message
    assert "served other bytes than the lock's sha256" in message
    assert "mirror file:///nonexistent/…" in message
    assert "snapshot archive at 20261123T000000Z" in message
    assert "libzstd1 1.5.4+dfsg2-5 amd64: the lock predates archive paths" in message
    assert not list((tmp_path / "cache" / "files" / "sha256").iterdir())


def test_sources_follow_the_profile_mirrors_and_the_snapshot_archive() -> None:
    debs = load_profile("cpu").debian
    sources = deb_sources(debs, "20261202T000000Z")
    urls = [s.url_for("debian-security/pool/updates/main/p/pam/libpam0g_1_amd64.deb") for s in sources]
    assert urls == [
        "http://deb.debian.org/debian-security/pool/updates/main/p/pam/libpam0g_1_amd64.deb",
        "https://snapshot.debian.org/archive/debian-security/20261202T000000Z/pool/updates/main/p/pam/libpam0g_1_amd64.deb",
    ]


def test_frozen_stops_naming_each_package_and_leaves_the_lock_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    profile = load_profile("cpu")
    # A profile whose mirror is a folder with nothing in it: nothing can be had.
    profile = dataclasses.replace(profile, debian=NOWHERE)
    gone = (_package("libpam0g", b"a"), _package("zlib1g", b"b"))
    path = tmp_path / "locks" / "cpu.debian.lock"
    write_debian_lock(path, profile, gone, "20261123T000000Z")
    before = path.read_bytes()
    inputs = DebianInputs(Cache(tmp_path / "cache"), profile, path.parent, frozen=True)
    with pytest.raises(LockError) as caught:
        inputs.rootfs_tar()
    message = str(caught.value)
    assert "libpam0g 1.0-1" in message and "zlib1g 1.0-1" in message
    assert "--frozen never changes a lock" in message and "nox -s lock" in message
    assert path.read_bytes() == before and inputs.refreshes == []
    assert read_debian_lock(path).inputs_sha256 == debian_inputs_sha256(profile)


# --- the cache's temporary folders ------------------------------------------------------------------


def test_cleanup_spares_folders_whose_owner_is_alive(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    with cache.tempdir("live-") as live:
        (live / "half-written").write_bytes(b"x")
        cache.clear_stale_tmp()  # another build starting on the same cache
        assert (live / "half-written").is_file()
    assert list((cache.root / "tmp").iterdir()) == []


def test_cleanup_removes_what_a_killed_process_left(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    # A process that dies inside its tempdir (no cleanup runs), as a kill -9 would leave it.
    code = (
        "import os, sys; from pathlib import Path; from gapforge.cache import Cache\n"
        f"c = Cache(Path({str(cache.root)!r}))\n"
        "with c.tempdir('killed-') as w:\n"
        "    (w / 'partial').write_bytes(b'x'); os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    left = sorted(p.name for p in (cache.root / "tmp").iterdir())
    assert len(left) == 2 and left[1].endswith(".owner")
    unowned_old, unowned_new = cache.root / "tmp" / "old-run", cache.root / "tmp" / "new-run"
    unowned_old.mkdir()
    unowned_new.mkdir()
    hours_ago = time.time() - 2 * 3600
    os.utime(unowned_old, (hours_ago, hours_ago))
    cache.clear_stale_tmp()
    assert sorted(p.name for p in (cache.root / "tmp").iterdir()) == ["new-run"]


def test_a_malformed_index_entry_is_a_miss(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    folder = cache.root / "index" / "sdist-builds"
    folder.mkdir(parents=True)
    for key, text in (("a", "[1, 2]"), ("b", '{"sha256": 5}'), ("c", "{not json"), ("d", "\xff")):
        (folder / f"{key}.json").write_text(text, encoding="latin-1")
        assert cache.index_get("sdist-builds", key, required=("sha256",)) is None
    cache.index_put("sdist-builds", "e", {"sha256": "f" * 64})
    assert cache.index_get("sdist-builds", "e", required=("sha256",)) == {"sha256": "f" * 64}


# --- cached venvs are verified, not trusted on a marker ---------------------------------------------


def test_a_changed_file_in_a_cached_venv_is_found_and_the_venv_made_again(tmp_path: Path) -> None:
    from gapforge.fetch.wheels import build_flit_wheel, make_venv, verify_venv

    project = tmp_path / "demo"
    (project / "demo_pkg").mkdir(parents=True)
    (project / "demo_pkg" / "__init__.py").write_text('"""Demo."""\n__version__ = "1.0"\nANSWER = 42\n')
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["flit_core"]\nbuild-backend = "flit_core.buildapi"\n'
        '[project]\nname = "demo_pkg"\ndynamic = ["version", "description"]\n'
    )
    cache = Cache(tmp_path / "cache")
    wheel = build_flit_wheel(cache, project / "pyproject.toml", 1735689600)
    venv = make_venv(cache, "demo", [wheel])
    assert verify_venv(venv, [wheel.name]) == []
    (installed,) = venv.glob("lib/python*/site-packages/demo_pkg/__init__.py")
    installed.write_text("ANSWER = 'tampered'\n")
    assert verify_venv(venv, [wheel.name]) == ["demo_pkg/__init__.py was changed"]
    assert verify_venv(venv, ["other-1.0-py3-none-any.whl"]) == ["it was made from other wheels"]
    again = make_venv(cache, "demo", [wheel])
    assert again == venv and "ANSWER = 42" in installed.read_text()
