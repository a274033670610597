"""The OCI writer: config, manifest, index, docker manifest.json and the archive."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from gapforge.oci.image import ImageSpec, Layer, build_manifest, write_archive
from gapforge.oci.tar import Entry, write_tar_file

EPOCH = 1735689600


def _layer(tmp_path: Path, name: str, content: bytes) -> Layer:
    path = tmp_path / f"{name}.tar"
    written = write_tar_file([Entry(f"{name}.txt", "file", data=content)], path, EPOCH)
    return Layer(name, written.digest, written.size, path)


def _spec() -> ImageSpec:
    return ImageSpec(
        entrypoint=["/bin/tool"],
        cmd=["info"],
        env={"B": "2", "A": "1"},
        user="1000:1000",
        labels={"org.opencontainers.image.title": "t", "io.gapforge.x": "y"},
        source_date_epoch=EPOCH,
    )


def test_config_names_the_layers_and_has_no_clock_time(tmp_path: Path) -> None:
    layers = [_layer(tmp_path, "one", b"1"), _layer(tmp_path, "two", b"2")]
    manifest = build_manifest(_spec(), layers, "gapforge/t:0.1.0")
    config = json.loads(manifest.config_bytes)
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in layers]
    assert config["created"] == "2025-01-01T00:00:00Z"
    assert config["config"]["Env"] == ["A=1", "B=2"]
    assert config["config"]["User"] == "1000:1000"
    assert manifest.config_digest == "sha256:" + hashlib.sha256(manifest.config_bytes).hexdigest()
    oci = json.loads(manifest.manifest_bytes)
    assert oci["config"]["digest"] == manifest.config_digest
    assert [entry["digest"] for entry in oci["layers"]] == [layer.digest for layer in layers]
    assert oci["annotations"] == {"org.opencontainers.image.title": "t"}


def test_archive_holds_oci_layout_and_docker_manifest(tmp_path: Path) -> None:
    layers = [_layer(tmp_path, "one", b"1")]
    manifest = build_manifest(_spec(), layers, "gapforge/t:0.1.0")
    out = tmp_path / "image.tar"
    write_archive(manifest, layers, out, EPOCH)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        docker = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        layout = json.loads(tar.extractfile("oci-layout").read())  # type: ignore[union-attr]
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith("blobs/sha256/"):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                assert hashlib.sha256(data).hexdigest() == member.name.rsplit("/", 1)[1]
    assert layout == {"imageLayoutVersion": "1.0.0"}
    assert docker == [{
        "Config": "blobs/sha256/" + manifest.config_digest.split(":")[1],
        "RepoTags": ["gapforge/t:0.1.0"],
        "Layers": ["blobs/sha256/" + layers[0].digest.split(":")[1]],
    }]  # fmt: skip
    assert index["manifests"][0]["digest"] == manifest.manifest_digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "0.1.0"
    assert "blobs/sha256/" + manifest.manifest_digest.split(":")[1] in names


def test_archive_is_byte_identical_when_written_twice(tmp_path: Path) -> None:
    layers = [_layer(tmp_path, "one", b"1"), _layer(tmp_path, "two", b"2")]
    outputs = []
    for name in ("a.tar", "b.tar"):
        manifest = build_manifest(_spec(), layers, "gapforge/t:0.1.0")
        write_archive(manifest, layers, tmp_path / name, EPOCH)
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]


def test_changing_one_layer_changes_only_its_digest(tmp_path: Path) -> None:
    base = _layer(tmp_path, "base", b"base")
    top_a = _layer(tmp_path, "top", b"lr=1e-4")
    (tmp_path / "v2").mkdir()
    top_b = _layer(tmp_path / "v2", "top", b"lr=2e-4")
    a = json.loads(build_manifest(_spec(), [base, top_a], "t:1").manifest_bytes)
    b = json.loads(build_manifest(_spec(), [base, top_b], "t:1").manifest_bytes)
    assert a["layers"][0] == b["layers"][0]
    assert a["layers"][1] != b["layers"][1]


def test_repeated_layer_blob_is_stored_once(tmp_path: Path) -> None:
    layer = _layer(tmp_path, "same", b"x")
    manifest = build_manifest(_spec(), [layer, layer], "t:1")
    buffer = tmp_path / "img.tar"
    write_archive(manifest, [layer, layer], buffer, EPOCH)
    with tarfile.open(buffer) as tar:
        blobs = [n for n in tar.getnames() if n == "blobs/sha256/" + layer.digest.split(":")[1]]
    assert len(blobs) == 1
