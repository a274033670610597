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
from gapforge_runtime.errors import EXIT_USAGE, RuntimeFailure
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


def cmd_import_gguf(args: argparse.Namespace) -> int:
    """Dequantize a GGUF model into a Hugging Face folder with safetensors."""
    from gapforge_runtime.gguf_import import import_gguf

    import_gguf(Path(args.gguf), Path(args.out), force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapforge-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print versions and the recipe this image was built for")
    info.add_argument("--recipe", help="recipe JSON (default: $GAPFORGE_RECIPE or the image's)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)

    imp = sub.add_parser("import-gguf", help="dequantize a GGUF model into an HF safetensors folder")
    imp.add_argument("--gguf", required=True, help="the .gguf model file")
    imp.add_argument("--out", required=True, help="the folder to write (config, tokenizer, weights)")
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    imp.set_defaults(func=cmd_import_gguf)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 a gate failed, 2 a usage error)."""
    force_offline()
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except RuntimeFailure as failure:
        print(failure.render(), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
