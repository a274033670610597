"""`gapforge lock [RECIPE...]` (needs the network): rewrite the lockfiles from their inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.commands._shared import add_common, cache_of
from gapforge.profile import REPO_ROOT
from gapforge.progress import console


def lock_arguments(lock: argparse.ArgumentParser) -> None:
    lock.add_argument(
        "recipes", nargs="*", help="recipes whose model to lock (default: every shipped recipe)"
    )
    lock.add_argument(
        "--profile", action="append", help="profile to lock (repeatable; default: every images/*/)"
    )
    lock.add_argument("--no-debian", action="store_true", help="leave the Debian lock as it is")
    lock.add_argument("--models-only", action="store_true", help="lock only the recipes' models")
    add_common(lock)


def cmd_lock(args: argparse.Namespace) -> int:
    from gapforge.lock.update import all_profiles, lock_profile, lock_recipe_models

    cache = cache_of(args)
    recipes = [Path(r) for r in args.recipes] or sorted((REPO_ROOT / "recipes").glob("*/*.yaml"))
    if not args.models_only:
        for profile in args.profile or all_profiles(args.images_dir):
            lock_profile(profile, args.lock_dir, args.images_dir, cache, debian=not args.no_debian)
        from gapforge.bundle.wheels import OPERATOR_LOCK, lock_operator
        from gapforge.lock.builder import lock_builder

        lock = lock_operator(cache)
        console.print(
            f"    {OPERATOR_LOCK.name}: {len(lock.requirements)} packages pinned with hashes"
        )
        lock = lock_builder(args.lock_dir)
        console.print(f"    builder.txt: {len(lock.requirements)} packages pinned with hashes")
    lock_recipe_models(recipes, args.lock_dir, cache)
    return 0
