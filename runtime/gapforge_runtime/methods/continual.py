"""Continual learning: a run that starts from an earlier run's output folder (`--parent OUT_OLD`).

The parent is the output folder the operator kept from an earlier run of a sealed image: its
manifest.json names the sha256 of every output, and the files used here (the merged model, the
adapter, the train and test splits) are checked against it before anything loads. The new run
starts from the parent's merged model (base + its adapter, safetensors), trains a new adapter on
the new data mixed with a share of the parent's training split (`data.replay_ratio`), and is
scored on both test sets: loss on the parent's may rise by at most `gates.max_forgetting_pct`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import describe_path

USED_OUTPUTS = {"merged": "merged", "adapter": "adapter", "split:train": "data/train.jsonl",
                "split:test": "data/test.jsonl"}  # fmt: skip
"""The parent's outputs a continual run reads: manifest key → path in the parent's folder."""


@dataclass(frozen=True)
class Parent:
    """An earlier run's output folder, checked against its own manifest."""

    root: Path
    manifest_sha256: str
    recipe_name: str
    recipe_version: str
    recipe_sha256: str
    data_format: str
    base_sha256: str
    """The digest of the base model the parent trained on (its manifest's inputs.model)."""
    image: dict[str, str]
    """The parent's image ID and bundle SHA256SUMS digest, where `gapforge run` recorded them."""
    digests: dict[str, str]
    """sha256 of each output in USED_OUTPUTS, as the manifest records it and the files match."""

    @property
    def merged(self) -> Path:
        """The parent's merged model: the starting model of the continual run."""
        return self.root / "merged"

    @property
    def train_split(self) -> Path:
        return self.root / "data" / "train.jsonl"

    @property
    def test_split(self) -> Path:
        return self.root / "data" / "test.jsonl"

    def lineage(self) -> dict[str, Any]:
        """What the manifest records of the parent."""
        return {
            "path": str(self.root),
            "manifest_sha256": self.manifest_sha256,
            "recipe": {"name": self.recipe_name, "version": self.recipe_version,
                       "sha256": self.recipe_sha256},
            "data_format": self.data_format,
            "base_sha256": self.base_sha256,
            "image": self.image,
            "adapter_sha256": self.digests["adapter"],
            "merged_sha256": self.digests["merged"],
            "train_split_sha256": self.digests["split:train"],
            "test_split_sha256": self.digests["split:test"],
        }  # fmt: skip


def load_parent(folder: Path) -> Parent:
    """Read and check `--parent`: its manifest, and every output used against the manifest."""
    manifest_file = folder / "manifest.json"
    fix = (
        "Pass the output folder of an earlier, finished run (the --out of its `gapforge-runtime "
        "run`), unchanged since it was written."
    )
    if not manifest_file.is_file():
        raise RuntimeFailure(f"--parent {folder}: no manifest.json there. {fix}")
    raw = manifest_file.read_bytes()
    try:
        manifest = json.loads(raw)
        outputs = manifest["outputs"]
        recipe = manifest["recipe"]
        # A continual parent's own `model` is its parent's merged model; its base is recorded apart.
        inputs = manifest["inputs"]
        base = inputs.get("base_model", inputs["model"])["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RuntimeFailure(
            f"--parent {folder}: manifest.json is not a run manifest ({exc}). {fix}"
        ) from None
    problems = []
    digests = {}
    for key, relative in USED_OUTPUTS.items():
        path = folder / relative
        recorded = (outputs.get(key) or {}).get("sha256")
        if recorded is None or not path.exists():
            problems.append(
                f"{relative}: missing (the parent run must have finished train and merge)"
            )
            continue
        found = describe_path(path)["sha256"]
        if found != recorded:
            problems.append(f"{relative}: sha256 {found} differs from the manifest's {recorded}")
        digests[key] = recorded
    weights = [p.name for p in (folder / "merged").glob("*") if p.suffix in (".bin", ".pt", ".pth")]
    if weights:
        problems.append(f"merged/: pickle weights {weights}: only safetensors are loaded")
    if problems:
        raise RuntimeFailure(
            f"--parent {folder}: the parent run's outputs do not match its manifest. {fix}",
            problems,
        )
    return Parent(
        root=folder,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        recipe_name=str(recipe.get("name")),
        recipe_version=str(recipe.get("version")),
        recipe_sha256=str(manifest.get("recipe_sha256")),
        data_format=str(recipe.get("data", {}).get("format")),
        base_sha256=str(base),
        image={str(k): str(v) for k, v in (manifest.get("image") or {}).items()},
        digests=digests,
    )


def check_same_base(parent: Parent, base_sha256: str, base_dir: Path) -> None:
    """The parent must have been trained on this image's base model."""
    if parent.base_sha256 != base_sha256:
        raise RuntimeFailure(
            f"--parent {parent.root}: it was trained on a base model with sha256 "
            f"{parent.base_sha256}, this run's base {base_dir} has {base_sha256}. Continue from a "
            "run of an image with the same base model."
        )


def check_replay(parent: Parent | None, replay_ratio: float, data_format: str) -> None:
    """Replay needs a parent, and the parent's data in this recipe's format."""
    if replay_ratio <= 0:
        return
    if parent is None:
        raise RuntimeFailure(
            f"data.replay_ratio is {replay_ratio}, but no --parent was given: replay mixes in the "
            "parent run's training data. Pass --parent OUT_OLD, or set data.replay_ratio: 0."
        )
    if parent.data_format != data_format:
        raise RuntimeFailure(
            f"data.replay_ratio is {replay_ratio}, but the parent {parent.root} trained on "
            f"'{parent.data_format}' data and this recipe on '{data_format}': replay needs one "
            "format. Set data.replay_ratio: 0 (the old test set is still scored)."
        )


def replay_count(new: int, ratio: float, available: int) -> int:
    """How many parent examples make `ratio` of the final training set (at most `available`)."""
    if ratio <= 0 or new == 0:
        return 0
    return min(available, round(ratio * new / (1 - ratio)))


def replay_records(parent: Parent, new: int, ratio: float, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of the parent's training split, `ratio` of the final training set."""
    from gapforge_runtime.data.reading import (
        read_split_file,  # split at \n only, like every data reader
    )

    records = read_split_file(parent.train_split)
    count = replay_count(new, ratio, len(records))
    return random.Random(seed).sample(records, count)


def forgetting(old_start: float, old_trained: float) -> float:
    """How much the loss on the parent's test set rose, in % of the starting model's."""
    return (old_trained - old_start) / old_start * 100 if old_start else 0.0
