"""The build plan: what `gapforge build` was asked (BuildOptions) and what every stage works from
(the recipe, its profile, the cache)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gapforge.cache import Cache, default_cache_dir
from gapforge.profile import REPO_ROOT, Profile, load_profile
from gapforge.recipe import LoadedRecipe, load_recipe


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
    verify_cache: bool = False
    """Rehash every cache entry read, even those the cache recorded verified (`--verify-cache`)."""

    @property
    def bundle(self) -> bool:
        """A bundle is made only from an image that was loaded and pretested."""
        return self.load and self.smoke and self.pretest

    @property
    def dist(self) -> Path:
        return self.dist_dir or self.out_dir.parent / "dist"


@dataclass(frozen=True)
class BuildPlan:
    """What every stage works from. Frozen: a stage hands its result on by returning it."""

    options: BuildOptions
    loaded: LoadedRecipe
    profile: Profile
    cache: Cache
    started: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"{self.loaded.recipe.name}-{self.loaded.recipe.version}"

    @property
    def ref(self) -> str:
        return f"gapforge/{self.loaded.recipe.name}:{self.loaded.recipe.version}"

    @property
    def description(self) -> str:
        """The image's and the bundle's description: the recipe's own, else a plain one."""
        recipe = self.loaded.recipe
        return recipe.description or f"gapforge sealed image for {recipe.name}"


def make_plan(options: BuildOptions) -> BuildPlan:
    loaded = load_recipe(options.recipe)
    profile = load_profile(loaded.recipe.profile, options.images_dir)
    return BuildPlan(
        options=options,
        loaded=loaded,
        profile=profile,
        cache=Cache(options.cache_dir, verify_all=options.verify_cache),
    )
