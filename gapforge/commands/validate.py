"""`gapforge validate RECIPE...`: every problem of the recipes at once, with its line and fix."""

from __future__ import annotations

import argparse

from gapforge.progress import console


def validate_arguments(validate: argparse.ArgumentParser) -> None:
    validate.add_argument("recipes", nargs="+")


def cmd_validate(args: argparse.Namespace) -> int:
    from gapforge.recipe import load_recipe

    for path in args.recipes:
        loaded = load_recipe(path)
        console.print(
            f"[green]ok[/] {path}: {loaded.recipe.name} {loaded.recipe.version} ({loaded.recipe.profile})"
        )
    return 0
