"""Stage assemble: the layers and the image archive, written from the cache alone (no network)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from gapforge import __version__
from gapforge.engine import PROFILE_LABEL
from gapforge.errors import BuildError
from gapforge.fetch.rootfs import IMAGE_USER
from gapforge.fetch.triton import plan_launcher
from gapforge.image import (
    WrittenLayers,
    image_env,
    plan_base,
    plan_model,
    plan_recipe,
    plan_runtime,
    plan_wheel_layers,
    write_layers,
)
from gapforge.names import UnsafeName, links_out_of
from gapforge.oci.image import ImageManifest, ImageSpec, build_manifest, write_archive
from gapforge.profile import FEATURES_LABEL, profile_env, profile_labels
from gapforge.progress import byte_progress, note, step
from gapforge.recipe import LoadedRecipe, recipe_json
from gapforge.stages.fetch import Inputs
from gapforge.stages.locks import Locks
from gapforge.stages.plan import BuildPlan


@dataclass(frozen=True)
class BuiltImage:
    tar_path: Path
    manifest: ImageManifest
    layers: WrittenLayers
    report_path: Path
    archive_sha256: str
    """Hex sha256 of the archive, taken as it was written (so never read back to hash it)."""


def recipe_files(plan: BuildPlan, locks: Locks) -> dict[str, bytes]:
    loaded = plan.loaded
    normalized = json.dumps(recipe_json(loaded), indent=2, sort_keys=True).encode() + b"\n"
    return {
        "recipe.yaml": loaded.path.read_bytes(),
        "recipe.json": normalized,
        loaded.recipe.data.sample: loaded.sample_data.read_bytes(),
        **lm_eval_task_files(loaded),
        f"locks/{locks.python.path.name}": locks.python.path.read_bytes(),
        f"locks/{locks.debian_path.name}": locks.debian_path.read_bytes(),
        f"locks/models/{locks.model.path.name}": locks.model.path.read_bytes(),
        **{
            f"locks/models/{lock.path.name}": lock.path.read_bytes()
            for _, lock in locks.extra_models
        },
    }


def lm_eval_task_files(loaded: LoadedRecipe) -> dict[str, bytes]:
    """The recipe's lm-eval task folder (YAMLs, JSONL, helper scripts), at the same path relative to
    recipe.json as to the recipe YAML; the recipe check keeps it inside the recipe's folder."""
    spec = loaded.recipe.evaluate.lm_eval
    if spec is None:
        return {}
    folder = (loaded.directory / spec.tasks).resolve()
    for link, target in links_out_of(folder, loaded.directory):  # the recipe check names these
        raise UnsafeName(
            f"{link}: a symbolic link out of the recipe's folder (to {target}): the lm-eval task "
            "folder is shipped whole and no file of this machine goes into the image through a "
            "link; copy the file into the folder, run 'gapforge validate', and build again"
        )
    return {
        path.relative_to(loaded.directory).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def wheel_groups(locks: Locks) -> dict[str, str]:
    """Each wheel of the image → its feature group, which names its layer."""
    groups = locks.features.groups.items()
    return {name: group for group, names in groups for name in names}


def image_labels(plan: BuildPlan, locks: Locks, files: dict[str, bytes]) -> dict[str, str]:
    recipe = plan.loaded.recipe
    return {
        "org.opencontainers.image.title": recipe.name,
        "org.opencontainers.image.version": recipe.version,
        "org.opencontainers.image.description": plan.description,
        "org.opencontainers.image.created": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(plan.profile.source_date_epoch)
        ),
        "org.opencontainers.image.vendor": "gapforge",
        "io.gapforge.builder.version": __version__,
        PROFILE_LABEL: plan.profile.name,
        "io.gapforge.recipe.sha256": hashlib.sha256(files["recipe.json"]).hexdigest(),
        "io.gapforge.lock.python.sha256": locks.python.sha256,
        "io.gapforge.lock.debian.sha256": locks.debian_sha256,
        "io.gapforge.lock.model.sha256": locks.model.sha256,
        "io.gapforge.model.id": recipe.model.id,
        FEATURES_LABEL: locks.features.label,
    }


def features_record(locks: Locks) -> bytes:
    """/opt/gapforge/features.json: the feature sets, the fields that asked for them, the wheels."""
    record = {"profile_lock": locks.python.path.name, **locks.features.record(locks.python)}
    return json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"


MARGIN = 64 * 10**6


def ensure_free(folder: Path, need: int, what: str, option: str) -> None:
    """Stop before writing `need` bytes into `folder` if its filesystem cannot hold them."""
    free = shutil.disk_usage(folder).free
    if free < need + MARGIN:
        raise BuildError(
            f"{what} needs {need / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free on the "
            f"filesystem of {folder}. Nothing was written. Free space ('gapforge cache prune "
            f"--older-than 30 --images' removes what no build used lately) or point {option} at a "
            "bigger disk, and build again."
        )


def assemble(plan: BuildPlan, locks: Locks, inputs: Inputs) -> BuiltImage:
    """Write the layers and the image archive from the cache alone (no network)."""
    step("assembling the image (deterministic layers, no network)")
    profile = plan.profile
    files = recipe_files(plan, locks)
    plans = [
        plan_base(profile, inputs.rootfs_tar, locks.debian_sha256),
        *plan_wheel_layers(profile, inputs.wheels, wheel_groups(locks)),
        *([plan_launcher(inputs.triton_launcher)] if inputs.triton_launcher else []),
        plan_model(plan.loaded.recipe.model.id, inputs.model_files),
        *(
            plan_model(plan.loaded.recipe.models[name].id, files, name)
            for name, files in sorted(inputs.extra_models.items())
        ),
        plan_runtime(inputs.runtime_wheel, inputs.llama_sdist, profile),
        plan_recipe(files, features_record(locks)),
    ]
    written = write_layers(plan.cache, plans, profile.source_date_epoch)
    spec = ImageSpec(
        entrypoint=["/opt/gapforge/venv/bin/gapforge-runtime"],
        cmd=["info"],
        env={**image_env(profile), **profile_env(profile, locks.python)},
        user=IMAGE_USER,
        working_dir="/home/gapforge",
        labels={**image_labels(plan, locks, files), **profile_labels(profile, locks.python)},
        architecture=profile.architecture,
        source_date_epoch=profile.source_date_epoch,
    )
    manifest = build_manifest(spec, written.layers, plan.ref)
    out = plan.options.out_dir / plan.name
    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / "image.tar"
    total = sum(layer.size for layer in written.layers)
    ensure_free(out, total, f"the image archive {tar_path}", "--out")
    with byte_progress("image archive", total) as advance:
        archive = write_archive(
            manifest, written.layers, tar_path, profile.source_date_epoch, advance
        )
    note(f"image archive {tar_path} ({archive.size / 1e6:.1f} MB, {archive.digest[:19]})")
    return BuiltImage(
        tar_path, manifest, written, out / "build.json", archive.digest.removeprefix("sha256:")
    )
