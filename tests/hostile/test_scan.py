"""Issue 22 items 3 and 8: check, then touch. `verify --scan` unpacks nothing of a bundle that did
not verify; a layer that unpacks past its cap of bytes or members (a compression, sparse-file or
member-count bomb) is refused with one paragraph, and nothing is left in --scan-tmp."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from gapforge import scan as scan_module
from gapforge.scan import ScanError, scan_bundle
from tests.bundles import write_signed_bundle
from tests.hostile.conftest import Hostile
from tests.hostile.test_verify import attack_bundle
from tests.unit.test_scan import make_bundle

needs_clamscan = pytest.mark.skipif(shutil.which("clamscan") is None, reason="no clamscan")


@pytest.fixture
def database(hostile: Hostile) -> Path:
    """A site's own one-signature database (an MD5 of a string no test file holds)."""
    folder = hostile.inputs / "clamav-db"
    folder.mkdir()
    marker = b"gapforge hostile scan marker\n"
    (folder / "site.hdb").write_text(
        f"{hashlib.md5(marker).hexdigest()}:{len(marker)}:Site.Marker\n"
    )
    return folder


def _report(text: str) -> dict[str, object]:
    value, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert isinstance(value, dict)
    return value


@needs_clamscan
def test_an_unverified_bundle_is_never_unpacked(
    hostile: Hostile, database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "no-root"))
    template = write_signed_bundle(tmp_path / "attacker", seed=66)
    bundle = attack_bundle(template, hostile.inputs, b"{}", bytes(64))
    unpacked: list[object] = []
    monkeypatch.setattr(scan_module, "extract_archive", lambda *a, **k: unpacked.append(a))
    scratch = hostile.out / "scan-tmp"
    scratch.mkdir(parents=True)
    key = hostile.inputs / "release.pub.pem"
    key.write_bytes(_pem(tmp_path))  # the release key; the attacker signed with another
    status, text = hostile.run("verify", bundle, "--key", key, "--scan", "--clamav-db", database,
                               "--scan-tmp", scratch, "--json", capsys=capsys)  # fmt: skip
    report = _report(text)
    assert status != 0 and report["ok"] is False and report["scan"] is None, text
    assert any(p["file"] == "clamscan" and "not run" in p["message"] for p in report["problems"])  # type: ignore[index, union-attr, attr-defined]
    assert unpacked == [] and list(scratch.iterdir()) == []


def _pem(folder: Path) -> bytes:
    from tests.bundles import signing_key

    return signing_key(folder).public_pem


@needs_clamscan
def test_a_verified_bundle_is_scanned(
    hostile: Hostile, database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The control: the genuine bundle, pinned key, is unpacked and scanned, and passes."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "no-root"))
    bundle = write_signed_bundle(tmp_path / "genuine")
    key = hostile.inputs / "release.pub.pem"
    key.write_bytes(_pem(tmp_path / "genuine"))
    scratch = hostile.out / "scan-tmp"
    scratch.mkdir(parents=True)
    status, text = hostile.run("verify", bundle, "--key", key, "--scan", "--clamav-db", database,
                               "--scan-tmp", scratch, "--json", capsys=capsys)  # fmt: skip
    report = _report(text)
    assert status == 0 and report["ok"] is True, text
    assert report["scan"]["files_scanned"] > 0 and report["scan"]["hits"] == []  # type: ignore[index]
    assert list(scratch.iterdir()) == []


def _gzip_bomb(megabytes: int) -> bytes:
    """A gzip'd layer tar holding one file of `megabytes` MiB of zeros (a few KiB compressed)."""
    buffer = io.BytesIO()
    info = tarfile.TarInfo("opt/zeros.bin")
    info.size = megabytes * 1024 * 1024
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w|") as tar,
    ):
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return buffer.getvalue()


def _many_members(count: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for number in range(count):
            tar.addfile(tarfile.TarInfo(f"f/{number}"), io.BytesIO(b""))
    return buffer.getvalue()


@needs_clamscan
@pytest.mark.parametrize("bomb", ["bytes", "members"])
def test_a_layer_bomb_is_refused_and_nothing_is_left_in_scan_tmp(
    hostile: Hostile, database: Path, bomb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small caps, so a small bomb trips them (the real ones: 16x a layer's size or 256 MiB; 500,000
    # members).
    monkeypatch.setattr(scan_module, "MIN_LAYER_BUDGET", 1024 * 1024)
    monkeypatch.setattr(scan_module, "MAX_MEMBERS", 100)
    layer = _gzip_bomb(8) if bomb == "bytes" else _many_members(500)
    bundle = make_bundle(hostile.inputs / "bundle", layer)
    scratch = hostile.out / "scan-tmp"
    scratch.mkdir(parents=True)
    with pytest.raises(ScanError) as refused:
        index = json.loads((bundle / "bundle.json").read_text())
        scan_bundle(bundle, database, workers=2, scan_tmp=scratch, index=index)
    message = refused.value.message
    assert refused.value.exit_status == 2 and "layer 'model'" in message and "bomb" in message
    assert ("more than 100 members" if bomb == "members" else "bytes unpacked") in message
    assert "\n" not in message and list(scratch.iterdir()) == []
