"""OCI image config, manifest and the one-file archive that `docker load` and skopeo both read.

The archive holds an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) and a docker
`manifest.json` pointing at the same blobs. Layers are uncompressed tars, so a layer's digest is also
its diff ID, and the image ID Docker reports is the digest of the config bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gapforge.oci.tar import Entry, WrittenTar, write_tar, write_tar_file

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    """A layer blob on disk, known by its digest."""

    name: str
    """What the layer holds, for people: `base`, `wheels:torch`, `model`, …"""
    digest: str
    size: int
    path: Path
    created_by: str = ""


@dataclass(frozen=True)
class ImageSpec:
    """Everything that goes into the image config apart from the layers."""

    entrypoint: Sequence[str]
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    architecture: str = "amd64"
    os: str = "linux"
    source_date_epoch: int = 0


def _timestamp(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def image_config(spec: ImageSpec, layers: Sequence[Layer]) -> dict[str, Any]:
    """The OCI image config (also what Docker reads); no timestamp but SOURCE_DATE_EPOCH."""
    created = _timestamp(spec.source_date_epoch)
    config: dict[str, Any] = {
        "Entrypoint": list(spec.entrypoint),
        "Env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
        "Labels": dict(sorted(spec.labels.items())),
    }
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.user:
        config["User"] = spec.user
    if spec.working_dir:
        config["WorkingDir"] = spec.working_dir
    return {
        "architecture": spec.architecture,
        "os": spec.os,
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [
            {"created": created, "created_by": layer.created_by or f"gapforge: {layer.name}"}
            for layer in layers
        ],
    }


@dataclass(frozen=True)
class ImageManifest:
    config_bytes: bytes
    manifest_bytes: bytes
    index_bytes: bytes
    docker_manifest_bytes: bytes

    @property
    def config_digest(self) -> str:
        """The image ID Docker reports after `docker load`."""
        return sha256_digest(self.config_bytes)

    @property
    def manifest_digest(self) -> str:
        """The image digest: what a registry and skopeo call it."""
        return sha256_digest(self.manifest_bytes)


def build_manifest(spec: ImageSpec, layers: Sequence[Layer], ref_name: str) -> ImageManifest:
    """Config, OCI manifest, OCI index and docker manifest.json for `layers`, tagged `ref_name`."""
    config_bytes = canonical_json(image_config(spec, layers))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
        "annotations": {
            k: v for k, v in sorted(spec.labels.items()) if k.startswith("org.opencontainers.")
        },
    }
    manifest_bytes = canonical_json(manifest)
    tag = ref_name.rsplit(":", 1)[1] if ":" in ref_name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": sha256_digest(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {
                    "io.containerd.image.name": ref_name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    docker_manifest = [
        {
            "Config": _blob_path(sha256_digest(config_bytes)),
            "RepoTags": [ref_name],
            "Layers": [_blob_path(layer.digest) for layer in layers],
        }
    ]
    return ImageManifest(
        config_bytes, manifest_bytes, canonical_json(index), canonical_json(docker_manifest)
    )


def _blob_path(digest: str) -> str:
    algorithm, hexdigest = digest.split(":", 1)
    return f"blobs/{algorithm}/{hexdigest}"


def archive_entries(manifest: ImageManifest, layers: Sequence[Layer]) -> list[Entry]:
    """The members of the image archive: OCI layout, docker manifest.json and every blob."""
    entries = [
        Entry("oci-layout", "file", data=canonical_json({"imageLayoutVersion": "1.0.0"})),
        Entry("index.json", "file", data=manifest.index_bytes),
        Entry("manifest.json", "file", data=manifest.docker_manifest_bytes),
        Entry("blobs", "dir", 0o755),
        Entry("blobs/sha256", "dir", 0o755),
        Entry(_blob_path(manifest.config_digest), "file", data=manifest.config_bytes),
        Entry(
            _blob_path(sha256_digest(manifest.manifest_bytes)), "file", data=manifest.manifest_bytes
        ),
    ]
    seen: set[str] = set()
    for layer in layers:
        if layer.digest in seen:  # an empty or repeated layer is stored once
            continue
        seen.add(layer.digest)
        entries.append(Entry(_blob_path(layer.digest), "file", size=layer.size, source=layer.path))
    return entries


def write_archive(
    manifest: ImageManifest,
    layers: Sequence[Layer],
    path: Path,
    mtime: int,
    progress: Callable[[int], None] | None = None,
) -> WrittenTar:
    """Write the image archive to `path` atomically."""
    return write_tar_file(archive_entries(manifest, layers), path, mtime, progress)


def write_archive_to(
    manifest: ImageManifest, layers: Sequence[Layer], out: BinaryIO, mtime: int
) -> WrittenTar:
    """Stream the image archive to an open file (for tests and pipes)."""
    return write_tar(archive_entries(manifest, layers), out, mtime)
