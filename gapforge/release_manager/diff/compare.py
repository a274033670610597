"""Compare two bundles: recipe keys, packages, model files and tensors, layers, transfer size, pretest.

`compare_bundles` reads what each bundle says (its documents, its locks, SHA256SUMS) and opens
image.tar only where it must: the model layer, to hash tensors, when a .safetensors file changed, and
B's archive headers, for the size of its config and manifest, when the image changed. It does not
verify either bundle: `gapforge verify` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gapforge.bundle import IMAGE_TAR, SIGNATURE, SUMS
from gapforge.bundle.imagetar import read_archive
from gapforge.release_manager.diff.read import BundleFacts, FileEntry, read_bundle
from gapforge.release_manager.diff.results import (
    BundleDiff,
    Figure,
    KeyedChanges,
    Layer,
    LayersDiff,
    ModelDiff,
    PackageDiff,
    PretestDiff,
    RecipeDiff,
    TensorChanges,
    Transfer,
)
from gapforge.release_manager.diff.safetensors import TensorDigest, model_file_tensors

MODEL_LAYER = "model"


def compare_maps(a: Mapping[str, Any], b: Mapping[str, Any]) -> KeyedChanges:
    """What changed from mapping `a` to mapping `b`, each part sorted by key."""
    return KeyedChanges(
        added={k: b[k] for k in sorted(b.keys() - a.keys())},
        removed={k: a[k] for k in sorted(a.keys() - b.keys())},
        changed={k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]},
    )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON as dotted keys: `train.learning_rate`, `quantize[0]`; empty containers stay leaves."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list) and value:
        flat = {}
        for number, inner in enumerate(value):
            flat.update(flatten(inner, f"{prefix}[{number}]"))
        return flat
    return {prefix: value}


# --- the sections --------------------------------------------------------------------------------------


def _pair(a: BundleFacts, b: BundleFacts, *keys: str) -> tuple[str, str]:
    def get(facts: BundleFacts) -> str:
        value: Any = facts.index
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        return "" if value in ({}, None) else str(value)

    return get(a), get(b)


def compare_recipes(a: BundleFacts, b: BundleFacts) -> RecipeDiff:
    return RecipeDiff(
        name=_pair(a, b, "name"),
        version=_pair(a, b, "version"),
        keys=compare_maps(flatten(a.recipe), flatten(b.recipe)),
    )


def compare_packages(a: BundleFacts, b: BundleFacts, kind: str) -> PackageDiff:
    old, new = (a.python, b.python) if kind == "python" else (a.debian, b.debian)
    return PackageDiff(
        kind=kind,
        source=(old.source, new.source),
        count=(len(old.versions), len(new.versions)),
        changes=compare_maps(old.versions, new.versions),
    )


def _digests(files: dict[str, FileEntry]) -> dict[str, str]:
    return {name: entry.sha256 for name, entry in files.items()}


def _layers(facts: BundleFacts) -> list[Layer]:
    return [
        Layer(str(x.get("name", "")), str(x.get("digest", "")), int(x.get("size") or 0))
        for x in facts.index.get("image", {}).get("layers", [])
        if isinstance(x, dict)
    ]


def _search_order(facts: BundleFacts) -> list[str]:
    """Layer digests to look for model files in: the layer named `model` first."""
    layers = _layers(facts)
    return [x.digest for x in layers if x.name == MODEL_LAYER] + [
        x.digest for x in layers if x.name != MODEL_LAYER
    ]


def compare_tensors(
    name: str, old: dict[str, TensorDigest] | str, new: dict[str, TensorDigest] | str
) -> TensorChanges:
    """Tensor by tensor: added, removed, changed (bytes, dtype or shape)."""
    if isinstance(old, str) or isinstance(new, str):
        reasons = [f"A: {old}"] * isinstance(old, str) + [f"B: {new}"] * isinstance(new, str)
        return TensorChanges(name, skipped="; ".join(reasons))
    changes = compare_maps(old, new)
    return TensorChanges(
        name,
        added=changes.added,
        removed=changes.removed,
        changed=changes.changed,
        same=len(old.keys() & new.keys()) - len(changes.changed),
    )


def compare_model(a: BundleFacts, b: BundleFacts) -> ModelDiff:
    """Model files by sha256; for each changed .safetensors file in the image, its tensors."""
    files = compare_maps(_digests(a.model_files), _digests(b.model_files))
    tensors = []
    wanted = [n for n in files.changed if n.endswith(".safetensors")]
    if wanted:
        old = model_file_tensors(str(a.path / IMAGE_TAR), _search_order(a), wanted)
        new = model_file_tensors(str(b.path / IMAGE_TAR), _search_order(b), wanted)
        tensors = [compare_tensors(name, old[name], new[name]) for name in wanted]
    for name in files.changed:
        if not name.endswith(".safetensors"):
            kind = name.rsplit(".", 1)[-1] if "." in name else "this kind of"
            tensors.append(
                TensorChanges(
                    name, skipped=f"not safetensors ({kind} file): compared by sha256 only"
                )
            )
    return ModelDiff(
        id=_pair(a, b, "model", "id"),
        revision=_pair(a, b, "model", "revision"),
        files=files,
        inputs=compare_maps(_digests(a.model_inputs), _digests(b.model_inputs)),
        tensors=tensors,
    )


def compare_layers(a: BundleFacts, b: BundleFacts) -> LayersDiff:
    old, new = _layers(a), _layers(b)
    old_digests, new_digests = {x.digest for x in old}, {x.digest for x in new}
    return LayersDiff(
        in_b=new,
        shared=[x for x in new if x.digest in old_digests],
        new=[x for x in new if x.digest not in old_digests],
        dropped=[x for x in old if x.digest not in new_digests],
    )


def _image_metadata_bytes(a: BundleFacts, b: BundleFacts, notes: list[str]) -> int:
    """Size of B's archive members that are not layers, read from its tar headers; 0 when the image
    is the same as A's (same manifest digest), so an unchanged archive is never opened."""
    if _pair(a, b, "image", "manifest_digest")[0] == _pair(a, b, "image", "manifest_digest")[1]:
        return 0
    archive = read_archive(b.path / IMAGE_TAR)
    if archive.problems and not archive.members:
        notes.append(
            f"{b.path / IMAGE_TAR}: {archive.problems[0]}; its config and manifest not counted"
        )
        return 0
    layers = {"blobs/sha256/" + x.digest.removeprefix("sha256:") for x in _layers(b)}
    layers |= {"blobs/sha256/" + d.removeprefix("sha256:") for d in archive.layer_digests}
    return sum(m.size for name, m in archive.members.items() if name not in layers)


def compare_transfer(a: BundleFacts, b: BundleFacts, layers: LayersDiff) -> Transfer:
    notes: list[str] = []
    metadata = _image_metadata_bytes(a, b, notes)
    if a.sums is None or b.sums is None:
        notes.append("a bundle has no readable SHA256SUMS: its other files are not counted")
        return Transfer(sum(x.size for x in layers.new), metadata, {}, [], notes)
    files = {
        name: b.sizes.get(name, 0)
        for name, digest in sorted(b.sums.items())
        if name != IMAGE_TAR and a.sums.get(name) != digest
    }
    removed = sorted(a.sums.keys() - b.sums.keys())
    if files or removed or metadata or layers.new:
        # A new SHA256SUMS (and its signature) comes with any change.
        files.update({name: b.sizes[name] for name in (SUMS, SIGNATURE) if name in b.sizes})
    return Transfer(sum(x.size for x in layers.new), metadata, files, removed, notes)


def pretest_figures(evidence: dict[str, Any]) -> dict[str, Any]:
    """The figures worth setting side by side, under stable labels, in a fixed order."""
    figures: dict[str, Any] = {}
    for key in ("verdict", "passed", "seconds"):
        if key in evidence:
            figures[key] = evidence[key]
    for step, seconds in (evidence.get("steps") or {}).items():
        figures[f"steps.{step}.seconds"] = seconds
    for gate in evidence.get("gates") or []:
        if isinstance(gate, dict):
            for key in ("passed", "value", "limit"):
                figures[f"gate[{gate.get('name')}].{key}"] = gate.get(key)
    for target, delta in sorted((evidence.get("deltas_vs_merged_pct") or {}).items()):
        figures[f"delta_vs_merged_pct[{target}]"] = delta
    for model, result in (evidence.get("models") or {}).items():
        if isinstance(result, dict):
            for key in ("loss", "perplexity", "size_bytes"):
                if key in result:
                    figures[f"model[{model}].{key}"] = result[key]
    training = evidence.get("training") or {}
    for key in (
        "global_step",
        "best_eval_loss",
        "stopped_early",
        "tokens_per_second",
        "train_seconds",
    ):
        if key in training:
            figures[f"training.{key}"] = training[key]
    return figures


def compare_pretest(a: BundleFacts, b: BundleFacts) -> PretestDiff:
    old, new = pretest_figures(a.evidence), pretest_figures(b.evidence)
    labels = [*old, *(label for label in new if label not in old)]
    return PretestDiff([Figure(label, old.get(label), new.get(label)) for label in labels])


def compare_facts(a: BundleFacts, b: BundleFacts) -> BundleDiff:
    """The diff of two bundles already read."""
    layers = compare_layers(a, b)
    transfer = compare_transfer(a, b, layers)
    return BundleDiff(
        a=a.path,
        b=b.path,
        labels=(a.label, b.label),
        recipe=compare_recipes(a, b),
        python=compare_packages(a, b, "python"),
        debian=compare_packages(a, b, "debian"),
        model=compare_model(a, b),
        layers=layers,
        transfer=transfer,
        pretest=compare_pretest(a, b),
        notes=[f"A: {n}" for n in a.notes] + [f"B: {n}" for n in b.notes] + transfer.notes,
    )


def compare_bundles(a: Path, b: Path, pinned: tuple[str | None, ...] = (None, None)) -> BundleDiff:
    """What changed from bundle folder `a` to bundle folder `b` (dist/<name>-<version>/): what they
    say about themselves. `pinned`: each side's verified SHA256SUMS digest (gapforge.release_manager.diff.read).
    BundleError when a folder is not a bundle, recipe/recipe.json is unreadable, a file changed."""
    return compare_facts(read_bundle(a, pinned[0]), read_bundle(b, pinned[1]))
