"""The runtime's command line: the entrypoint of every sealed image."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

from gapforge_runtime import __version__
from gapforge_runtime.offline import force_offline

RECIPE_ENV = "GAPFORGE_RECIPE"
DEFAULT_RECIPE = "/opt/gapforge/recipe/recipe.json"
REPORTED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "llama_cpp_python", "gguf")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_recipe(path: str | None = None) -> dict[str, object] | None:
    """Read the recipe the image was built for (JSON written by the builder), if any."""
    recipe_path = Path(path or os.environ.get(RECIPE_ENV, DEFAULT_RECIPE))
    if not recipe_path.is_file():
        return None
    data: dict[str, object] = json.loads(recipe_path.read_text(encoding="utf-8"))
    return data


def cmd_info(args: argparse.Namespace) -> int:
    """Print the versions of python and the ML stack, and the recipe this image was built for."""
    recipe = load_recipe(args.recipe)
    info: dict[str, object] = {
        "runtime": __version__,
        "python": platform.python_version(),
        "packages": {name: _package_version(name) for name in REPORTED_PACKAGES},
        "recipe": None
        if recipe is None
        else {"name": recipe.get("name"), "version": recipe.get("version")},
        "offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
    }
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"gapforge-runtime {__version__}")
    print(f"python        {info['python']}")
    for name, version in info["packages"].items():  # type: ignore[attr-defined]
        print(f"{name:<13} {version}")
    if recipe is None:
        print("recipe        (none: not running inside a sealed image)")
    else:
        print(f"recipe        {recipe.get('name')} {recipe.get('version')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapforge-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print versions and the recipe this image was built for")
    info.add_argument("--recipe", help="recipe JSON (default: $GAPFORGE_RECIPE or the image's)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    force_offline()
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
