"""`gapforge build`: check locks → fetch → assemble → load → smoke → pretest → bundle, each a stage
on one plan.

Only `fetch` touches the network. `assemble` reads the cache alone; `load`, `smoke` and `pretest` use
the local Docker engine, and the image runs with no network at all. A bundle is written only for an
image whose sealed pretest passed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gapforge import __version__
from gapforge.bundle.sign import SigningKey, public_path, resolve_signing_key
from gapforge.bundle.source import BundleSource, FileDigest, ImageInfo, ModelInfo, PythonPackage
from gapforge.bundle.source import Layer as BundleLayer
from gapforge.bundle.wheels import fetch_operator_wheels
from gapforge.bundle.write import write_bundle
from gapforge.cache import Cache, default_cache_dir
from gapforge.engine import PROFILE_LABEL
from gapforge.errors import BuildError, LockError
from gapforge.fetch.debian import DebianInputs, DebianRefresh
from gapforge.fetch.model import ModelFile, fetch_model
from gapforge.fetch.rootfs import IMAGE_USER
from gapforge.fetch.sdist import SdistBuilder
from gapforge.fetch.wheels import build_flit_wheel, fetch_locked_files, make_venv
from gapforge.hashing import sha256_file
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
from gapforge.lock.debian import debian_inputs_sha256, debian_lock_path, read_debian_lock
from gapforge.lock.model import ModelLock, read_model_lock
from gapforge.lock.python import PythonLock, check_fresh, inputs_sha256, parse_python_lock
from gapforge.oci.image import ImageManifest, ImageSpec, build_manifest, write_archive
from gapforge.pretest import PretestResult, run_pretest
from gapforge.profile import REPO_ROOT, Profile, load_profile, profile_env, profile_labels
from gapforge.progress import byte_progress, note, step
from gapforge.recipe import LoadedRecipe, load_recipe, recipe_json

RUNTIME_DIR = REPO_ROOT / "runtime"


@dataclass(frozen=True)
class BuildOptions:
    recipe: Path
    cache_dir: Path = field(default_factory=default_cache_dir)
    lock_dir: Path = REPO_ROOT / "lockfiles"
    images_dir: Path = REPO_ROOT / "images"
    out_dir: Path = REPO_ROOT / "build"
    load: bool = True
    smoke: bool = True
    pretest: bool = True
    pretest_timeout: float = 3600.0
    dist_dir: Path | None = None
    """Where bundles go; None: `dist/` beside `out_dir` (the repo's dist/ by default)."""
    signing_key: Path | None = None
    """None: $GAPFORGE_SIGNING_KEY, else the cache's own key (made on first use)."""
    frozen: bool = False
    """Never change a lock: stop, naming each package, when a locked .deb can no longer be had."""

    @property
    def bundle(self) -> bool:
        """A bundle is made only from an image that was loaded and pretested."""
        return self.load and self.smoke and self.pretest

    @property
    def dist(self) -> Path:
        return self.dist_dir or self.out_dir.parent / "dist"


@dataclass(frozen=True)
class Locks:
    python: PythonLock
    build: PythonLock
    debian_path: Path
    debian_sha256: str
    model: ModelLock
    build_debian_path: Path | None = None
    """The sdist build root's Debian lock (profiles that build sdists)."""

    def digests(self) -> dict[str, str]:
        """Every lock this build used: file name → sha256."""
        found = {
            self.python.path.name: self.python.sha256,
            self.build.path.name: self.build.sha256,
            self.debian_path.name: self.debian_sha256,
            f"models/{self.model.path.name}": self.model.sha256,
        }
        if self.build_debian_path is not None:
            found[self.build_debian_path.name] = sha256_file(self.build_debian_path)
        return found


@dataclass
class BuildPlan:
    options: BuildOptions
    loaded: LoadedRecipe
    profile: Profile
    cache: Cache
    locks: Locks | None = None
    timings: dict[str, float] = field(default_factory=dict)
    report_extra: dict[str, Any] = field(default_factory=dict)
    """Results of the pretest and bundle stages, for build.json."""
    started: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"{self.loaded.recipe.name}-{self.loaded.recipe.version}"

    @property
    def ref(self) -> str:
        return f"gapforge/{self.loaded.recipe.name}:{self.loaded.recipe.version}"


@dataclass
class Inputs:
    rootfs_tar: Path
    wheels: dict[str, Path]
    llama_sdist: Path
    runtime_wheel: Path
    model_files: list[ModelFile]
    sdists: dict[str, Path] = field(default_factory=dict)
    operator_wheels: list[Path] = field(default_factory=list)
    """gapforge and its locked dependencies as wheels, for the bundle's wheels/."""
    debian_refreshes: list[DebianRefresh] = field(default_factory=list)
    """Debian locks rewritten because the archive no longer had their .debs."""
    sdist_build_seconds: float = 0.0


@dataclass
class BuiltImage:
    tar_path: Path
    manifest: ImageManifest
    layers: WrittenLayers
    report_path: Path
    smoke_output: str = ""


def lock_paths(lock_dir: Path, profile: str) -> tuple[Path, Path, Path]:
    return (
        lock_dir / f"{profile}.txt",
        lock_dir / f"{profile}.build.txt",
        debian_lock_path(lock_dir, profile),
    )


def _check_debian_fresh(path: Path, profile: Profile, kind: str) -> None:
    section = "[debian]" if kind == "base" else "[build_root]"
    if read_debian_lock(path).inputs_sha256 != debian_inputs_sha256(profile, kind):
        raise LockError(
            f"{path} is stale: the {section} section of images/{profile.name}/profile.toml "
            "changed since it was locked: run 'nox -s lock' and commit the new lockfile"
        )


# --- stages ----------------------------------------------------------------------------------------------


def python_locks(profile: Profile, lock_dir: Path) -> tuple[PythonLock, PythonLock]:
    """The profile's runtime and sdist-toolchain locks, checked fresh against their inputs."""
    python_path, build_path, _ = lock_paths(lock_dir, profile.name)
    python = parse_python_lock(python_path)
    check_fresh(python, inputs_sha256(profile.requirements_in), str(profile.requirements_in))
    build = parse_python_lock(build_path)
    check_fresh(
        build, inputs_sha256(profile.build_requirements_in), str(profile.build_requirements_in)
    )
    return python, build


def check_locks(plan: BuildPlan) -> Locks:
    """Every lock exists and was made from the inputs on disk now."""
    step("checking locks")
    profile = plan.profile
    python_path, _, debian_path = lock_paths(plan.options.lock_dir, profile.name)
    python, build = python_locks(profile, plan.options.lock_dir)
    _check_debian_fresh(debian_path, profile, "base")
    build_debian = None
    if profile.sdist_builds:
        build_debian = debian_lock_path(plan.options.lock_dir, profile.name, "build")
        _check_debian_fresh(build_debian, profile, "build")
    model = read_model_lock(plan.options.lock_dir, plan.loaded.recipe.model)
    missing_builds = [k for k in profile.sdist_builds if k not in python.by_name()]
    if missing_builds:
        raise LockError(
            f"{python_path} does not pin {', '.join(missing_builds)}, which the profile builds from sdist: run 'nox -s lock'"
        )
    note(
        f"{python_path.name}: {len(python.requirements)} packages; {debian_path.name}; models/{model.path.name}"
    )
    return Locks(python, build, debian_path, sha256_file(debian_path), model, build_debian)


def build_runtime_wheel(cache: Cache, epoch: int) -> Path:
    """The runtime package as a wheel, built deterministically (flit, SOURCE_DATE_EPOCH)."""
    return build_flit_wheel(cache, RUNTIME_DIR / "pyproject.toml", epoch)


def runtime_toolchain(
    cache: Cache, locks: Locks, wheels: dict[str, Path]
) -> tuple[str, Callable[[], Path]]:
    """A venv of the image's locked wheels (no sdist builds), for build steps that need ML
    libraries; made (or verified) only when a step asks for it."""
    name = f"runtime-{locks.python.sha256[:16]}"
    return name, lambda: make_venv(cache, name, list(wheels.values()))


@dataclass(frozen=True)
class PythonInputs:
    wheels: dict[str, Path]
    """Binary wheels from the index."""
    built: dict[str, Path]
    """Wheels built from sdists in the locked Debian build root."""
    sdists: dict[str, Path]
    build_seconds: float


def fetch_python(
    cache: Cache, profile: Profile, python: PythonLock, build: PythonLock, debian: DebianInputs
) -> PythonInputs:
    """The locked Python packages: binary wheels, wheels built offline from sdists, and the sdists."""
    sdist_names = set(profile.sdist_builds)
    all_names = {r.key for r in python.requirements}
    wheels = fetch_locked_files(cache, python, profile, binary=True, only=all_names - sdist_names)
    sdists = fetch_locked_files(cache, python, profile, binary=False, only=sdist_names)
    with SdistBuilder(cache, profile, build, debian) as builder:
        built = {
            name: builder.wheel(python.by_name()[name], sdists[name])
            for name in sorted(sdist_names)
        }
    return PythonInputs(wheels, built, sdists, builder.seconds)


def fetch(plan: BuildPlan, locks: Locks) -> tuple[Inputs, Locks]:
    """Everything the image needs, in the cache, checked against the locks (network used here
    only); returns the locks as they are after any Debian refresh."""
    step(f"fetching into the cache {plan.cache.root}")
    cache, profile = plan.cache, plan.profile
    plan.cache.clear_stale_tmp()
    # Debian first: with --frozen, a lock the archive moved away from stops the build at once.
    debian = DebianInputs(cache, profile, plan.options.lock_dir, frozen=plan.options.frozen)
    rootfs_tar = debian.rootfs_tar()
    python = fetch_python(cache, profile, locks.python, locks.build, debian)
    locks = replace(locks, debian_sha256=sha256_file(locks.debian_path))
    wheels, built, sdists = python.wheels, python.built, python.sdists
    toolchain = None
    if plan.loaded.recipe.model.source.type == "gguf":
        toolchain = runtime_toolchain(cache, locks, wheels)
    model_files = fetch_model(
        cache, plan.loaded.recipe.model, locks.model, plan.loaded.local_model_path(), toolchain
    )
    runtime_wheel = build_runtime_wheel(cache, profile.source_date_epoch)
    llama_key = "llama-cpp-python"
    operator_wheels = fetch_operator_wheels(cache, profile) if plan.options.bundle else []
    inputs = Inputs(rootfs_tar, {**wheels, **built}, sdists[llama_key], runtime_wheel, model_files,
                    sdists, operator_wheels, debian.refreshes, python.build_seconds)  # fmt: skip
    return inputs, locks


def recipe_files(plan: BuildPlan, locks: Locks) -> dict[str, bytes]:
    loaded = plan.loaded
    normalized = json.dumps(recipe_json(loaded), indent=2, sort_keys=True).encode() + b"\n"
    return {
        "recipe.yaml": loaded.path.read_bytes(),
        "recipe.json": normalized,
        loaded.recipe.data.sample: loaded.sample_data.read_bytes(),
        f"locks/{locks.python.path.name}": locks.python.path.read_bytes(),
        f"locks/{locks.debian_path.name}": locks.debian_path.read_bytes(),
        f"locks/models/{locks.model.path.name}": locks.model.path.read_bytes(),
    }


def image_labels(plan: BuildPlan, locks: Locks, files: dict[str, bytes]) -> dict[str, str]:
    recipe = plan.loaded.recipe
    import hashlib
    import time as _time

    return {
        "org.opencontainers.image.title": recipe.name,
        "org.opencontainers.image.version": recipe.version,
        "org.opencontainers.image.description": recipe.description
        or f"gapforge sealed image for {recipe.name}",
        "org.opencontainers.image.created": _time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", _time.gmtime(plan.profile.source_date_epoch)
        ),
        "org.opencontainers.image.vendor": "gapforge",
        "io.gapforge.builder.version": __version__,
        PROFILE_LABEL: plan.profile.name,
        "io.gapforge.recipe.sha256": hashlib.sha256(files["recipe.json"]).hexdigest(),
        "io.gapforge.lock.python.sha256": locks.python.sha256,
        "io.gapforge.lock.debian.sha256": locks.debian_sha256,
        "io.gapforge.lock.model.sha256": locks.model.sha256,
        "io.gapforge.model.id": recipe.model.id,
    }


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
        *plan_wheel_layers(profile, inputs.wheels),
        plan_model(plan.loaded.recipe.model.id, inputs.model_files),
        plan_runtime(inputs.runtime_wheel, inputs.llama_sdist, profile),
        plan_recipe(files),
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
    return BuiltImage(tar_path, manifest, written, out / "build.json")


def reproduce_section(plan: BuildPlan, locks: Locks, inputs: Inputs) -> dict[str, Any]:
    """What another machine needs to rebuild these exact bytes, and the command that does it."""
    debian = read_debian_lock(locks.debian_path)
    snapshots = {debian.path.name: debian.snapshot}
    if locks.build_debian_path is not None:
        snapshots[locks.build_debian_path.name] = read_debian_lock(locks.build_debian_path).snapshot
    try:
        recipe = plan.loaded.path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        recipe = str(plan.loaded.path)
    command = f"gapforge build {recipe} --frozen"
    if plan.options.lock_dir.resolve() != (REPO_ROOT / "lockfiles").resolve():
        command += f" --lock-dir {plan.options.lock_dir}"
    return {
        "gapforge": {"version": __version__, **_git_state()},
        "locks": locks.digests(),
        "debian_snapshots": snapshots,
        "source_date_epoch": plan.profile.source_date_epoch,
        "command": command,
        "note": "the same gapforge commit, recipe and locks rebuild this archive byte for byte on "
        "any machine; --frozen refuses to change a lock",
    }


def write_report(
    plan: BuildPlan, locks: Locks, image: BuiltImage, inputs: Inputs
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "recipe": {
            "name": plan.loaded.recipe.name,
            "version": plan.loaded.recipe.version,
            "path": str(plan.loaded.path),
        },
        "profile": plan.profile.name,
        "image": {
            "ref": plan.ref,
            "tar": str(image.tar_path),
            "tar_sha256": sha256_file(image.tar_path),
            "manifest_digest": image.manifest.manifest_digest,
            "config_digest": image.manifest.config_digest,
        },
        "layers": [
            {"name": layer.name, "digest": layer.digest, "size": layer.size}
            for layer in image.layers.layers
        ],
        "layers_reused": image.layers.reused,
        "layers_written": image.layers.written,
        "locks": locks.digests(),
        "frozen": plan.options.frozen,
        "debian_refresh": [r.to_json() for r in inputs.debian_refreshes],
        "reproduce": reproduce_section(plan, locks, inputs),
        "sdist_build_s": round(inputs.sdist_build_seconds, 2),
        "timings_s": {k: round(v, 2) for k, v in plan.timings.items()},
        "smoke": image.smoke_output,
        "builder": __version__,
        "cache": str(plan.cache.root),
        **plan.report_extra,
    }
    tmp = image.report_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, image.report_path)
    return report


def _timed(plan: BuildPlan, name: str, func: Callable[[], Any]) -> Any:
    start = time.monotonic()
    try:
        return func()
    finally:
        plan.timings[name] = time.monotonic() - start


def make_plan(options: BuildOptions) -> BuildPlan:
    loaded = load_recipe(options.recipe)
    profile = load_profile(loaded.recipe.profile, options.images_dir)
    return BuildPlan(
        options=options, loaded=loaded, profile=profile, cache=Cache(options.cache_dir)
    )


def _file_digest(path: Path) -> FileDigest:
    """A cached file's digest is its folder's name (files/sha256/<hex>/<name>); others are hashed."""
    digest = path.parent.name
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        digest = sha256_file(path)
    return FileDigest(path.name, digest, path.stat().st_size)


def _git_state() -> dict[str, str]:
    """The builder checkout's commit and whether it had local changes (empty outside git)."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                                text=True, check=False)  # fmt: skip
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    return {
        "commit": commit,
        "dirty": "true" if git("status", "--porcelain", "--untracked-files=no") else "false",
    }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def bundle_source(
    plan: BuildPlan, locks: Locks, inputs: Inputs, image: BuiltImage, result: PretestResult
) -> BundleSource:
    """Everything the bundle writer needs, as plain data."""
    recipe = plan.loaded.recipe
    sdists = {name: _file_digest(path) for name, path in inputs.sdists.items()}
    python = tuple(
        PythonPackage(r.name, r.version, _file_digest(inputs.wheels[r.key]), sdists.get(r.key))
        for r in locks.python.requirements
        if r.key in inputs.wheels
    )
    debian_lock = read_debian_lock(locks.debian_path)
    runtime_file = _file_digest(inputs.runtime_wheel)
    runtime_version = inputs.runtime_wheel.name.split("-")[1]
    labels = json.loads(image.manifest.config_bytes)["config"].get("Labels", {})
    files = recipe_files(plan, locks)
    return BundleSource(
        name=recipe.name,
        version=recipe.version,
        description=recipe.description or f"gapforge sealed image for {recipe.name}",
        image=ImageInfo(
            ref=plan.ref,
            tar=image.tar_path,
            manifest_digest=image.manifest.manifest_digest,
            config_digest=image.manifest.config_digest,
            layers=tuple(BundleLayer(x.name, x.digest, x.size) for x in image.layers.layers),
            labels=labels,
            profile=plan.profile.name,
            # tar_sha256 is left to the bundle writer, which hashes every file it places anyway
        ),
        recipe_path=str(plan.loaded.path),
        recipe_files=files,
        locks={
            locks.python.path.name: locks.python.sha256,
            locks.debian_path.name: locks.debian_sha256,
            f"models/{locks.model.path.name}": locks.model.sha256,
        },
        python_packages=python,
        debian_suite=plan.profile.debian.suite,
        debian_packages=debian_lock.packages,
        debian_snapshot=debian_lock.snapshot,
        debian_refreshes=tuple(r.to_json() for r in inputs.debian_refreshes),
        model=ModelInfo(
            id=recipe.model.id,
            source=locks.model.source,
            files=tuple(FileDigest(f.path, f.sha256, f.size) for f in inputs.model_files),
            locked=tuple(FileDigest(f.path, f.sha256, f.size) for f in locks.model.files),
        ),
        runtime=PythonPackage("gapforge-runtime", runtime_version, runtime_file),
        llama_cpp=_file_digest(inputs.llama_sdist),
        builder_version=__version__,
        source_date_epoch=plan.profile.source_date_epoch,
        pretest_dir=result.folder,
        operator_wheels=tuple(inputs.operator_wheels),
        git=_git_state(),
        started=_iso(plan.started),
        finished=_iso(time.time()),
    )


def pretest(plan: BuildPlan, client: Any, image: BuiltImage) -> PretestResult:
    """Run the recipe in the sealed image on its sample data; evidence beside the archive."""
    result = run_pretest(
        client, plan.ref, image.manifest.manifest_digest, image.manifest.config_digest,
        image.tar_path.parent / "pretest", plan.options.pretest_timeout,
    )  # fmt: skip
    plan.report_extra["pretest"] = {
        "passed": result.passed,
        "seconds": round(result.seconds, 2),
        "evidence": str(result.folder / "evidence.json"),
    }
    return result


def bundle(
    plan: BuildPlan, locks: Locks, inputs: Inputs, image: BuiltImage, result: PretestResult,
    key: SigningKey,
) -> Path:  # fmt: skip
    """The signed bundle in dist/, written atomically."""
    source = bundle_source(plan, locks, inputs, image, result)
    path = write_bundle(source, key, plan.options.dist)
    plan.report_extra["bundle"] = {"path": str(path), "signing_key": key.fingerprint}
    return path


def signing_key(plan: BuildPlan) -> SigningKey:
    """The key that signs the bundle; a generated one is announced loudly, with its fingerprint."""
    key = resolve_signing_key(plan.options.signing_key, plan.cache.root)
    if key.generated:
        step("[bold yellow]no signing key given[/]: made a new Ed25519 key for this cache")
        note(f"private key  {key.path}  (keep it; every bundle from this cache is signed with it)")
        note(f"public key   {public_path(key.path)}  (give operators this file, out of band)")
        note(f"fingerprint  {key.fingerprint}")
        note(
            "use your release key with --key PATH or $GAPFORGE_SIGNING_KEY ('gapforge keygen' makes one)"
        )
    return key


def build(options: BuildOptions) -> tuple[BuiltImage, dict[str, Any]]:
    """Run every stage in order; return the image and the build report."""
    from gapforge import engine

    plan = make_plan(options)
    step(f"building {plan.ref} from {plan.loaded.path.name} (profile {plan.profile.name})")
    locks = _timed(plan, "check_locks", lambda: check_locks(plan))
    key = signing_key(plan) if options.bundle else None
    client = engine.connect() if options.load else None
    inputs, locks = _timed(plan, "fetch", lambda: fetch(plan, locks))
    image = _timed(plan, "assemble", lambda: assemble(plan, locks, inputs))
    result: PretestResult | None = None
    if client is not None:
        root = Path(client.info().get("DockerRootDir") or "/nonexistent")
        if root.is_dir():  # a local engine: its image store must hold the unpacked layers
            ensure_free(
                root, image.tar_path.stat().st_size, "loading the image", "Docker's data-root"
            )
        _timed(
            plan, "load", lambda: engine.load(client, image.tar_path, image.manifest.config_digest)
        )
        if options.smoke:
            image.smoke_output = _timed(plan, "smoke", lambda: engine.smoke_run(client, plan.ref))
            if options.pretest:
                result = _timed(plan, "pretest", lambda: pretest(plan, client, image))
    if result is not None and key is not None:
        _timed(plan, "bundle", lambda: bundle(plan, locks, inputs, image, result, key))
    else:
        skipped = [f for f, on in (("--no-load", options.load), ("--no-smoke", options.smoke),
                                   ("--no-pretest", options.pretest)) if not on]  # fmt: skip
        note(f"no bundle: {', '.join(skipped)} given, and only a pretested image is bundled")
    report = write_report(plan, locks, image, inputs)
    return image, report
