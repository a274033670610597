"""The llama.cpp serving image's layers, written without Docker: the training image's base layer,
the serving wheels, a config layer; the same inputs give the same digest in another cache."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

from gapforge_runtime.image_contract import IMAGE_USER
from gapforge_runtime.recipe_serve import ServeSpec

from gapforge.cache import Cache
from gapforge.image import plan_base
from gapforge.lock.python import parse_python_lock
from gapforge.profile import REPO_ROOT, load_profile
from gapforge.serving.image import CONFIG_FILE, LAUNCHER_FILE, ServingImage, assemble_serving

DEBIAN_SHA = "ab" * 32


def _rootfs(path: Path) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in (("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", b"root:x:0:\n"),
                           ("usr/bin/python3", b"#!/bin/false\n")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1
            archive.addfile(info, io.BytesIO(data))
    return path


def _wheel(folder: Path, name: str) -> Path:
    """A minimal valid wheel (RECORD with hashes), so the installer puts it in the venv."""
    folder.mkdir(parents=True)
    files = {f"{name}/__init__.py": f"NAME = {name!r}\n".encode(),
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}  # fmt: skip
    record = (
        "".join(
            f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
            for p, d in files.items()
        )
        + f"{name}-1.0.dist-info/RECORD,,\n"
    )
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for p, d in {**files, f"{name}-1.0.dist-info/RECORD": record.encode()}.items():
            archive.writestr(zipfile.ZipInfo(p, (2025, 1, 1, 0, 0, 0)), d)
    return path


def _assemble(tmp: Path, sub: str, serve: ServeSpec) -> ServingImage:
    profile = load_profile("cpu")
    lock = parse_python_lock(REPO_ROOT / "lockfiles/cpu.serve-llama.cpp.txt")
    rootfs = tmp / "rootfs.tar"
    if not rootfs.exists():
        _rootfs(rootfs)
        for name in ("fastapi", "uvicorn"):
            _wheel(tmp / "wheels" / name, name)
    wheels = {n: next((tmp / "wheels" / n).glob("*.whl")) for n in ("fastapi", "uvicorn")}
    return assemble_serving(Cache(tmp / sub / "cache"), profile, lock, (rootfs, DEBIAN_SHA), wheels,
                            serve, ("desk", "0.1.0"), tmp / sub / "out")  # fmt: skip


def _member(image: ServingImage, layer: int, path: str) -> bytes:
    with tarfile.open(image.layers.layers[layer].path) as archive:
        handle = archive.extractfile(path)
        assert handle is not None
        return handle.read()


def test_two_assemblies_give_the_same_digest_and_bytes(tmp_path: Path) -> None:
    serve = ServeSpec(artefacts=["gguf:q4_k_m", "gguf:q8_0"])
    one, two = _assemble(tmp_path, "a", serve), _assemble(tmp_path, "b", serve)
    assert one.manifest.manifest_digest == two.manifest.manifest_digest
    assert one.tar_path.read_bytes() == two.tar_path.read_bytes()
    assert [layer.name for layer in one.layers.layers] == ["base", "wheels", "serve-config"]
    assert one.layers.written == ["base", "wheels", "serve-config"]  # a fresh cache: all written


def test_the_base_layer_is_the_training_images(tmp_path: Path) -> None:
    image = _assemble(tmp_path, "a", ServeSpec(artefacts=["gguf:q8_0"]))
    profile = load_profile("cpu")
    training_base = plan_base(profile, tmp_path / "rootfs.tar", DEBIAN_SHA)
    cache = Cache(tmp_path / "a" / "cache")
    assert cache.index_get("layers", training_base.key)["digest"] == image.layers.layers[0].digest  # type: ignore[index]
    assert _member(image, 0, "etc/passwd").endswith(
        b"gapforge:x:1000:1000:gapforge runtime:/home/gapforge:/usr/sbin/nologin\n"
    )
    assert (
        _member(image, 1, "opt/gapforge/venv/lib/python3.11/site-packages/uvicorn/__init__.py")
        == b"NAME = 'uvicorn'\n"
    )


def test_config_layer_names_the_server_settings_and_non_root_user(tmp_path: Path) -> None:
    image = _assemble(tmp_path, "a", ServeSpec(artefacts=["gguf:q4_k_m", "gguf:q8_0"], port=9000))
    config = json.loads(_member(image, 2, CONFIG_FILE.lstrip("/")))
    assert config["port"] == 9000 and config["host"] == "0.0.0.0"
    assert [(m["model"], m["model_alias"]) for m in config["models"]] == [
        ("/models/gguf-q4_k_m.gguf", "gguf:q4_k_m"), ("/models/gguf-q8_0.gguf", "gguf:q8_0")]  # fmt: skip
    assert (
        _member(image, 2, LAUNCHER_FILE.lstrip("/"))
        == (REPO_ROOT / "runtime/gapforge_runtime/serve_llama.py").read_bytes()
    )
    image_config = json.loads(image.manifest.config_bytes)["config"]
    assert image_config["User"] == IMAGE_USER != "0:0"
    assert image_config["Entrypoint"] == [
        "/opt/gapforge/venv/bin/python",
        LAUNCHER_FILE,
        CONFIG_FILE,
    ]
    assert "HF_HUB_OFFLINE=1" in image_config["Env"]


def test_a_new_port_rewrites_the_config_layer_only(tmp_path: Path) -> None:
    first = _assemble(tmp_path, "a", ServeSpec(artefacts=["gguf:q8_0"]))
    second = _assemble(tmp_path, "a", ServeSpec(artefacts=["gguf:q8_0"], port=8081))
    assert second.layers.reused == ["base", "wheels"] and second.layers.written == ["serve-config"]
    assert [x.digest for x in first.layers.layers[:2]] == [
        x.digest for x in second.layers.layers[:2]
    ]
    assert first.manifest.manifest_digest != second.manifest.manifest_digest
