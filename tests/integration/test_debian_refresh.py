"""A Debian lock the archive moved away from: --frozen stops naming each package; the default build
takes the archive's current packages, lists them, rewrites the lock and records it (real mirror,
real mmdebstrap)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gapforge.fetch.rootfs import DebianPackage
from gapforge.lock.debian import read_debian_lock, render_debian_lock
from gapforge.profile import REPO_ROOT, load_profile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

GONE = ("libpam0g", "libzstd1", "zlib1g")


def _gone(package: DebianPackage) -> DebianPackage:
    """The same package at a version no mirror or snapshot has ever served."""
    version = package.version + "~gapforge.gone"
    filename = package.filename.replace(package.version.split(":")[-1], version.split(":")[-1])
    digest = hashlib.sha256(f"{package.name} {version}".encode()).hexdigest()
    return DebianPackage(package.name, version, package.architecture, digest, package.size, filename)


def _run(project: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "gapforge.cli", "build", str(project / "recipes/tiny/tiny.yaml"),
        "--lock-dir", str(project / "lockfiles"), "--out", str(out), "--no-load", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=False, env=dict(os.environ))


def test_a_lock_the_archive_moved_away_from(tiny_project: Path, tmp_path: Path) -> None:
    committed = {p: p.read_bytes() for p in (REPO_ROOT / "lockfiles").glob("*.lock")}
    project = tmp_path / "project"
    subprocess.run(["cp", "-a", str(tiny_project), str(project)], check=True)
    path = project / "lockfiles" / "cpu.debian.lock"
    lock = read_debian_lock(path)
    stale = tuple(_gone(p) if p.name in GONE else p for p in lock.packages)
    path.write_text(render_debian_lock(load_profile("cpu"), "base", "20261123T000000Z", stale))
    before = path.read_bytes()

    frozen = _run(project, tmp_path / "out-frozen", "--frozen")
    assert frozen.returncode == 2, frozen.stderr[-3000:]
    assert "Traceback" not in frozen.stderr
    for name in GONE:
        assert f"{name} {_gone(next(p for p in lock.packages if p.name == name)).version}" in frozen.stderr
    assert "--frozen never changes a lock" in frozen.stderr
    assert path.read_bytes() == before

    default = _run(project, tmp_path / "out", "--no-pretest")
    assert default.returncode == 0, default.stderr[-4000:]
    report = json.loads((tmp_path / "out/tiny-desk-0.0.1/build.json").read_text())
    (refresh,) = report["debian_refresh"]
    assert refresh["lock"] == "cpu.debian.lock" and refresh["snapshot_from"] == "20261123T000000Z"
    changed = {c["name"]: c for c in refresh["changes"]}
    assert set(GONE) <= set(changed)  # and whatever else the archive updated since the commit
    refreshed = read_debian_lock(path)
    for name in GONE:
        current = next(p for p in refreshed.packages if p.name == name)
        assert changed[name]["to"] == current.version and "gone" not in current.version
        assert f"{name}: " in default.stderr  # listed for review
    assert refreshed.snapshot > "20261123T000000Z"
    assert report["reproduce"]["locks"]["cpu.debian.lock"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the committed lockfiles were never touched
    assert {p: p.read_bytes() for p in (REPO_ROOT / "lockfiles").glob("*.lock")} == committed
