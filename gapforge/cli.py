"""The gapforge command line: lock, build, and the helpers the tests and benchmarks use."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from gapforge import __version__
from gapforge.cache import Cache, default_cache_dir
from gapforge.errors import GapforgeError
from gapforge.profile import REPO_ROOT
from gapforge.progress import console

DEFAULT_RECIPE = REPO_ROOT / "recipes" / "smollm2" / "lora-q8-q4.yaml"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="content-addressed cache (default: $GAPFORGE_CACHE or ~/.cache/gapforge)",
    )
    parser.add_argument(
        "--lock-dir",
        type=Path,
        default=REPO_ROOT / "lockfiles",
        help="lockfiles folder (default: lockfiles/)",
    )
    parser.add_argument(
        "--images-dir",
        type=Path,
        default=REPO_ROOT / "images",
        help="profiles folder (default: images/)",
    )


def _cache(args: argparse.Namespace) -> Cache:
    return Cache((args.cache_dir or default_cache_dir()).resolve())


def cmd_lock(args: argparse.Namespace) -> int:
    from gapforge.lock.update import lock_profile, lock_recipe_models

    cache = _cache(args)
    recipes = [Path(r) for r in args.recipes] or sorted((REPO_ROOT / "recipes").rglob("*.yaml"))
    if not args.models_only:
        for profile in args.profile or ["cpu"]:
            lock_profile(profile, args.lock_dir, args.images_dir, cache, debian=not args.no_debian)
    lock_recipe_models(recipes, args.lock_dir, cache)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from gapforge.build import BuildOptions, build

    options = BuildOptions(
        recipe=Path(args.recipe),
        cache_dir=(args.cache_dir or default_cache_dir()).resolve(),
        lock_dir=args.lock_dir,
        images_dir=args.images_dir,
        out_dir=args.out.resolve(),
        load=not args.no_load,
        smoke=not args.no_smoke,
    )
    image, report = build(options)
    console.print()
    console.print(f"[bold green]built[/] {report['image']['ref']}")
    console.print(f"  image digest  {image.manifest.manifest_digest}")
    console.print(f"  image ID      {image.manifest.config_digest}")
    console.print(f"  archive       {image.tar_path}")
    console.print(f"  report        {image.report_path}")
    written = ", ".join(report["layers_written"]) or "none"
    console.print(f"  layers        {len(report['layers'])} ({written} written, the rest cached)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from gapforge.recipe import load_recipe

    for path in args.recipes:
        loaded = load_recipe(path)
        console.print(
            f"[green]ok[/] {path}: {loaded.recipe.name} {loaded.recipe.version} ({loaded.recipe.profile})"
        )
    return 0


def cmd_runtime_env(args: argparse.Namespace) -> int:
    """Install the profile's locked runtime wheels (sdists built) into the Python running nox/pytest."""
    from gapforge.build import BuildOptions, BuildPlan, check_locks
    from gapforge.fetch.wheels import build_sdist, fetch_locked_files
    from gapforge.profile import load_profile
    from gapforge.recipe import load_recipe

    cache = _cache(args)
    profile = load_profile(args.profile, args.images_dir)
    options = BuildOptions(
        recipe=DEFAULT_RECIPE,
        cache_dir=cache.root,
        lock_dir=args.lock_dir,
        images_dir=args.images_dir,
    )
    plan = BuildPlan(
        options=options, loaded=load_recipe(DEFAULT_RECIPE), profile=profile, cache=cache
    )
    locks = check_locks(plan)
    sdist_names = set(profile.sdist_builds)
    names = {r.key for r in locks.python.requirements}
    files = fetch_locked_files(cache, locks.python, None, binary=True, only=names - sdist_names)
    sdists = fetch_locked_files(cache, locks.python, profile, binary=False, only=sdist_names)
    for name in sorted(sdist_names):
        files[name] = build_sdist(
            cache, profile, locks.python.by_name()[name], sdists[name], locks.build
        )
    python = args.python or sys.executable
    result = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--disable-pip-version-check",
         *(str(p) for p in sorted(files.values()))], check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise GapforgeError(
            f"installing the locked runtime wheels into {python} failed (output above)"
        )
    if args.llama_cpp_dir:
        from gapforge.image import extract_llama_cpp

        shutil.rmtree(args.llama_cpp_dir, ignore_errors=True)
        extract_llama_cpp(sdists["llama-cpp-python"], args.llama_cpp_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapforge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gapforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    lock = sub.add_parser(
        "lock", help="rewrite the lockfiles from their inputs (needs the network)"
    )
    lock.add_argument(
        "recipes", nargs="*", help="recipes whose model to lock (default: every shipped recipe)"
    )
    lock.add_argument(
        "--profile", action="append", help="profile to lock (repeatable; default: cpu)"
    )
    lock.add_argument("--no-debian", action="store_true", help="leave the Debian lock as it is")
    lock.add_argument("--models-only", action="store_true", help="lock only the recipes' models")
    _add_common(lock)
    lock.set_defaults(func=cmd_lock)

    build = sub.add_parser(
        "build", help="build a recipe into a sealed image, load it and smoke-run it"
    )
    build.add_argument(
        "recipe",
        nargs="?",
        default=str(DEFAULT_RECIPE),
        help="recipe YAML (default: the SmolLM2 recipe)",
    )
    build.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "build",
        help="where the image archive goes (default: build/)",
    )
    build.add_argument(
        "--no-load", action="store_true", help="write the archive only; no Docker engine needed"
    )
    build.add_argument("--no-smoke", action="store_true", help="load but do not run the image")
    _add_common(build)
    build.set_defaults(func=cmd_build)

    validate = sub.add_parser("validate", help="validate recipes and report every problem")
    validate.add_argument("recipes", nargs="+")
    validate.set_defaults(func=cmd_validate)

    env = sub.add_parser(
        "runtime-env", help="install a profile's locked runtime wheels into a Python (tests)"
    )
    env.add_argument("--profile", default="cpu")
    env.add_argument("--python", help="the interpreter to install into (default: this one)")
    env.add_argument(
        "--llama-cpp-dir", type=Path, help="also extract llama.cpp's conversion scripts here"
    )
    _add_common(env)
    env.set_defaults(func=cmd_runtime_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except GapforgeError as exc:
        console.print("[bold red]error:[/] ", end="")
        console.print(exc.message, markup=False, highlight=False, soft_wrap=True)
        return exc.exit_status
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: nothing half-written is trusted; run the command again")
        return 130


if __name__ == "__main__":
    sys.exit(main())
