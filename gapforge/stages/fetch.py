"""Stage fetch: everything the image needs, in the cache, checked against the locks. The only stage
that uses the network: Debian .debs (base rootfs, sdist build root), wheels and sdists (sdists built
into wheels offline), the runtime wheel, the model, the operator's wheels for the bundle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gapforge_runtime.features import BASE

from gapforge.bundle.wheels import fetch_operator_wheels
from gapforge.cache import Cache
from gapforge.errors import FetchError
from gapforge.fetch.debian import DebianInputs, DebianRefresh
from gapforge.fetch.model import ModelFile, fetch_extra_model, fetch_model
from gapforge.fetch.sdist import SdistBuilder
from gapforge.fetch.triton import TritonLauncher, build_launcher
from gapforge.fetch.wheels import build_flit_wheel, fetch_locked_files, make_venv
from gapforge.hashing import sha256_file
from gapforge.lock.python import PythonLock
from gapforge.profile import REPO_ROOT, Profile
from gapforge.progress import step
from gapforge.stages.locks import Locks
from gapforge.stages.plan import BuildPlan

RUNTIME_DIR = REPO_ROOT / "runtime"


@dataclass
class Inputs:
    rootfs_tar: Path
    wheels: dict[str, Path]
    llama_sdist: Path
    runtime_wheel: Path
    model_files: list[ModelFile]
    sdists: dict[str, Path] = field(default_factory=dict)
    extra_models: dict[str, list[ModelFile]] = field(default_factory=dict)
    """The files of each `models:` entry (a judge, a teacher), by name."""
    operator_wheels: list[Path] = field(default_factory=list)
    """gapforge and its locked dependencies as wheels, for the bundle's wheels/."""
    debian_refreshes: list[DebianRefresh] = field(default_factory=list)
    """Debian locks rewritten because the archive no longer had their .debs."""
    sdist_build_seconds: float = 0.0
    triton_launcher: TritonLauncher | None = None


def build_runtime_wheel(cache: Cache, epoch: int) -> Path:
    """The runtime package as a wheel, built deterministically (flit, SOURCE_DATE_EPOCH)."""
    return build_flit_wheel(cache, RUNTIME_DIR / "pyproject.toml", epoch)


def runtime_toolchain(
    cache: Cache, locks: Locks, wheels: dict[str, Path]
) -> tuple[str, Callable[[], Path]]:
    """A venv of the image's locked base wheels (no sdist builds), for build steps that need ML
    libraries (torch, transformers, gguf: all base); made (or verified) only when a step asks for
    it. The base set alone, so images of other feature sets share it."""
    base = {name: wheels[name] for name in locks.features.groups[BASE] if name in wheels}
    name = f"runtime-{locks.python.sha256[:16]}-{BASE}"
    return name, lambda: make_venv(cache, name, list(base.values()))


@dataclass(frozen=True)
class PythonInputs:
    wheels: dict[str, Path]
    """Binary wheels from the index."""
    built: dict[str, Path]
    """Wheels built from sdists in the locked Debian build root."""
    sdists: dict[str, Path]
    build_seconds: float
    triton_launcher: TritonLauncher | None = None
    """Triton's CUDA driver module compiled in the build root (`[triton] prebuilt_launcher`)."""


def fetch_python(
    cache: Cache,
    profile: Profile,
    python: PythonLock,
    build: PythonLock,
    debian: DebianInputs,
    only: set[str] | None = None,
) -> PythonInputs:
    """The locked Python packages (`only` those, when given: an image's feature sets): binary
    wheels, wheels built offline from sdists, and the sdists."""
    all_names = {r.key for r in python.requirements} if only is None else set(only)
    sdist_names = set(profile.sdist_builds) & all_names
    wheels = fetch_locked_files(cache, python, profile, binary=True, only=all_names - sdist_names)
    sdists = fetch_locked_files(cache, python, profile, binary=False, only=sdist_names)
    with SdistBuilder(cache, profile, build, debian) as builder:
        built = {
            name: builder.wheel(python.by_name()[name], sdists[name])
            for name in sorted(sdist_names)
        }
        launcher = None
        if profile.triton_launcher:
            if "triton" not in wheels:
                raise FetchError(
                    f"images/{profile.name}/profile.toml asks for [triton] prebuilt_launcher, but "
                    "the profile's lock has no triton wheel: remove the setting, or lock triton"
                )
            launcher = build_launcher(cache, builder, profile, wheels["triton"])
    return PythonInputs(wheels, built, sdists, builder.seconds, launcher)


def fetch(plan: BuildPlan, locks: Locks) -> tuple[Inputs, Locks]:
    """Everything the image needs, in the cache, checked against the locks (network used here
    only); returns the locks as they are after any Debian refresh."""
    step(f"fetching into the cache {plan.cache.root}")
    cache, profile = plan.cache, plan.profile
    plan.cache.clear_stale_tmp()
    # Debian first: with --frozen, a lock the archive moved away from stops the build at once.
    debian = DebianInputs(cache, profile, plan.options.lock_dir, frozen=plan.options.frozen)
    rootfs_tar = debian.rootfs_tar()
    python = fetch_python(
        cache, profile, locks.python, locks.build, debian, only=locks.features.packages
    )
    locks = replace(locks, debian_sha256=sha256_file(locks.debian_path))
    wheels, built, sdists = python.wheels, python.built, python.sdists
    toolchain = None
    if plan.loaded.recipe.model.source.type == "gguf":
        toolchain = runtime_toolchain(cache, locks, wheels)
    model_files = fetch_model(
        cache, plan.loaded.recipe.model, locks.model, plan.loaded.local_model_path(), toolchain
    )
    extra_locks = dict(locks.extra_models)
    extra_models = {
        name: fetch_extra_model(cache, spec, extra_locks[name], plan.loaded.local_path_of(spec))
        for name, spec in sorted(plan.loaded.recipe.models.items())
    }
    runtime_wheel = build_runtime_wheel(cache, profile.source_date_epoch)
    llama_key = "llama-cpp-python"
    operator_wheels = fetch_operator_wheels(cache, profile) if plan.options.bundle else []
    inputs = Inputs(rootfs_tar, {**wheels, **built}, sdists[llama_key], runtime_wheel, model_files,
                    sdists, extra_models, operator_wheels, debian.refreshes, python.build_seconds,
                    python.triton_launcher)  # fmt: skip
    return inputs, locks
