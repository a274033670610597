"""Read an image archive (OCI layout + docker manifest.json) without unpacking it.

Only the tar headers and the small JSON members are read here; the blobs are hashed in place, by
byte range, so a 10 GB archive costs no extra disk and every blob can be hashed on its own core.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.bundle.documents import Schema, shape_problems
from gapforge.bundle.sums import HashJob
from gapforge.names import UnsafeName, open_regular

BLOB_PREFIX = "blobs/sha256/"


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    """Where the member's data starts in the archive."""
    size: int


@dataclass
class ImageArchive:
    """What an image archive says about itself; `problems` lists what is wrong with its structure."""

    path: Path
    members: dict[str, Member] = field(default_factory=dict)
    manifest_digest: str = ""
    config_digest: str = ""
    layer_digests: list[str] = field(default_factory=list)
    repo_tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        inner = self.config.get("config") or {}
        labels = inner.get("Labels") if isinstance(inner, dict) else None
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

    def blob_jobs(self, label_prefix: str) -> list[HashJob]:
        """One hash job per blob member, labelled `<prefix>:<digest>`."""
        return [
            HashJob(
                f"{label_prefix}:sha256:{name.removeprefix(BLOB_PREFIX)}",
                self.path,
                m.offset,
                m.size,
            )
            for name, m in sorted(self.members.items())
            if name.startswith(BLOB_PREFIX)
        ]


def _read_json(archive: tarfile.TarFile, name: str) -> Any:
    info = archive.getmember(name)
    if info.size > MAX_JSON_MEMBER:
        raise ValueError(
            f"{name} is {info.size} bytes, over the {MAX_JSON_MEMBER} a JSON member may be"
        )
    member = archive.extractfile(info)
    if member is None:
        raise ValueError(f"{name} is not a regular file")
    return json.loads(member.read())


_INDEX: Schema = {"manifests": [{"digest": str}]}
_MANIFEST: Schema = {"config": {"digest": str}, "layers": [{"digest": str}]}
_CONFIG: Schema = {
    "rootfs?": {"diff_ids?": [str]},
    "config?": (dict, type(None)),
}
_DOCKER: Schema = [{"Config": str, "Layers?": [str], "RepoTags?": (list, type(None))}]
MAX_JSON_MEMBER = 16 * 1024 * 1024
"""Bytes of an index, manifest or config read into memory (real ones are a few KiB)."""


def _blob(digest: str) -> str:
    return BLOB_PREFIX + digest.removeprefix("sha256:")


def _shaped(archive: tarfile.TarFile, name: str, schema: Schema) -> Any:
    """A JSON member of the archive in `schema`'s shape (gapforge.bundle.documents), else
    ValueError naming the member and field: an archive is input from outside like any other."""
    value = _read_json(archive, name)
    problems = shape_problems(value, schema, name)
    if isinstance(schema, list) and not value:
        problems.append(f"{name}: an empty list")
    if problems:
        raise ValueError("; ".join(problems[:3]))
    return value


def read_archive(path: Path) -> ImageArchive:
    """List the archive's members and read its index, manifests and config; never raises on bad input."""
    result = ImageArchive(path)
    try:  # a regular file, never through a link, never a FIFO that waits forever (open_regular)
        with (
            os.fdopen(open_regular(path), "rb") as raw,
            tarfile.open(fileobj=raw, mode="r:") as archive,
        ):
            size = os.fstat(raw.fileno()).st_size
            for info in archive:
                if info.isfile():
                    result.members[info.name] = Member(info.name, info.offset_data, info.size)
            _read_structure(archive, result)
    except (tarfile.TarError, OSError, EOFError, UnsafeName) as exc:
        result.problems.append(f"not a readable tar archive ({exc})")
        return result
    for member in result.members.values():
        if member.offset + member.size > size:
            result.problems.append(
                f"{member.name} runs past the end of the file (truncated at {size} bytes)"
            )
    return result


def _read_structure(archive: tarfile.TarFile, result: ImageArchive) -> None:
    members = result.members
    for required in ("oci-layout", "index.json", "manifest.json"):
        if required not in members:
            result.problems.append(f"{required} is missing from the archive")
    if result.problems:
        return
    try:
        index = _shaped(archive, "index.json", _INDEX)
        result.manifest_digest = index["manifests"][0]["digest"]
        manifest = _shaped(archive, _blob(result.manifest_digest), _MANIFEST)
        result.config_digest = manifest["config"]["digest"]
        result.layer_digests = [layer["digest"] for layer in manifest["layers"]]
        result.config = _shaped(archive, _blob(result.config_digest), _CONFIG)
        docker = _shaped(archive, "manifest.json", _DOCKER)[0]
        result.repo_tags = [tag for tag in docker.get("RepoTags") or [] if isinstance(tag, str)]
    except (KeyError, IndexError, TypeError, ValueError, RecursionError, tarfile.TarError,
            OSError) as exc:  # fmt: skip
        result.problems.append(
            f"its index, manifest or config is unreadable ({type(exc).__name__}: {exc})"
        )
        return
    if docker.get("Config") != BLOB_PREFIX + result.config_digest.removeprefix("sha256:"):
        result.problems.append(
            f"manifest.json names config {docker.get('Config')}, the OCI manifest {result.config_digest}"
        )
    docker_layers = [name.removeprefix(BLOB_PREFIX) for name in docker.get("Layers", [])]
    if docker_layers != [d.removeprefix("sha256:") for d in result.layer_digests]:
        result.problems.append("manifest.json and the OCI manifest list different layers")
    diff_ids = result.config.get("rootfs", {}).get("diff_ids", [])
    if diff_ids != result.layer_digests:
        result.problems.append("the config's rootfs.diff_ids differ from the manifest's layers")
    for digest in {result.config_digest, *result.layer_digests}:
        if BLOB_PREFIX + digest.removeprefix("sha256:") not in result.members:
            result.problems.append(f"blob {digest} is missing from the archive")
