"""The clean room without clamscan: layers streamed out safely, clamscan's output parsed, the
database chosen or refused. (tests/integration/test_scan.py runs the real clamscan.)"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from gapforge.bundle.imagetar import read_archive
from gapforge.clamscan import (
    Finding,
    ScanError,
    ScanReport,
    choose_database,
    parse_clamscan,
    scan_problems,
)
from gapforge.scan import extract_archive, layer_names, member_path, scan_bundle

EVIL = b"gapforge clean-room test payload: not a virus\n"


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def layer_tar(payload: bytes | None = EVIL) -> bytes:
    """A layer: a clean file, the payload at opt/app/evil.bin, and the tricks a layer may play."""
    device = tarfile.TarInfo("dev/null")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    folder = tarfile.TarInfo("opt/app")
    folder.type = tarfile.DIRTYPE
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (folder, None),
        (_file("opt/app/clean.txt"), b"nothing to see\n"),
        (_link("opt/app/passwd", "/etc/passwd"), None),
        (_link("opt/app/hard", "opt/app/clean.txt", tarfile.LNKTYPE), None),
        (device, None),
        (_file("../escape.txt"), b"outside?\n"),
        (_file("/abs.txt"), b"absolute\n"),
    ]
    if payload is not None:
        members.insert(2, (_file("opt/app/evil.bin"), payload))
    return _tar(members)


def make_bundle(folder: Path, layer: bytes, extra: dict[str, bytes] | None = None) -> Path:
    """A bundle folder with a tiny OCI-layout image.tar (one layer, named 'model' in bundle.json)."""
    folder.mkdir(parents=True)
    base = _tar([(_file("etc/os-release"), b"ID=debian\n")])
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    layers = [blob(base), blob(layer)]
    config = blob(json.dumps({"rootfs": {"type": "layers", "diff_ids": layers}}).encode())
    descriptor = {"mediaType": "application/vnd.oci.image.layer.v1.tar"}
    manifest = blob(json.dumps({
        "config": {"digest": config},
        "layers": [{**descriptor, "digest": d, "size": len(blobs[d])} for d in layers],
    }).encode())  # fmt: skip
    docker = [{"Config": "blobs/sha256/" + config[7:], "RepoTags": ["gapforge/test:1"],
               "Layers": ["blobs/sha256/" + d[7:] for d in layers]}]  # fmt: skip
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_file("oci-layout"), b'{"imageLayoutVersion":"1.0.0"}'),
        (_file("index.json"), json.dumps({"manifests": [{"digest": manifest}]}).encode()),
        (_file("manifest.json"), json.dumps(docker).encode()),
    ]
    members += [(_file("blobs/sha256/" + d[7:]), data) for d, data in blobs.items()]
    (folder / "image.tar").write_bytes(_tar(members))
    index = {"image": {"layers": [{"digest": layers[0], "name": "base"},
                                  {"digest": layers[1], "name": "model"}]}}  # fmt: skip
    (folder / "bundle.json").write_text(json.dumps(index))
    for name, data in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_member_names_are_normalized_and_escapes_named() -> None:
    assert member_path("./opt/app/x") == ("opt/app/x", "")
    assert member_path("opt//app/./x") == ("opt/app/x", "")
    assert member_path("../escape") == ("../escape", "a name with '..' that leaves the image root")
    assert member_path("/etc/passwd") == ("/etc/passwd", "an absolute name")


def test_layers_stream_out_regular_files_only_never_outside(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", layer_tar())
    image = read_archive(bundle / "image.tar")
    assert not image.problems
    room = tmp_path / "room"
    room.mkdir()
    extracted = extract_archive(
        image, layer_names(json.loads((bundle / "bundle.json").read_text())), room, 2
    )
    wheres = {target.where: Path(path) for path, target in extracted.targets.items()}
    model = f"layer 'model' ({image.layer_digests[1]})"
    evil = wheres[f"{model}, path opt/app/evil.bin"]
    assert evil.read_bytes() == EVIL and evil.is_relative_to(room)
    assert wheres[f"layer 'base' ({image.layer_digests[0]}), path etc/os-release"].is_file()
    assert "image.tar member manifest.json" in wheres and "image.tar member index.json" in wheres
    # links and devices carry no bytes: counted, never extracted or followed
    assert extracted.skipped == {"symlink": 1, "hardlink": 1, "device": 1}
    assert not any(path.is_symlink() for path in room.rglob("*"))
    # escaping names are scanned inside the room, and named as unsafe
    assert wheres[f"{model}, path ../escape.txt"].is_relative_to(room)
    assert not (tmp_path / "escape.txt").exists() and not Path("/abs.txt").exists()
    assert {why for _, why in extracted.unsafe_names} == {
        "a name with '..' that leaves the image root", "an absolute name"}  # fmt: skip
    assert all(path.stat().st_mode & 0o077 == 0 for path in room.rglob("*"))


def test_clamscan_output_is_parsed_with_colons_in_paths() -> None:
    stdout = (
        "/tmp/r/layer-001/0000/0000002: Gapforge.Test.UNOFFICIAL FOUND\n"
        "/b/we: ird/a: b.bin: Heuristics.Limits.Exceeded.MaxFileSize FOUND\n"
        "WARNING: /tmp/r/x: Can't access file\n\n"
        "----------- SCAN SUMMARY -----------\nKnown viruses: 2\nEngine version: 1.4.6\n"
        "Scanned directories: 0\nScanned files: 3\nInfected files: 2\n"
    )
    output = parse_clamscan(
        stdout, "LibClamAV Error: cli_loaddbdir: oops\nLibClamAV Warning: meh\n"
    )
    assert output.hits == [("/tmp/r/layer-001/0000/0000002", "Gapforge.Test.UNOFFICIAL"),
                           ("/b/we: ird/a: b.bin", "Heuristics.Limits.Exceeded.MaxFileSize")]  # fmt: skip
    assert output.errors == [
        "WARNING: /tmp/r/x: Can't access file",
        "LibClamAV Error: cli_loaddbdir: oops",
    ]
    assert output.summary == {"Known viruses": "2", "Engine version": "1.4.6", "Scanned files": "3"}


def test_problems_name_the_layer_path_and_the_unscanned(tmp_path: Path) -> None:
    report = ScanReport(tmp_path, tmp_path)
    report.findings = [
        Finding("image.tar", "layer 'model' (sha256:ab), path opt/x", "Eicar-Signature"),
        Finding(
            "wheels/w.whl", "bundle file wheels/w.whl", "Heuristics.Limits.Exceeded.MaxFileSize"
        ),
    ]
    report.errors = ["WARNING: layer 'model': Can't access file"]
    assert not report.ok
    assert scan_problems(report) == [
        ("image.tar", "layer 'model' (sha256:ab), path opt/x: Eicar-Signature FOUND"),
        (
            "wheels/w.whl",
            "bundle file wheels/w.whl: not scanned: over the engine's limit (MaxFileSize)",
        ),
        ("clamscan", "the scan is incomplete: WARNING: layer 'model': Can't access file"),
    ]
    as_json = report.as_json()
    assert len(as_json["hits"]) == 1 and len(as_json["unscanned"]) == 1 and as_json["ok"] is False


def test_database_missing_or_empty_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="no such file or folder") as missing:
        choose_database(tmp_path / "nowhere")
    assert missing.value.exit_status == 2 and "--clamav-db" in missing.value.message
    empty = tmp_path / "db"
    empty.mkdir()
    (empty / "local.ign2").write_text("Some.Signature\n")  # tunes others, holds none
    (empty / "blank.hdb").write_text("")
    with pytest.raises(ScanError, match="holds no signatures"):
        choose_database(empty)
    (empty / "site.ndb").write_text("Site.Test:0:*:6576696c\n")
    assert choose_database(empty) == (empty, ["site.ndb"])


def test_a_file_over_the_engines_limit_is_reported_not_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gapforge.scan.ENGINE_FILE_LIMIT", len(EVIL) - 1)  # 2 GiB - 1 in ClamAV 1.4
    bundle = make_bundle(tmp_path / "bundle", layer_tar())
    image = read_archive(bundle / "image.tar")
    room = tmp_path / "room"
    room.mkdir()
    extracted = extract_archive(image, {}, room, 1)
    [finding] = extracted.findings
    assert (
        finding.over_limit
        and finding.where == f"layer 1 ({image.layer_digests[1]}), path opt/app/evil.bin"
    )
    assert finding.message().endswith("not scanned: over the engine's limit (MaxFileSize)")
    assert not any(t.where == finding.where for t in extracted.targets.values())


def test_no_clamscan_is_an_exit_2_error_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(ScanError, match="apt-get install clamav") as error:
        scan_bundle(make_bundle(tmp_path / "bundle", layer_tar()), None)
    assert error.value.exit_status == 2 and "--clamav-db PATH" in error.value.message
