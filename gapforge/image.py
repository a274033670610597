"""Plan the layers of one recipe's image and write them, each cached by the digest of its inputs.

Layers, bottom changing least: the Debian base (with the venv skeleton and the non-root user), the
big wheels one layer each, the other wheels, the model, the runtime with llama.cpp's conversion
scripts, and the recipe with its sample data and locks. A change to one layer's inputs rewrites that
layer only; every layer below keeps its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from gapforge_runtime.features import BASE
from gapforge_runtime.image_contract import FEATURES_ENV, FEATURES_FILE
from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

from gapforge import __version__
from gapforge.cache import Cache
from gapforge.fetch.model import ModelFile
from gapforge.fetch.rootfs import HOME, USER_ID, rootfs_entries
from gapforge.oci.image import Layer
from gapforge.oci.tar import Entry, entries_from_tree, with_parents, write_tar_file
from gapforge.profile import Profile
from gapforge.progress import byte_progress_group, note

PREFIX = "opt/gapforge"
VENV = f"{PREFIX}/venv"
MODEL_DIR = f"{PREFIX}/model"
MODELS_DIR = f"{PREFIX}/models"
"""The recipe's `models:` entries (a judge, a teacher), each in a folder named after its key."""
RECIPE_DIR = f"{PREFIX}/recipe"
LLAMA_CPP_DIR = f"{PREFIX}/llama.cpp"
LAYER_FORMAT = "v1"  # bump when the way a layer is written changes: every cached layer is rewritten

LLAMA_CPP_SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/", "conversion/")


@dataclass
class LayerPlan:
    """One layer to write: a name, the digest of its inputs, and how to list its entries."""

    name: str
    key_parts: list[str]
    entries: Callable[[Path], list[Entry]]
    """Given a scratch directory, the layer's entries."""
    created_by: str = ""

    @property
    def key(self) -> str:
        blob = json.dumps([self.name, LAYER_FORMAT, *self.key_parts])
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class WrittenLayers:
    layers: list[Layer] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def site_packages(profile: Profile) -> str:
    return f"{VENV}/lib/python{profile.python}/site-packages"


# --- layer contents ---------------------------------------------------------------------------------


def venv_skeleton(profile: Profile) -> list[Entry]:
    """The image's venv around Debian's python3: wheels are installed into it, never into /usr."""
    cfg = f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {profile.python}\n"
    return [
        Entry(f"{VENV}/pyvenv.cfg", "file", data=cfg.encode()),
        Entry(f"{VENV}/bin/python", "symlink", 0o777, linkname="/usr/bin/python3"),
        Entry(f"{VENV}/bin/python3", "symlink", 0o777, linkname="python"),
        Entry(f"{VENV}/lib/python{profile.python}/site-packages", "dir", 0o755),
        Entry("outputs", "dir", 0o777, uid=USER_ID, gid=USER_ID),
    ]


def install_wheels(wheels: list[Path], profile: Profile, stage: Path) -> list[Entry]:
    """Install wheels into a staging copy of the image's venv; no .pyc, shebangs to the image's python."""
    root = stage / "root"
    venv = root / VENV
    scheme = {
        "purelib": str(root / site_packages(profile)),
        "platlib": str(root / site_packages(profile)),
        "headers": str(venv / "include" / "site"),
        "scripts": str(venv / "bin"),
        "data": str(venv),
    }
    destination = SchemeDictionaryDestination(
        scheme,
        interpreter=f"/{VENV}/bin/python",
        script_kind="posix",
        bytecode_optimization_levels=[],
    )
    for wheel in sorted(wheels, key=lambda p: p.name):
        with WheelFile.open(wheel) as source:
            install(source, destination, additional_metadata={"INSTALLER": b"gapforge\n"})
    return entries_from_tree(root)


def wheel_installed_size(wheel: Path) -> int:
    with zipfile.ZipFile(wheel) as archive:
        return sum(info.file_size for info in archive.infolist())


def extract_llama_cpp(sdist: Path, out: Path) -> Path:
    """Extract llama.cpp's conversion scripts from the locked llama-cpp-python sdist into `out`."""
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            rel = parts[1].removeprefix("vendor/llama.cpp/")
            if any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in LLAMA_CPP_SCRIPTS):
                member.name = rel
                members.append(member)
        archive.extractall(out, members=members, filter="data")
    return out


def llama_cpp_entries(sdist: Path, stage: Path) -> list[Entry]:
    """llama.cpp's conversion scripts, taken from the locked llama-cpp-python sdist."""
    return entries_from_tree(extract_llama_cpp(sdist, stage / "llama"), LLAMA_CPP_DIR)


# --- planning -----------------------------------------------------------------------------------------


def plan_base(profile: Profile, rootfs_tar: Path, debian_lock_sha: str) -> LayerPlan:
    return LayerPlan(
        "base",
        [debian_lock_sha, json.dumps(profile.raw.get("debian", {}), sort_keys=True), __version__],
        lambda _stage: rootfs_entries(rootfs_tar) + venv_skeleton(profile),
        created_by=f"gapforge: Debian {profile.debian.suite} {profile.debian.variant} (mmdebstrap)",
    )


def plan_wheel_layers(
    profile: Profile, wheels: dict[str, Path], groups: dict[str, str] | None = None
) -> list[LayerPlan]:
    """Big wheels one layer each (they change rarely and are huge), the rest by feature group.

    `groups` maps a wheel to its group (gapforge.lock.features): `base` (layer `wheels`) or the
    features whose closure holds it (layer `wheels[distill+preference]`). A layer's key is only its
    own wheels, so every image that holds a group shares its layer, whatever else it holds."""
    big: list[tuple[str, Path]] = []
    rest: dict[str, list[Path]] = {BASE: []}
    for name, path in sorted(wheels.items()):
        if wheel_installed_size(path) >= profile.own_layer_min_bytes:
            big.append((name, path))
        else:
            rest.setdefault((groups or {}).get(name, BASE), []).append(path)
    plans = []
    for name, path in big:
        plans.append(LayerPlan(
            f"wheels:{name}", [path.parent.name, profile.python],
            lambda stage, path=path: install_wheels([path], profile, stage),  # type: ignore[misc]
            created_by=f"gapforge: install {path.name}",
        ))  # fmt: skip
    for group, paths in sorted(rest.items(), key=lambda item: (item[0] != BASE, item[0])):
        if not paths and group != BASE:
            continue
        plans.append(LayerPlan(
            "wheels" if group == BASE else f"wheels[{group}]",
            [*(p.parent.name for p in paths), profile.python],
            lambda stage, paths=paths: install_wheels(paths, profile, stage),  # type: ignore[misc]
            created_by=f"gapforge: install {len(paths)} locked wheels"
            + ("" if group == BASE else f" of the feature(s) {group}"),
        ))  # fmt: skip
    return plans


def plan_model(model_id: str, files: list[ModelFile], name: str | None = None) -> LayerPlan:
    """The base model's layer, or (with `name`) that of an entry of the recipe's `models:`, at
    MODELS_DIR/<name>/: a layer of its own, shared by every image that ships the same files."""
    folder = MODEL_DIR if name is None else f"{MODELS_DIR}/{name}"

    def entries(_stage: Path) -> list[Entry]:
        return with_parents(
            Entry(f"{folder}/{f.path}", "file", 0o644, size=f.size, source=f.blob) for f in files
        )

    layer = "model" if name is None else f"model-{name}"
    what = f"model {model_id}" if name is None else f"{name} model {model_id}"
    parts = [
        model_id,
        *([] if name is None else [folder]),
        *(f"{f.path}={f.sha256}" for f in files),
    ]
    return LayerPlan(layer, parts, entries,
                     created_by=f"gapforge: {what}")  # fmt: skip


def plan_runtime(runtime_wheel: Path, llama_sdist: Path, profile: Profile) -> LayerPlan:
    def entries(stage: Path) -> list[Entry]:
        return install_wheels([runtime_wheel], profile, stage / "rt") + llama_cpp_entries(
            llama_sdist, stage
        )

    return LayerPlan("runtime", [runtime_wheel.parent.name, llama_sdist.parent.name, profile.python], entries,
                     created_by="gapforge: runtime and llama.cpp conversion scripts")  # fmt: skip


def plan_recipe(files: dict[str, bytes], features: bytes) -> LayerPlan:
    """The recipe, its normalized JSON, its sample data and its locks, and the image's feature
    record (FEATURES_FILE, derived from the recipe): tiny, changes most."""
    parts = [f"{k}={hashlib.sha256(v).hexdigest()}" for k, v in sorted(files.items())]
    parts.append(f"{FEATURES_FILE}={hashlib.sha256(features).hexdigest()}")

    def entries(_stage: Path) -> list[Entry]:
        return with_parents(
            [
                *(Entry(f"{RECIPE_DIR}/{k}", "file", 0o644, data=v) for k, v in files.items()),
                Entry(FEATURES_FILE.lstrip("/"), "file", 0o644, data=features),
            ]
        )

    return LayerPlan("recipe", parts, entries, created_by="gapforge: recipe, sample data and locks")


# --- writing --------------------------------------------------------------------------------------------


def _cached_layer(cache: Cache, plan: LayerPlan) -> Layer | None:
    """The layer a build with the same inputs wrote, if its blob is still sound (see Cache)."""
    known = cache.index_get("layers", plan.key, required=("digest",))
    if (
        known is None
        or not isinstance(known.get("size"), int)
        or not cache.has_blob(known["digest"], verify=True)
    ):
        return None
    path = cache.blob_path(known["digest"])
    return Layer(plan.name, known["digest"], known["size"], path, plan.created_by)


def _write_layer(
    cache: Cache,
    plan: LayerPlan,
    mtime: int,
    add_bar: Callable[[str, int | None], Callable[[int], None]],
) -> Layer:
    """List the layer's entries in a scratch folder, write its tar (hashed as it is written) and
    move it into the cache under that digest, with no second read."""
    with cache.tempdir("layer-") as stage:
        entries = plan.entries(stage)
        total = sum(e.size if e.data is None else len(e.data) for e in entries if e.kind == "file")
        advance = add_bar(f"layer {plan.name}", total)
        written = write_tar_file(entries, stage / "layer.tar", mtime, progress=advance)
        digest = cache.put_blob(
            stage / "layer.tar", expected=written.digest, move=True, hashed=True
        )
    cache.index_put("layers", plan.key, {"digest": digest, "size": written.size, "name": plan.name})
    note(f"layer {plan.name:<22} written  {digest[:19]}  {written.size / 1e6:9.1f} MB")
    return Layer(plan.name, digest, written.size, cache.blob_path(digest), plan.created_by)


def write_layers(
    cache: Cache, plans: list[LayerPlan], mtime: int, workers: int | None = None
) -> WrittenLayers:
    """Write each planned layer unless a layer with the same inputs is already in the cache.

    The layers to write are independent: they are written at once, `workers` at a time (default:
    one per core); copying and hashing release the GIL. The result lists them in plan order."""
    layers: dict[int, Layer] = {}
    missing: list[tuple[int, LayerPlan]] = []
    for number, plan in enumerate(plans):
        cached = _cached_layer(cache, plan)
        if cached is None:
            missing.append((number, plan))
            continue
        layers[number] = cached
        note(f"layer {plan.name:<22} cached   {cached.digest[:19]}  {cached.size / 1e6:9.1f} MB")
    if missing:
        workers = max(1, min(len(missing), workers or os.cpu_count() or 1))
        with byte_progress_group() as add_bar, ThreadPoolExecutor(workers) as pool:
            futures = {
                pool.submit(_write_layer, cache, plan, mtime, add_bar): number
                for number, plan in missing
            }
            for future in as_completed(futures):
                layers[futures[future]] = future.result()
    written = {number for number, _ in missing}
    return WrittenLayers(
        layers=[layers[number] for number in range(len(plans))],
        reused=[plan.name for number, plan in enumerate(plans) if number not in written],
        written=[plan.name for number, plan in enumerate(plans) if number in written],
    )


def image_env(profile: Profile) -> dict[str, str]:
    return {
        "PATH": f"/{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        # Every library's telemetry off, whatever the runtime imports (MLflow sends it by default).
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "WANDB_MODE": "disabled",
        "HF_HOME": "/tmp/hf",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "HOME": HOME,
        "GAPFORGE_RECIPE": f"/{RECIPE_DIR}/recipe.json",
        "GAPFORGE_MODEL_DIR": f"/{MODEL_DIR}",
        "GAPFORGE_MODELS_DIR": f"/{MODELS_DIR}",
        "GAPFORGE_LLAMA_CPP": f"/{LLAMA_CPP_DIR}",
        "GAPFORGE_OUT": "/outputs",
        "GAPFORGE_PROFILE": profile.name,
        FEATURES_ENV: FEATURES_FILE,
    }
