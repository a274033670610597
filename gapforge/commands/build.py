"""The build engineer's commands, on the connected side: lock, build, validate, cache and keygen;
and runtime-env, the helper the tests and benchmarks use to install a profile's runtime wheels.

Each command is a pair: `<name>_arguments(parser)` adds its arguments, `cmd_<name>(args)` runs it and
returns the exit status. What a command needs is imported when it runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gapforge.commands._shared import add_cache_dir, add_common, cache_dir, cache_of, gigabytes
from gapforge.errors import GapforgeError
from gapforge.profile import REPO_ROOT
from gapforge.progress import console

DEFAULT_RECIPE = REPO_ROOT / "recipes" / "smollm2" / "lora-q8-q4.yaml"


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


def build_arguments(build: argparse.ArgumentParser) -> None:
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
    build.add_argument(
        "--no-smoke",
        action="store_true",
        help="load but do not run the image (no pretest, no bundle)",
    )
    build.add_argument(
        "--no-pretest",
        action="store_true",
        help="skip the sealed pretest (fast dev builds): no bundle",
    )
    build.add_argument(
        "--pretest-timeout", type=float, default=3600.0, help="seconds before the pretest is killed"
    )
    build.add_argument(
        "--dist",
        type=Path,
        default=None,
        help="where the bundle goes (default: dist/ beside --out)",
    )
    build.add_argument(
        "--key",
        type=Path,
        default=None,
        help="Ed25519 private key that signs the bundle (default: $GAPFORGE_SIGNING_KEY, else a key "
        "made once in the cache)",
    )
    build.add_argument(
        "--delta-from", metavar="INVENTORY|OLD_BUNDLE",
        help="also write a delta bundle beside the bundle: only the blobs and files that the site's "
        "signed inventory (or the last bundle delivered there) lacks",
    )  # fmt: skip
    build.add_argument(
        "--frozen",
        action="store_true",
        help="never change a lock: stop (exit 2, naming each package) when a locked Debian .deb can "
        "no longer be had; for releases and reproducibility checks. Without it, a moved archive's "
        "current packages are taken, listed and written to the lock for review",
    )
    build.add_argument(
        "--verify-cache",
        action="store_true",
        help="rehash every cache entry the build reads; by default an entry the cache itself "
        "hashed and recorded is trusted while its size, times and inode are unchanged",
    )
    add_common(build)


def cmd_build(args: argparse.Namespace) -> int:
    from gapforge.build import build
    from gapforge.stages.plan import BuildOptions

    options = BuildOptions(
        recipe=Path(args.recipe),
        cache_dir=cache_dir(args),
        lock_dir=args.lock_dir,
        images_dir=args.images_dir,
        out_dir=args.out.resolve(),
        load=not args.no_load,
        smoke=not args.no_smoke,
        pretest=not args.no_pretest,
        pretest_timeout=args.pretest_timeout,
        dist_dir=args.dist.resolve() if args.dist else None,
        signing_key=args.key,
        frozen=args.frozen,
        verify_cache=args.verify_cache,
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
    for refresh in report.get("debian_refresh", []):
        console.print(
            f"  [yellow]refreshed[/]     {refresh['lock']}: {len(refresh['changes'])} packages "
            "changed (security updates): review and commit the lock"
        )
    if "pretest" in report:
        console.print(f"  pretest       PASS in {report['pretest']['seconds']} s (network cut)")
    if "bundle" in report:
        console.print(f"  bundle        {report['bundle']['path']}")
        console.print(f"  signed by     {report['bundle']['signing_key']}")
    if args.delta_from:
        _delta_after_build(args, report)
    return 0


def _delta_after_build(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """`build --delta-from`: the delta of the bundle just written, beside it in dist/."""
    from gapforge.errors import BuildError
    from gapforge.transfer.delta import against_bundle, against_inventory, make_delta

    if "bundle" not in report:
        raise BuildError(
            "--delta-from: this build wrote no bundle (--no-load/--no-smoke/--no-pretest)"
        )
    bundle = Path(report["bundle"]["path"])
    spec = Path(args.delta_from)
    against = against_inventory(spec) if spec.is_file() else against_bundle(spec)
    result = make_delta(bundle, against, bundle.parent)
    console.print(
        f"  delta         {result.path} ({result.delta_bytes / 1e6:.2f} MB of the full "
        f"{result.full_bytes / 1e6:.1f} MB; against {against.label})"
    )


def keygen_arguments(keygen: argparse.ArgumentParser) -> None:
    keygen.add_argument(
        "--out", type=Path, default=Path("gapforge-signing.key"),
        help="private key path; the public key goes beside it as .pub.pem (default: ./gapforge-signing.key)",
    )  # fmt: skip
    keygen.add_argument("--force", action="store_true", help="replace an existing key")


def cmd_keygen(args: argparse.Namespace) -> int:
    from gapforge.bundle.sign import public_path, write_key_pair

    key = write_key_pair(args.out.resolve(), overwrite=args.force)
    console.print("[bold green]made[/] an Ed25519 signing key pair")
    console.print(f"  private key   {key.path}  (mode 0600; keep it on the connected side)")
    console.print(
        f"  public key    {public_path(key.path)}  (give operators this file, out of band)"
    )
    console.print(f"  fingerprint   {key.fingerprint}")
    console.print(
        f"  build with    gapforge build RECIPE --key {key.path}   (or GAPFORGE_SIGNING_KEY)"
    )
    return 0


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5T' or plain bytes (decimal units, as df -H and docker print them)."""
    value = text.strip().upper().removesuffix("B")
    unit = value[-1] if value and value[-1] in "KMGT" else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: write bytes or a number with K, M, G or T (e.g. 20G)"
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size cannot be negative")
    return int(number * _UNITS[unit])


def cache_arguments(cache: argparse.ArgumentParser) -> None:
    cache.add_argument("action", choices=["info", "prune"])
    cache.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="prune entries that no build has used for this many days",
    )
    cache.add_argument(
        "--max-size",
        type=parse_size,
        metavar="SIZE",
        help="then prune least recently used entries until the cache holds at most SIZE (e.g. 20G)",
    )
    cache.add_argument(
        "--images",
        action="store_true",
        help="also untagged sealed images in the Docker engine (left when a rebuild took the tag)",
    )
    cache.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    add_cache_dir(cache)


def cmd_cache(args: argparse.Namespace) -> int:
    """Show what the cache and the engine hold for gapforge; prune what no build used lately."""
    from rich.table import Table

    cache = cache_of(args)
    if args.action == "info":
        entries = cache.entries()
        table = Table(title=f"gapforge cache {cache.root}")
        for column in ("area", "entries", "size", "oldest last use (days)"):
            table.add_column(column, justify="left" if column == "area" else "right")
        now = time.time()
        for area in ("blobs", "files", "venvs"):
            mine = [e for e in entries if e.area == area]
            oldest = max((now - e.last_used) / 86400 for e in mine) if mine else 0.0
            table.add_row(
                area, str(len(mine)), gigabytes(sum(e.size for e in mine)), f"{oldest:.1f}"
            )
        table.add_row("total", str(len(entries)), gigabytes(sum(e.size for e in entries)), "")
        console.print(table)
        free = shutil.disk_usage(cache.root).free
        console.print(f"free on the cache's filesystem: {gigabytes(free)}")
        if args.images:
            from gapforge.engine import connect, stale_images

            stale = stale_images(connect())
            console.print(
                f"Docker engine: {len(stale)} untagged gapforge image(s) left by rebuilds, "
                f"{gigabytes(sum(size for _, size in stale))} before sharing"
            )
        return 0
    if args.older_than is None and args.max_size is None and not args.images:
        raise GapforgeError(
            "gapforge cache prune: nothing to prune by: give --older-than DAYS (entries no build "
            "used for that long), --max-size SIZE (least recently used first) and/or --images "
            "(untagged sealed images in the Docker engine)"
        )
    older = args.older_than * 86400 if args.older_than is not None else None
    result = cache.prune(older_than_s=older, max_bytes=args.max_size, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in result.removed:
        console.print(f"    {verb} {entry.area}/{entry.path.name[:24]}  {gigabytes(entry.size)}")
    console.print(
        f"cache: {verb} {len(result.removed)} entries ({gigabytes(result.removed_bytes)}); "
        f"{gigabytes(result.kept_bytes)} kept"
    )
    if args.images:
        from gapforge.engine import connect, remove_images, stale_images

        client = connect()
        stale = stale_images(client)
        kept = [] if args.dry_run else remove_images(client, [image_id for image_id, _ in stale])
        console.print(
            f"Docker engine: {verb} {len(stale) - len(kept)} untagged gapforge image(s)"
            + (f"; kept, in use: {', '.join(kept)}" if kept else "")
        )
    return 0


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


def runtime_env_arguments(env: argparse.ArgumentParser) -> None:
    env.add_argument("--profile", default="cpu")
    env.add_argument("--python", help="the interpreter to install into (default: this one)")
    env.add_argument(
        "--llama-cpp-dir", type=Path, help="also extract llama.cpp's conversion scripts here"
    )
    add_common(env)


def cmd_runtime_env(args: argparse.Namespace) -> int:
    """Install the profile's locked runtime wheels (sdists built) into the Python running nox/pytest."""
    from gapforge.fetch.debian import DebianInputs
    from gapforge.profile import load_profile
    from gapforge.stages.fetch import fetch_python
    from gapforge.stages.locks import python_locks

    cache = cache_of(args)
    profile = load_profile(args.profile, args.images_dir)
    python_lock, build_lock = python_locks(profile, args.lock_dir)
    with cache.tempdir("runtime-env-locks-") as lock_copy:
        # The Debian build root lock may be refreshed if the archive moved: on a copy, since a
        # test environment never rewrites the committed lockfiles.
        for lock in args.lock_dir.glob(f"{profile.name}.*"):
            shutil.copy(lock, lock_copy / lock.name)
        debian = DebianInputs(cache, profile, lock_copy)
        fetched = fetch_python(cache, profile, python_lock, build_lock, debian)
    wheels, built, sdists = fetched.wheels, fetched.built, fetched.sdists
    python = args.python or sys.executable
    install = [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
               "--disable-pip-version-check"]  # fmt: skip
    # A wheel built from an sdist can change (other build settings) at the same version, which
    # pip would take as already installed: those are always reinstalled.
    for extra, files in (([], wheels), (["--force-reinstall"], built)):
        if not files:
            continue
        result = subprocess.run(
            [*install, *extra, *(str(p) for p in sorted(files.values()))], check=False
        )
        if result.returncode != 0:
            raise GapforgeError(
                f"installing the locked runtime wheels into {python} failed (output above)"
            )
    if args.llama_cpp_dir:
        from gapforge.image import extract_llama_cpp

        shutil.rmtree(args.llama_cpp_dir, ignore_errors=True)
        extract_llama_cpp(sdists["llama-cpp-python"], args.llama_cpp_dir)
    return 0
