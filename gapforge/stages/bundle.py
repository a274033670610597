"""Stage bundle: the signed bundle in dist/, from an image whose sealed pretest passed.

The bundle writer (gapforge.bundle) is handed plain data (BundleSource), made here from what the
earlier stages returned: the bundle package never imports the build."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from gapforge import __version__
from gapforge.bundle.sign import SigningKey, public_path, resolve_signing_key
from gapforge.bundle.source import BundleSource, FileDigest, ImageInfo, ModelInfo, PythonPackage
from gapforge.bundle.source import Layer as BundleLayer
from gapforge.bundle.write import write_bundle
from gapforge.checkout import git_state
from gapforge.hashing import sha256_file
from gapforge.lock.debian import read_debian_lock
from gapforge.pretest import PretestResult
from gapforge.progress import note, step
from gapforge.stages.assemble import BuiltImage, recipe_files, wheel_groups
from gapforge.stages.fetch import Inputs
from gapforge.stages.locks import Locks
from gapforge.stages.plan import BuildPlan


@dataclass(frozen=True)
class WrittenBundle:
    path: Path
    signing_key: str
    """The fingerprint of the key that signed it."""


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


def _file_digest(path: Path) -> FileDigest:
    """A cached file's digest is its folder's name (files/sha256/<hex>/<name>); others are hashed."""
    digest = path.parent.name
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        digest = sha256_file(path)
    return FileDigest(path.name, digest, path.stat().st_size)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def bundle_source(
    plan: BuildPlan, locks: Locks, inputs: Inputs, image: BuiltImage, result: PretestResult
) -> BundleSource:
    """Everything the bundle writer needs, as plain data."""
    recipe = plan.loaded.recipe
    sdists = {name: _file_digest(path) for name, path in inputs.sdists.items()}
    groups = wheel_groups(locks)
    python = tuple(
        PythonPackage(
            r.name, r.version, _file_digest(inputs.wheels[r.key]), sdists.get(r.key), groups[r.key]
        )
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
        description=plan.description,
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
            **{f"models/{lock.path.name}": lock.sha256 for _, lock in locks.extra_models},
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
        extra_models=tuple(
            (
                name,
                ModelInfo(
                    id=recipe.models[name].id,
                    source=lock.source,
                    files=tuple(
                        FileDigest(f"models/{name}/{f.path}", f.sha256, f.size)
                        for f in inputs.extra_models.get(name, [])
                    ),
                    locked=tuple(FileDigest(f.path, f.sha256, f.size) for f in lock.files),
                ),
            )
            for name, lock in locks.extra_models
        ),
        git=git_state(),
        started=_iso(plan.started),
        finished=_iso(time.time()),
    )


def bundle(
    plan: BuildPlan, locks: Locks, inputs: Inputs, image: BuiltImage, result: PretestResult,
    key: SigningKey,
) -> WrittenBundle:  # fmt: skip
    """The signed bundle in dist/, written atomically."""
    source = bundle_source(plan, locks, inputs, image, result)
    path = write_bundle(source, key, plan.options.dist)
    return WrittenBundle(path, key.fingerprint)
