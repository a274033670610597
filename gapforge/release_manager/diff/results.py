"""What `gapforge diff` found, section by section: the plain records compare.py fills and render.py
prints. Apart from the comparing so that a renderer (text, Markdown, JSON) needs none of its reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.release_manager.diff.safetensors import TensorDigest


@dataclass(frozen=True)
class KeyedChanges:
    """Keys only in B (`added`), only in A (`removed`), and in both with different values."""

    added: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed)


@dataclass(frozen=True)
class RecipeDiff:
    name: tuple[str, str]
    version: tuple[str, str]
    keys: KeyedChanges
    """recipe/recipe.json flattened to dotted keys."""

    @property
    def unchanged(self) -> bool:
        return (
            self.keys.unchanged
            and self.name[0] == self.name[1]
            and self.version[0] == self.version[1]
        )


@dataclass(frozen=True)
class PackageDiff:
    kind: str
    """`python` or `debian`."""
    source: tuple[str, str]
    """Where each bundle's list was read from (the SBOM or a lock in recipe/locks/)."""
    count: tuple[int, int]
    changes: KeyedChanges
    """Name → version."""

    @property
    def unchanged(self) -> bool:
        return self.changes.unchanged


@dataclass(frozen=True)
class TensorChanges:
    """The tensors of one changed .safetensors model file, or why they were not compared."""

    file: str
    added: dict[str, TensorDigest] = field(default_factory=dict)
    removed: dict[str, TensorDigest] = field(default_factory=dict)
    changed: dict[str, tuple[TensorDigest, TensorDigest]] = field(default_factory=dict)
    same: int = 0
    """How many tensors are byte-identical in both."""
    skipped: str = ""


@dataclass(frozen=True)
class ModelDiff:
    id: tuple[str, str]
    revision: tuple[str, str]
    files: KeyedChanges
    """The model folder's files in the image, name → sha256 (from the SBOM)."""
    inputs: KeyedChanges
    """The locked files the model was made from, path → sha256 (recipe/locks/models/)."""
    tensors: list[TensorChanges]

    @property
    def unchanged(self) -> bool:
        return (
            self.files.unchanged
            and self.inputs.unchanged
            and self.id[0] == self.id[1]
            and self.revision[0] == self.revision[1]
        )


@dataclass(frozen=True)
class Layer:
    name: str
    digest: str
    size: int


@dataclass(frozen=True)
class LayersDiff:
    in_b: list[Layer]
    """B's layers, in its manifest's order."""
    shared: list[Layer]
    """B's layers that A has too (same digest): they need not cross the gap again."""
    new: list[Layer]
    """B's layers that A lacks."""
    dropped: list[Layer]
    """A's layers that B no longer has."""

    @property
    def unchanged(self) -> bool:
        return not (self.new or self.dropped)


@dataclass(frozen=True)
class Transfer:
    """The bytes to carry across the gap to deliver B to a site that holds A."""

    layer_bytes: int
    image_metadata_bytes: int
    """B's image config, manifest and index (the archive's members that are not layers)."""
    files: dict[str, int]
    """B's other files that A lacks or holds with different bytes → size."""
    removed_files: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.layer_bytes + self.image_metadata_bytes + sum(self.files.values())


@dataclass(frozen=True)
class Figure:
    """One pretest or evaluation figure in A and in B (None where a bundle does not have it)."""

    label: str
    a: Any
    b: Any

    @property
    def same(self) -> bool:
        return bool(self.a == self.b)


@dataclass(frozen=True)
class PretestDiff:
    figures: list[Figure]

    @property
    def unchanged(self) -> bool:
        return all(f.same for f in self.figures)


@dataclass(frozen=True)
class BundleDiff:
    """Everything `gapforge diff A B` reports; render it with gapforge.release_manager.diff.render."""

    a: Path
    b: Path
    labels: tuple[str, str]
    recipe: RecipeDiff
    python: PackageDiff
    debian: PackageDiff
    model: ModelDiff
    layers: LayersDiff
    transfer: Transfer
    pretest: PretestDiff
    notes: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return all(
            s.unchanged
            for s in (self.recipe, self.python, self.debian, self.model, self.layers, self.pretest)
        ) and not (self.transfer.files or self.transfer.removed_files)
