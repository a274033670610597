"""The llama.cpp serving image: the training image's Debian base layer (the same key, so one blob
serves both), a layer of the serving lock's wheels, and a small config layer with the server's
settings and its entrypoint script. Deterministic: the same lock, base and `serve:` section give
the same digest. The model is not in it yet: it is mounted read-only at MODELS_MOUNT at run time.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from gapforge_runtime.image_contract import HOME, IMAGE_USER, PREFIX
from gapforge_runtime.recipe_serve import ServeSpec

from gapforge import __version__
from gapforge.cache import Cache
from gapforge.engine import PROFILE_LABEL
from gapforge.image import (
    VENV,
    LayerPlan,
    WrittenLayers,
    plan_base,
    plan_wheel_layers,
    write_layers,
)
from gapforge.lock.python import PythonLock
from gapforge.oci.image import ImageManifest, ImageSpec, build_manifest, write_archive
from gapforge.oci.tar import Entry, with_parents
from gapforge.profile import REPO_ROOT, Profile, profile_env, profile_labels
from gapforge.progress import byte_progress, note, step

SERVE_DIR = f"{PREFIX}/serve"
CONFIG_FILE = f"{SERVE_DIR}/config.json"
LAUNCHER_FILE = f"{SERVE_DIR}/serve_llama.py"
LAUNCHER_SOURCE = REPO_ROOT / "runtime" / "gapforge_runtime" / "serve_llama.py"
"""The entrypoint script: llama_cpp.server's app plus `/health`; copied as a file (see its docstring)."""
MODELS_MOUNT = "/models"
CONTEXT = 2048
ENGINE_LABEL = "io.gapforge.serve.engine"


def model_path(artefact: str) -> str:
    """Where the GGUF of `artefact` is mounted in the container: /models/gguf-q4_k_m.gguf."""
    return f"{MODELS_MOUNT}/{artefact.replace(':', '-')}.gguf"


def server_config(serve: ServeSpec) -> bytes:
    """llama_cpp.server's config file: every served artefact by its name as the model alias; the
    first is loaded at start, the others when a request names them."""
    models = [
        {"model": model_path(a), "model_alias": a, "n_ctx": CONTEXT, "verbose": False}
        for a in serve.artefacts
    ]
    config = {"host": "0.0.0.0", "port": serve.port, "models": models}
    return json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"


def plan_config(config: bytes, launcher: bytes) -> LayerPlan:
    parts = [hashlib.sha256(config).hexdigest(), hashlib.sha256(launcher).hexdigest()]

    def entries(_stage: Path) -> list[Entry]:
        return with_parents(
            [
                Entry(CONFIG_FILE.lstrip("/"), "file", 0o644, data=config),
                Entry(LAUNCHER_FILE.lstrip("/"), "file", 0o644, data=launcher),
            ]
        )

    return LayerPlan("serve-config", parts, entries, created_by="gapforge: llama.cpp server config")


def plan_serving(
    profile: Profile, rootfs_tar: Path, debian_lock_sha: str, wheels: dict[str, Path], config: bytes
) -> list[LayerPlan]:
    """Base (shared with the training image), the serving wheels, the config layer."""
    return [
        plan_base(profile, rootfs_tar, debian_lock_sha),
        *plan_wheel_layers(profile, wheels),
        plan_config(config, LAUNCHER_SOURCE.read_bytes()),
    ]


def serving_spec(profile: Profile, lock: PythonLock, name: str, version: str) -> ImageSpec:
    """Entrypoint, environment (offline, no telemetry), the non-root user and the labels."""
    env = {
        "PATH": f"/{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": HOME,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        **profile_env(profile, lock),
    }
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(profile.source_date_epoch))
    labels = {
        "org.opencontainers.image.title": f"{name}-serve",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.description": f"llama.cpp OpenAI-compatible server for {name}",
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.vendor": "gapforge",
        "io.gapforge.builder.version": __version__,
        PROFILE_LABEL: profile.name,
        ENGINE_LABEL: "llama.cpp",
        "io.gapforge.lock.python.sha256": lock.sha256,
        **profile_labels(profile, lock),
    }
    return ImageSpec(
        entrypoint=[f"/{VENV}/bin/python", LAUNCHER_FILE, CONFIG_FILE],
        env=env,
        user=IMAGE_USER,
        working_dir=HOME,
        labels=labels,
        architecture=profile.architecture,
        source_date_epoch=profile.source_date_epoch,
    )


@dataclass(frozen=True)
class ServingImage:
    tar_path: Path
    manifest: ImageManifest
    layers: WrittenLayers
    ref: str
    serve: ServeSpec


def assemble_serving(
    cache: Cache,
    profile: Profile,
    lock: PythonLock,
    base: tuple[Path, str],
    wheels: dict[str, Path],
    serve: ServeSpec,
    identity: tuple[str, str],
    out_dir: Path,
) -> ServingImage:
    """Write the layers (cached by their inputs) and the serving image's archive into `out_dir`.
    `base` is the Debian rootfs tar and its lock's sha256; `identity` the recipe's name and version."""
    name, version = identity
    step(f"assembling the llama.cpp serving image of {name} (deterministic layers, no network)")
    plans = plan_serving(profile, base[0], base[1], wheels, server_config(serve))
    written = write_layers(cache, plans, profile.source_date_epoch)
    ref = f"gapforge/{name}-serve:{version}"
    manifest = build_manifest(serving_spec(profile, lock, name, version), written.layers, ref)
    out_dir.mkdir(parents=True, exist_ok=True)
    tar_path = out_dir / "serve-llama.cpp.tar"
    total = sum(layer.size for layer in written.layers)
    with byte_progress("serving image archive", total) as advance:
        archive = write_archive(
            manifest, written.layers, tar_path, profile.source_date_epoch, advance
        )
    note(
        f"serving image {tar_path} ({archive.size / 1e6:.1f} MB, image ID {manifest.config_digest[:19]})"
    )
    return ServingImage(tar_path, manifest, written, ref, serve)
