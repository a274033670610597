"""Transfer: inventory, delta and rebuild on two small signed bundles that share a layer; the
rebuilt archive is byte-identical and verifies like the full bundle."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from gapforge.bundle import IMAGE_TAR
from gapforge.bundle.archivemap import BlobRef, Inline, map_archive, parse_map
from gapforge.bundle.source import BundleSource, ImageInfo, Layer
from gapforge.bundle.transfer import DELTA_BLOBS, TransferError, is_delta
from gapforge.bundle.write import write_bundle
from gapforge.commands.delta import cmd_delta, delta_arguments
from gapforge.commands.inventory import cmd_inventory, inventory_arguments
from gapforge.oci.image import ImageSpec, build_manifest, write_archive
from gapforge.oci.image import Layer as OciLayer
from gapforge.oci.tar import Entry, write_tar_file
from gapforge.operator.anchor import Anchor
from gapforge.operator.inventory import make_inventory, read_inventory, write_inventory
from gapforge.operator.rebuild import rebuild_bundle
from gapforge.operator.verify import verify_bundle
from gapforge.release_manager.delta import against_bundle, against_inventory, make_delta
from tests.unit.test_bundle import EPOCH, REF, _evidence, _key, _pinned, source  # noqa: F401 (fixture)

BASE = bytes(range(256)) * 2000  # 512 KB, shared by both bundles
MODEL_1 = b"weights-one" * 3000
MODEL_2 = b"weights-two" * 3000


def _image(folder: Path, layers: dict[str, bytes]) -> ImageInfo:
    folder.mkdir()
    built = []
    for name, data in layers.items():
        path = folder / f"{name}.layer.tar"
        written = write_tar_file([Entry(f"{name}.bin", "file", data=data)], path, EPOCH)
        built.append(OciLayer(name, written.digest, written.size, path))
    labels = {"org.opencontainers.image.title": "unit-desk", "io.gapforge.profile": "cpu"}
    spec = ImageSpec(
        entrypoint=["/bin/runtime"], user="1000:1000", labels=labels, source_date_epoch=EPOCH
    )
    manifest = build_manifest(spec, built, REF)
    tar = folder / "image.tar"
    write_archive(manifest, built, tar, EPOCH)
    return ImageInfo(REF, tar, manifest.manifest_digest, manifest.config_digest,
                     tuple(Layer(x.name, x.digest, x.size) for x in built), labels, "cpu",
                     hashlib.sha256(tar.read_bytes()).hexdigest())  # fmt: skip


def _bundle(desk: BundleSource, tmp_path: Path, version: str, layers: dict[str, bytes]) -> Path:
    image = _image(tmp_path / f"image-{version}", layers)
    pretest = tmp_path / f"pretest-{version}"
    pretest.mkdir()
    (pretest / "evidence.json").write_text(json.dumps(_evidence(image)))
    wheel = tmp_path / "gapforge-0.1.0-py3-none-any.whl"  # the same in both bundles
    wheel.write_bytes(b"PK wheel" * 2000)
    changed = replace(
        desk, version=version, image=image, pretest_dir=pretest, operator_wheels=(wheel,)
    )
    return write_bundle(changed, _key(tmp_path), tmp_path / "dist")


@pytest.fixture
def bundles(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    desk: BundleSource = request.getfixturevalue("source")  # test_bundle's synthetic bundle
    old = _bundle(desk, tmp_path, "1.0.0", {"base": BASE, "model": MODEL_1})
    new = _bundle(desk, tmp_path, "2.0.0", {"base": BASE, "model": MODEL_2})
    return old, new


def _layer_digest(bundle: Path, name: str) -> str:
    index = json.loads((bundle / "bundle.json").read_text())
    return next(x["digest"] for x in index["image"]["layers"] if x["name"] == name)


def _big_blobs(tar: Path) -> dict[str, int]:
    with tarfile.open(tar) as archive:
        return {
            "sha256:" + m.name.rsplit("/", 1)[1]: m.size
            for m in archive
            if m.isfile() and m.name.startswith("blobs/sha256/") and m.size > 4096
        }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rebuilt_bytes(path: Path) -> bytes:
    """The archive put back together from its own map and its own blob byte ranges."""
    mapped = map_archive(path)
    data = path.read_bytes()
    return b"".join(
        s.data if isinstance(s, Inline) else data[s.offset : s.offset + s.size]
        for s in mapped.segments
    )


# --- the archive map ---------------------------------------------------------------------------------------


def test_map_gives_back_the_archive_byte_for_byte(bundles: tuple[Path, Path]) -> None:
    tar = bundles[0] / IMAGE_TAR
    mapped = map_archive(tar, _sha256(tar))
    assert {b.digest: b.size for b in mapped.blobs} == _big_blobs(tar)
    assert mapped.inline_bytes < 16 * 1024
    assert _rebuilt_bytes(tar) == tar.read_bytes()
    again = parse_map(json.loads(json.dumps(mapped.to_json())), "map")
    assert [(type(s), s.digest if isinstance(s, BlobRef) else s.data) for s in again.segments] == [
        (type(s), s.digest if isinstance(s, BlobRef) else s.data) for s in mapped.segments
    ]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_map_follows_long_names_and_pax_headers(tmp_path: Path, fmt: int) -> None:
    blob = b"x" * 10000
    digest = hashlib.sha256(blob).hexdigest()
    tar = tmp_path / "other.tar"
    with tarfile.open(tar, "w", format=fmt) as archive:
        for name, data in ((f"blobs/sha256/{digest}", blob), ("a/" + "long" * 40, b"small")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "é"} if fmt == tarfile.PAX_FORMAT else {}
            archive.addfile(info, io.BytesIO(data))
    mapped = map_archive(tar)
    assert [b.digest for b in mapped.blobs] == [f"sha256:{digest}"]
    assert _rebuilt_bytes(tar) == tar.read_bytes()


def test_a_map_that_does_not_add_up_is_refused() -> None:
    value = {"schema": "gapforge/archive-map/v1", "size": 10, "sha256": "",
             "segments": [{"inline": base64.b64encode(b"abc").decode()}]}  # fmt: skip
    with pytest.raises(TransferError, match="add up to 3 bytes"):
        parse_map(value, "m.json")


# --- inventory -----------------------------------------------------------------------------------------


def test_inventory_lists_exactly_the_blobs_and_releases(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    old, _new = bundles
    inventory = make_inventory([old], verify_blobs=True)
    assert {d: e["size"] for d, e in inventory["blobs"].items()} == _big_blobs(old / IMAGE_TAR)
    assert inventory["releases"] == [
        {"name": "unit-desk", "version": "1.0.0", "sums_sha256": _sha256(old / "SHA256SUMS"),
         "held_in": "bundle unit-desk-1.0.0"}
    ]  # fmt: skip
    assert inventory["damaged"] == []
    wheel = old / "wheels" / "gapforge-0.1.0-py3-none-any.whl"
    assert inventory["files"][f"sha256:{_sha256(wheel)}"] == {
        "size": 16000, "held_in": ["bundle unit-desk-1.0.0"]
    }  # fmt: skip
    big = [p for p in old.rglob("*") if p.is_file() and p.stat().st_size > 4096]
    assert set(inventory["files"]) == {f"sha256:{_sha256(p)}" for p in big if p.name != IMAGE_TAR}
    both = make_inventory([tmp_path / "dist"])  # a folder of bundles
    assert len(both["releases"]) == 2
    shared = _layer_digest(old, "base")
    assert both["blobs"][shared]["held_in"] == ["bundle unit-desk-1.0.0", "bundle unit-desk-2.0.0"]
    assert str(tmp_path) not in json.dumps(both)  # no host paths leave the gap


def test_inventory_signature_verifies_and_tampering_is_refused(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    operator = _key(tmp_path, 3)
    path = write_inventory(make_inventory([bundles[0]]), operator, tmp_path / "inventory.json")
    read = read_inventory(path, [operator.private.public_key()])
    assert read["verification"]["pinned"] is True
    assert read["verification"]["fingerprint"] == operator.fingerprint
    unpinned = read_inventory(path)
    assert unpinned["verification"] == {**read["verification"], "pinned": False}
    with pytest.raises(TransferError, match="does not verify"):
        read_inventory(path, [_key(tmp_path, 4).private.public_key()])
    envelope = json.loads(path.read_bytes())
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["blobs"]["sha256:" + "0" * 64] = {"size": 1, "held_in": ["forged"]}
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_text(json.dumps(envelope))
    for keys in ([operator.private.public_key()], None):
        with pytest.raises(TransferError, match="refused"):
            read_inventory(path, keys)


# --- delta and rebuild ---------------------------------------------------------------------------------


def test_delta_against_inventory_rebuilds_the_identical_verified_bundle(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = bundles
    operator = _key(tmp_path, 3)
    inventory = write_inventory(make_inventory([old]), operator, tmp_path / "inventory.json")
    against = against_inventory(inventory, [operator.private.public_key()])
    result = make_delta(new, against, tmp_path / "out")
    assert is_delta(result.path) and not (result.path / IMAGE_TAR).exists()
    new_blobs = set(_big_blobs(new / IMAGE_TAR)) - set(_big_blobs(old / IMAGE_TAR))
    assert {x["digest"] for x in result.included} == new_blobs
    assert {p.name for p in (result.path / DELTA_BLOBS).iterdir()} == {d[7:] for d in new_blobs}
    assert _layer_digest(new, "base") in {x["digest"] for x in result.left_out}
    assert result.delta_bytes < result.full_bytes - len(BASE)
    assert [f["name"] for f in result.files_left_out] == [
        "monitoring/grafana-dashboard.json",
        "wheels/gapforge-0.1.0-py3-none-any.whl",
    ]  # the files over 4 KiB the site holds: not carried again
    assert not (result.path / "wheels").exists()
    record = json.loads((result.path / "delta" / "delta.json").read_text())
    assert record["against"]["sha256"] == _sha256(inventory)
    assert record["archive"] == {**record["archive"], "sha256": _sha256(new / IMAGE_TAR),
                                 "size": (new / IMAGE_TAR).stat().st_size}  # fmt: skip

    rebuilt = rebuild_bundle(result.path, [old], tmp_path / "inside", _pinned(tmp_path))
    assert rebuilt.path == tmp_path / "inside" / "unit-desk-2.0.0"
    assert _sha256(rebuilt.path / IMAGE_TAR) == _sha256(new / IMAGE_TAR) == rebuilt.archive_sha256
    assert sorted(rebuilt.from_delta) == sorted(new_blobs)
    wheel = "wheels/gapforge-0.1.0-py3-none-any.whl"
    assert (rebuilt.path / wheel).read_bytes() == (new / wheel).read_bytes()
    assert not (rebuilt.path / "delta").exists()
    report = verify_bundle(
        rebuilt.path, Anchor("key", (_key(tmp_path).private.public_key(),), "--key")
    )
    assert report.ok, report.problems
    with pytest.raises(TransferError, match="already exists"):
        rebuild_bundle(result.path, [old], tmp_path / "inside", _pinned(tmp_path))


def test_delta_against_the_old_bundle_directly(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = bundles
    result = make_delta(new, against_bundle(old), tmp_path / "out", check_archive=False)
    record = json.loads((result.path / "delta" / "delta.json").read_text())
    assert record["against"]["kind"] == "bundle" and record["against"]["version"] == "1.0.0"
    assert len(result.included) == len(
        set(_big_blobs(new / IMAGE_TAR)) - set(_big_blobs(old / IMAGE_TAR))
    )
    rebuilt = rebuild_bundle(
        result.path, [tmp_path / "dist"], tmp_path / "inside", _pinned(tmp_path)
    )
    assert _sha256(rebuilt.path / IMAGE_TAR) == _sha256(new / IMAGE_TAR)


def test_missing_blob_is_named_with_every_place_looked(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = bundles
    result = make_delta(new, against_bundle(old), tmp_path / "out")
    empty = tmp_path / "media" / "blobs" / "sha256"
    empty.mkdir(parents=True)
    with pytest.raises(TransferError) as caught:
        rebuild_bundle(result.path, [tmp_path / "media"], tmp_path / "inside", _pinned(tmp_path))
    message = caught.value.message
    base = _layer_digest(new, "base")
    assert f"{base} (layer 'base', {_big_blobs(new / IMAGE_TAR)[base]} bytes)" in message
    assert str(result.path / DELTA_BLOBS) in message and str(tmp_path / "media") in message
    assert "(file wheels/gapforge-0.1.0-py3-none-any.whl, 16000 bytes)" in message
    assert not (tmp_path / "inside").exists() or not any((tmp_path / "inside").iterdir())


def test_damaged_blob_in_a_source_is_named_and_passed_over(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = bundles
    result = make_delta(new, against_bundle(old), tmp_path / "out")
    base = _layer_digest(new, "base")
    held = {b.digest: b for b in map_archive(old / IMAGE_TAR).blobs}[base]
    blobs = tmp_path / "media" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    data = bytearray((old / IMAGE_TAR).read_bytes()[held.offset : held.offset + held.size])
    data[1000] ^= 0xFF
    (blobs / base[7:]).write_bytes(bytes(data))
    for held_file in result.files_left_out:  # any file, by its digest
        data_of = (old / held_file["name"]).read_bytes()
        (blobs / hashlib.sha256(data_of).hexdigest()).write_bytes(data_of)
    with pytest.raises(TransferError) as caught:
        rebuild_bundle(result.path, [tmp_path / "media"], tmp_path / "inside", _pinned(tmp_path))
    assert f"damaged copy: {blobs / base[7:]} hashes to sha256:" in caught.value.message
    assert not list((tmp_path / "inside").glob("*"))
    rebuilt = rebuild_bundle(
        result.path, [tmp_path / "media", old], tmp_path / "inside", _pinned(tmp_path)
    )
    assert len(rebuilt.rejected) == 1 and rebuilt.from_sources[base] == str(old / IMAGE_TAR)
    assert _sha256(rebuilt.path / IMAGE_TAR) == _sha256(new / IMAGE_TAR)


def test_commands_end_to_end(
    bundles: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = bundles
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "trust"))
    monkeypatch.delenv("GAPFORGE_OPERATOR_KEY", raising=False)

    def run(arguments: object, command: object, argv: list[str]) -> int:
        parser = argparse.ArgumentParser()
        arguments(parser)  # type: ignore[operator]
        return command(parser.parse_args(argv))  # type: ignore[operator, no-any-return]

    inventory = tmp_path / "inventory.json"
    assert run(inventory_arguments, cmd_inventory, [str(old), "--out", str(inventory)]) == 0
    pub = tmp_path / "trust" / "operator.pub.pem"
    argv = [
        str(new),
        "--against",
        str(inventory),
        "--out",
        str(tmp_path / "out"),
        "--inventory-key",
        str(pub),
    ]
    assert run(delta_arguments, cmd_delta, argv) == 0
    delta = tmp_path / "out" / "unit-desk-2.0.0.delta"
    # Inside, `gapforge join` rebuilds it (commands/join.py); the rebuild itself, pinned to the key.
    rebuild_bundle(delta, [old], tmp_path / "inside", _pinned(tmp_path))
    assert _sha256(tmp_path / "inside" / "unit-desk-2.0.0" / IMAGE_TAR) == _sha256(new / IMAGE_TAR)


def test_delta_against_something_unknown_says_what_it_accepts(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser()
    delta_arguments(parser)
    argv = [str(bundles[1]), "--against", "9.9.9", "--out", str(tmp_path / "out"),
            "--repo", str(tmp_path / "no-repo")]  # fmt: skip
    with pytest.raises(TransferError, match="no such inventory file or bundle folder"):
        cmd_delta(parser.parse_args(argv))


def test_rebuild_never_writes_into_the_delta_or_a_source(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = bundles
    result = make_delta(new, against_bundle(old), tmp_path / "out")
    for out in (result.path / "rebuilt", old / "rebuilt"):
        with pytest.raises(TransferError, match="read only"):
            rebuild_bundle(result.path, [old], out, _pinned(tmp_path))
    assert not (result.path / "rebuilt").exists() and not (old / "rebuilt").exists()
