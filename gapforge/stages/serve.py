"""Stage serve (recipes with a `serve:` section): the llama.cpp serving image, from its own lock,
assembled beside the training image and pretested with the network cut on the recipe's own GGUF,
the one the training image's sealed pretest just wrote. Not yet in the bundle (issue 26)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge_runtime.recipe_serve import ServeSpec

from gapforge.cache import Cache
from gapforge.errors import BuildError
from gapforge.fetch.debian import DebianInputs
from gapforge.hashing import sha256_file
from gapforge.lock.debian import debian_lock_path
from gapforge.lock.python import parse_python_lock
from gapforge.lock.serve import read_serve_lock
from gapforge.pretest import PretestResult
from gapforge.profile import Profile
from gapforge.serving.image import ServingImage, assemble_serving
from gapforge.serving.pretest import EVIDENCE, pretest_serving
from gapforge.stages.fetch import fetch_python
from gapforge.stages.plan import BuildPlan


@dataclass(frozen=True)
class ServingResult:
    image: ServingImage
    evidence: dict[str, Any]
    evidence_path: Path


def build_serving(
    cache: Cache,
    profile: Profile,
    lock_dir: Path,
    serve: ServeSpec,
    identity: tuple[str, str],
    out_dir: Path,
    frozen: bool = False,
) -> ServingImage:
    """Fetch the serving lock's wheels (llama-cpp-python's is the profile's, built from its sdist
    once and cached) and assemble the serving image over the profile's Debian base."""
    lock = read_serve_lock(profile, lock_dir, serve.engine)
    build_lock = parse_python_lock(lock_dir / f"{profile.name}.build.txt")
    debian = DebianInputs(cache, profile, lock_dir, frozen=frozen)
    rootfs = debian.rootfs_tar()
    python = fetch_python(cache, profile, lock, build_lock, debian)
    base = (rootfs, sha256_file(debian_lock_path(lock_dir, profile.name)))
    wheels = {**python.wheels, **python.built}
    return assemble_serving(cache, profile, lock, base, wheels, serve, identity, out_dir)


def pretest_gguf(outputs: Path, name: str, artefact: str) -> Path:
    """The GGUF of `artefact` that the training image's pretest wrote (outputs/gguf/NAME-SUFFIX.gguf)."""
    path = outputs / "gguf" / f"{name}-{artefact.split(':', 1)[1]}.gguf"
    if not path.is_file():
        found = sorted(p.name for p in (outputs / "gguf").glob("*.gguf"))
        raise BuildError(
            f"{path}: the training pretest wrote no GGUF for serve.artefacts' {artefact} (it wrote "
            f"{', '.join(found) or 'none'}): serve only artefacts the recipe's quantize builds"
        )
    return path


def serve(plan: BuildPlan, client: Any, result: PretestResult) -> ServingResult:
    """Build the serving image and pretest it on the pretest run's own GGUF."""
    recipe = plan.loaded.recipe
    spec = recipe.serve
    if spec is None:
        raise BuildError(f"{plan.loaded.path}: no serve: section, so no serving image to build")
    out = plan.options.out_dir / plan.name
    image = build_serving(plan.cache, plan.profile, plan.options.lock_dir, spec,
                          (recipe.name, recipe.version), out, plan.options.frozen)  # fmt: skip
    gguf = pretest_gguf(result.folder / "outputs", recipe.name, spec.artefacts[0])
    folder = out / "serve-pretest"
    return ServingResult(image, pretest_serving(client, image, gguf, folder), folder / EVIDENCE)


def check_serve_lock(plan: BuildPlan) -> None:
    """Before any fetch: the serving lock of a recipe with `serve:` is there and fresh."""
    spec = plan.loaded.recipe.serve
    if spec is not None:
        read_serve_lock(plan.profile, plan.options.lock_dir, spec.engine)
