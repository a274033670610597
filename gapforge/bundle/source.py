"""What the bundle is made from: plain data the build hands over, so the bundle writer, the SBOM,
the provenance and the runbook never reach into the build's internals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One record of a Debian package for the rootfs, the lock and the bundle (re-exported here).
from gapforge.fetch.rootfs import DebianPackage as DebianPackage


@dataclass(frozen=True)
class FileDigest:
    """A file known by name, sha256 and size."""

    name: str
    sha256: str
    size: int = 0


@dataclass(frozen=True)
class PythonPackage:
    name: str
    version: str
    file: FileDigest
    """The wheel installed into the image (for an sdist, the wheel built from it)."""
    sdist: FileDigest | None = None
    """The locked sdist the wheel was built from, if any."""
    feature: str = ""
    """The feature group that put it into the image (`base`, `preference`, ...; gapforge.lock.features)."""


@dataclass(frozen=True)
class ModelInfo:
    id: str
    source: dict[str, Any]
    """The recipe's model source: type, repo + revision, package + file, or path."""
    files: tuple[FileDigest, ...]
    """The files in the image's model folder."""
    locked: tuple[FileDigest, ...] = ()
    """The source files the model lock pins (for a GGUF source: the wheel and the GGUF)."""

    @property
    def revision(self) -> str:
        source = self.source
        if source.get("type") == "hf":
            return str(source.get("revision", ""))
        if source.get("type") == "gguf":
            return str(source.get("package", ""))
        return "local"


@dataclass(frozen=True)
class Layer:
    """One image layer as the bundle records it (bundle.json, provenance): what it holds, its digest
    and size. Not gapforge.oci.image.Layer, a blob in the build cache to be written into an archive
    (its path and its config history line): the bundle never sees the build's cache."""

    name: str
    digest: str
    size: int


@dataclass(frozen=True)
class ImageInfo:
    ref: str
    tar: Path
    manifest_digest: str
    config_digest: str
    layers: tuple[Layer, ...]
    labels: dict[str, str]
    profile: str
    tar_sha256: str = ""


@dataclass(frozen=True)
class BundleSource:
    """Everything one bundle is written from."""

    name: str
    version: str
    description: str
    image: ImageInfo
    recipe_path: str
    """The recipe as the build engineer named it (for provenance)."""
    recipe_files: dict[str, bytes]
    """recipe.yaml, recipe.json, the sample data and the locks, by their path under recipe/."""
    locks: dict[str, str]
    """Lockfile name → sha256."""
    python_packages: tuple[PythonPackage, ...]
    debian_suite: str
    debian_packages: tuple[DebianPackage, ...]
    model: ModelInfo
    runtime: PythonPackage
    llama_cpp: FileDigest
    """The locked llama-cpp-python sdist that llama.cpp's conversion scripts come from."""
    builder_version: str
    source_date_epoch: int
    pretest_dir: Path
    """evidence.json, log.txt, report.md written by the pretest."""
    operator_wheels: tuple[Path, ...]
    git: dict[str, str] = field(default_factory=dict)
    extra_models: tuple[tuple[str, ModelInfo], ...] = ()
    """The recipe's `models:` entries (a judge, a teacher) by name; their files are named
    `models/<name>/<path>`, as they lie under /opt/gapforge."""
    """commit and dirty state of the builder's checkout, when it is one."""
    started: str = ""
    finished: str = ""
    debian_snapshot: str = ""
    """The archive state the Debian base lock was resolved at."""
    debian_refreshes: tuple[dict[str, Any], ...] = ()
    """Debian locks this build rewrote because the archive no longer had their .debs."""

    @property
    def bundle_name(self) -> str:
        return f"{self.name}-{self.version}"
