"""The clean room with Debian's real clamscan and a signature database made here (no freshclam)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from gapforge.bundle.imagetar import read_archive
from gapforge.scan import ScanError, scan_bundle, scan_problems
from tests.requirements import missing
from tests.unit.test_scan import EVIL, layer_tar, make_bundle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def clamscan() -> None:
    if shutil.which("clamscan") is None:
        missing("clamscan (ClamAV)", "apt-get install clamav (or run 'bash scripts/setup.sh')")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """An MD5 signature (.hdb) of the payload, as a site would add its own."""
    folder = tmp_path / "clamav-db"
    folder.mkdir()
    (folder / "gapforge-test.hdb").write_text(f"{hashlib.md5(EVIL).hexdigest()}:{len(EVIL)}:Gapforge.Test.Payload\n")
    return folder


def test_payload_in_a_layer_and_in_a_bundle_file_is_found_and_named(tmp_path: Path, database: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", layer_tar(), {"recipe/data/sample.bin": EVIL, "recipe/empty.txt": b""})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # verify hands the scan the verified bundle.json, whose layer names label the hits
    index = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    report = scan_bundle(bundle, database, scan_tmp=scratch, index=index)
    digest = read_archive(bundle / "image.tar").layer_digests[1]
    assert sorted((f.file, f.where, f.signature) for f in report.hits) == [
        ("image.tar", f"layer 'model' ({digest}), path opt/app/evil.bin", "Gapforge.Test.Payload.UNOFFICIAL"),
        ("recipe/data/sample.bin", "bundle file recipe/data/sample.bin", "Gapforge.Test.Payload.UNOFFICIAL"),
    ]
    assert ("image.tar", f"layer 'model' ({digest}), path opt/app/evil.bin: Gapforge.Test.Payload.UNOFFICIAL FOUND") in scan_problems(report)
    assert report.signatures == 1 and report.engine.startswith("1.") and not report.errors
    # 3 bundle files (image.tar is scanned unpacked), 1 + 4 layer files, 5 members of the archive's own;
    # clamscan does not count an empty file as scanned
    assert (report.files_listed, report.files_empty, report.files_scanned) == (3 + 5 + 5, 1, 12)
    assert list(scratch.iterdir()) == [], "the private folder is removed"
    assert not report.ok and len(report.unsafe_names) == 2


def test_clean_bundle_passes_with_no_hits(tmp_path: Path, database: Path) -> None:
    clean_layer = layer_tar(payload=b"harmless\n")
    bundle = make_bundle(tmp_path / "bundle", clean_layer)
    report = scan_bundle(bundle, database, scan_tmp=tmp_path)
    assert report.hits == [] and report.unscanned == [] and report.errors == []
    assert report.as_json()["database"]["signatures"] == 1


def test_missing_or_empty_database_is_an_exit_2_error(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", layer_tar())
    with pytest.raises(ScanError, match="no such file or folder") as error:
        scan_bundle(bundle, tmp_path / "no-db")
    assert error.value.exit_status == 2
    broken = tmp_path / "broken-db"
    broken.mkdir()
    (broken / "bad.ndb").write_text("not a signature line\n")
    with pytest.raises(ScanError, match="loaded no signatures"):
        scan_bundle(bundle, broken, scan_tmp=tmp_path)
