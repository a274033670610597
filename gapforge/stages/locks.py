"""Stage check_locks: every lock exists and was made from the inputs on disk now."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gapforge_runtime.features import recipe_features

from gapforge.errors import LockError
from gapforge.hashing import sha256_file
from gapforge.lock.debian import debian_inputs_sha256, debian_lock_path, read_debian_lock
from gapforge.lock.features import FeatureSelection, select_features
from gapforge.lock.model import ModelLock, read_model_lock
from gapforge.lock.python import PythonLock, check_fresh, inputs_sha256, parse_python_lock
from gapforge.profile import Profile
from gapforge.progress import note, step
from gapforge.stages.plan import BuildPlan


@dataclass(frozen=True)
class Locks:
    python: PythonLock
    build: PythonLock
    debian_path: Path
    debian_sha256: str
    model: ModelLock
    features: FeatureSelection
    """The feature sets the recipe uses and the locked wheels of each: what the image holds."""
    build_debian_path: Path | None = None
    """The sdist build root's Debian lock (profiles that build sdists)."""
    extra_models: tuple[tuple[str, ModelLock], ...] = ()
    """The locks of the recipe's `models:` entries (a judge, a teacher), by name."""

    def digests(self) -> dict[str, str]:
        """Every lock this build used: file name → sha256."""
        found = {
            self.python.path.name: self.python.sha256,
            self.build.path.name: self.build.sha256,
            self.debian_path.name: self.debian_sha256,
            f"models/{self.model.path.name}": self.model.sha256,
            **{f"models/{lock.path.name}": lock.sha256 for _, lock in self.extra_models},
        }
        if self.build_debian_path is not None:
            found[self.build_debian_path.name] = sha256_file(self.build_debian_path)
        return found


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
    extra = tuple(
        (name, read_model_lock(plan.options.lock_dir, spec))
        for name, spec in sorted(plan.loaded.recipe.models.items())
    )
    missing_builds = [k for k in profile.sdist_builds if k not in python.by_name()]
    if missing_builds:
        raise LockError(
            f"{python_path} does not pin {', '.join(missing_builds)}, which the profile builds from sdist: run 'nox -s lock'"
        )
    where = str(profile.directory / "profile.toml")
    features = select_features(profile.features, python, recipe_features(plan.loaded.recipe), where)
    note(
        f"{python_path.name}: {len(features.packages)} of {len(python.requirements)} packages "
        f"(features {features.label}); {debian_path.name}; models/{model.path.name}"
    )
    return Locks(python, build, debian_path, sha256_file(debian_path), model, features, build_debian,
                 extra)  # fmt: skip
