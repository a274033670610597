"""The gapforge command line: lock, build and keygen on the connected side; verify, load, preflight,
run and inspect inside the gap; and the helpers the tests and benchmarks use."""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gapforge import __version__
from gapforge.cache import Cache, default_cache_dir
from gapforge.errors import GapforgeError
from gapforge.profile import REPO_ROOT
from gapforge.progress import console, step

DEFAULT_RECIPE = REPO_ROOT / "recipes" / "smollm2" / "lora-q8-q4.yaml"


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="content-addressed cache (default: $GAPFORGE_CACHE or ~/.cache/gapforge)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add_cache_dir(parser)
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
    from gapforge.lock.update import all_profiles, lock_profile, lock_recipe_models

    cache = _cache(args)
    recipes = [Path(r) for r in args.recipes] or sorted((REPO_ROOT / "recipes").rglob("*.yaml"))
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


def cmd_build(args: argparse.Namespace) -> int:
    from gapforge.build import build
    from gapforge.stages.plan import BuildOptions

    options = BuildOptions(
        recipe=Path(args.recipe),
        cache_dir=(args.cache_dir or default_cache_dir()).resolve(),
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
    from gapforge.fetch.debian import DebianInputs
    from gapforge.profile import load_profile
    from gapforge.stages.fetch import fetch_python
    from gapforge.stages.locks import python_locks

    cache = _cache(args)
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


# --- the offline side -----------------------------------------------------------------------------


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


def _print_verify(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    mb = report.bytes_hashed / 1e6
    speed = mb / report.seconds if report.seconds else 0.0
    console.print(
        f"    {report.files_checked} files: {mb:.0f} MB hashed in "
        f"{report.seconds:.1f} s ({speed:.0f} MB/s, {report.workers} threads)"
    )
    if report.key_fingerprint:
        colour = "" if report.key_pinned else "[yellow]"
        console.print(f"    key {report.key_fingerprint} from {colour}{report.key_source}")
    if report.ok:
        archive = report.archive
        console.print(f"[bold green]verified[/] {report.bundle}")
        console.print("  signature     ok")
        console.print(f"  image digest  {archive.manifest_digest}")
        console.print(f"  image ID      {archive.config_digest}")
        console.print("  pretest       PASS")
        return
    table = Table("file", "problem", title=f"{len(report.problems)} problems", title_justify="left")
    for problem in report.problems:
        table.add_row(escape(problem.file), escape(problem.message), style="red")
    console.print(table)
    console.print(
        f"[bold red]FAILED[/] {report.bundle}: bad files: {', '.join(report.bad_files)}. Do not load "
        "this bundle; get an intact copy from the release manager."
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from gapforge.bundle.verify import verify_bundle

    step(f"verifying {args.bundle}")
    report = verify_bundle(args.bundle, args.key, args.workers, args.deep)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print_verify(report)
    return 0 if report.ok else 1


def cmd_load(args: argparse.Namespace) -> int:
    from gapforge.bundle.load import load_bundle

    loaded = load_bundle(
        args.bundle, args.key, args.to, args.insecure, args.tls_verify, on_verified=_print_verify
    )
    console.print(f"[bold green]loaded[/] into {loaded.where}")
    console.print(f"  image digest  {loaded.manifest_digest}")
    console.print(f"  image ID      {loaded.config_digest}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gapforge.bundle.run import run_image

    extra = [flag for flag, on in (("--resume", args.resume), ("--force", args.force)) if on]
    status = run_image(args.target, args.data, args.out, args.gpus, args.validation, args.test,
                       extra, args.timeout)  # fmt: skip
    verdict = {0: "[bold green]PASS[/]", 1: "[bold red]a gate failed[/] (see report.md)"}
    console.print(
        f"runtime exited with status {status}: {verdict.get(status, '[bold red]error[/]')}; outputs in {args.out}"
    )
    return status


def cmd_preflight(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from gapforge.bundle.run import preflight

    step(f"preflight: {args.target} on {args.data} → {args.out}")
    checks = preflight(args.target, args.data, args.out)
    table = Table("check", "", "detail")
    for check in checks:
        verdict = "[green]go[/]" if check.ok else "[bold red]NO-GO[/]"
        table.add_row(check.name, verdict, escape(check.detail))
    console.print(table)
    go = all(check.ok for check in checks)
    console.print("[bold green]GO[/]" if go else "[bold red]NO-GO[/]: fix the rows marked above")
    return 0 if go else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from gapforge.bundle.inspect import bundle_table, describe_bundle

    facts = describe_bundle(args.bundle)
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        console.print(bundle_table(facts))
        console.print("(what the bundle says about itself; 'gapforge verify' checks it)")
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


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def cmd_cache(args: argparse.Namespace) -> int:
    """Show what the cache and the engine hold for gapforge; prune what no build used lately."""
    from rich.table import Table

    cache = _cache(args)
    if args.action == "info":
        entries = cache.entries()
        table = Table(title=f"gapforge cache {cache.root}")
        for column in ("area", "entries", "size", "oldest last use (days)"):
            table.add_column(column, justify="left" if column == "area" else "right")
        now = time.time()
        for area in ("blobs", "files", "venvs"):
            mine = [e for e in entries if e.area == area]
            oldest = max((now - e.last_used) / 86400 for e in mine) if mine else 0.0
            table.add_row(area, str(len(mine)), _gb(sum(e.size for e in mine)), f"{oldest:.1f}")
        table.add_row("total", str(len(entries)), _gb(sum(e.size for e in entries)), "")
        console.print(table)
        free = shutil.disk_usage(cache.root).free
        console.print(f"free on the cache's filesystem: {_gb(free)}")
        if args.images:
            from gapforge.engine import connect, stale_images

            stale = stale_images(connect())
            console.print(
                f"Docker engine: {len(stale)} untagged gapforge image(s) left by rebuilds, "
                f"{_gb(sum(size for _, size in stale))} before sharing"
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
        console.print(f"    {verb} {entry.area}/{entry.path.name[:24]}  {_gb(entry.size)}")
    console.print(
        f"cache: {verb} {len(result.removed)} entries ({_gb(result.removed_bytes)}); "
        f"{_gb(result.kept_bytes)} kept"
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
        "--profile", action="append", help="profile to lock (repeatable; default: every images/*/)"
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
        "--frozen",
        action="store_true",
        help="never change a lock: stop (exit 2, naming each package) when a locked Debian .deb can "
        "no longer be had; for releases and reproducibility checks. Without it, a moved archive's "
        "current packages are taken, listed and written to the lock for review",
    )
    _add_common(build)
    build.set_defaults(func=cmd_build)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles")
    keygen.add_argument(
        "--out", type=Path, default=Path("gapforge-signing.key"),
        help="private key path; the public key goes beside it as .pub.pem (default: ./gapforge-signing.key)",
    )  # fmt: skip
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(func=cmd_keygen)

    key_help = "the release manager's public key (.pub.pem), received out of band"
    verify = sub.add_parser("verify", help="check a bundle offline: signature, checksums, digests")
    verify.add_argument("bundle", type=Path, help="the bundle folder (dist/<recipe>-<version>)")
    verify.add_argument("--key", type=Path, help=key_help + " (default: the bundle's own copy)")
    verify.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    verify.add_argument(
        "--deep", action="store_true",
        help="also hash every blob inside the archive (done anyway when the archive's checksum "
        "fails) and validate the SBOM against the CycloneDX 1.6 schema",
    )  # fmt: skip
    verify.add_argument(
        "--workers", type=int, default=None, help="hashing threads (default: every core)"
    )
    verify.set_defaults(func=cmd_verify)

    load = sub.add_parser(
        "load", help="verify a bundle, then load its image into Docker or a registry"
    )
    load.add_argument("bundle", type=Path)
    load.add_argument("--key", type=Path, help=key_help)
    load.add_argument(
        "--to",
        metavar="HOST/REPO",
        help="push into this registry with skopeo instead of docker load",
    )
    load.add_argument(
        "--insecure",
        action="store_true",
        help="load even if verification fails (not for production)",
    )
    load.add_argument(
        "--no-tls-verify", dest="tls_verify", action="store_const", const=False, default=None,
        help="talk plain HTTP to the registry (default: only for 127.0.0.0/8 and localhost)",
    )  # fmt: skip
    load.set_defaults(func=cmd_load)

    run = sub.add_parser("run", help="run the sealed image on your data, network cut")
    run.add_argument("target", help="a bundle folder, or an image reference already loaded")
    run.add_argument(
        "--data", type=Path, required=True, help="your data, JSON lines in the recipe's format"
    )
    run.add_argument(
        "--out", type=Path, required=True, help="the output folder (created if missing)"
    )
    run.add_argument("--validation", type=Path, help="your own validation split (JSON lines)")
    run.add_argument("--test", type=Path, help="your own test split (JSON lines)")
    run.add_argument("--gpus", choices=("auto", "all", "none"), default="auto",
                     help="auto: all GPUs for a cuda image when one is present")  # fmt: skip
    run.add_argument("--timeout", type=float, default=None, help="seconds before the run is killed")
    run.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    run.add_argument(
        "--force", action="store_true", help="redo finished steps; replace another run's outputs"
    )
    run.set_defaults(func=cmd_run)

    pre = sub.add_parser(
        "preflight", help="go/no-go before a run: image, offline start, data, disk, GPU"
    )
    pre.add_argument("target", help="a bundle folder, or an image reference already loaded")
    pre.add_argument("--data", type=Path, required=True)
    pre.add_argument("--out", type=Path, required=True)
    pre.set_defaults(func=cmd_preflight)

    inspect = sub.add_parser(
        "inspect", help="what a bundle holds: recipe, model, packages, digests, pretest"
    )
    inspect.add_argument("bundle", type=Path)
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_inspect)

    cache = sub.add_parser(
        "cache", help="what the build cache holds (info), and removing what no build used (prune)"
    )
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
    _add_cache_dir(cache)
    cache.set_defaults(func=cmd_cache)

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


CACHE_USERS = ("lock", "build", "runtime-env")
"""Commands that read and write the cache, holding its shared lock against 'cache prune'."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except GapforgeError as exc:
        console.print("[bold red]error:[/] ", end="")
        console.print(exc.message, markup=False, highlight=False, soft_wrap=True)
        return exc.exit_status
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: nothing half-written is trusted; run the command again")
        return 130


def _run(args: argparse.Namespace) -> int:
    """The command, holding the cache's shared lock if it uses the cache; a full disk becomes an
    error the user can act on."""
    try:
        if args.command in CACHE_USERS:  # held for the whole command: 'cache prune' waits for none
            with _cache(args).using():
                return int(args.func(args))
        return int(args.func(args))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise GapforgeError(_no_space_message(exc, args)) from None


def _no_space_message(exc: OSError, args: argparse.Namespace) -> str:
    """ENOSPC: where, how much is free where it matters, and what to do; partial files are never
    renamed into place, so nothing written so far is trusted."""
    where = exc.filename or "a file"
    places = {"cache": getattr(args, "cache_dir", None) or default_cache_dir()}
    if getattr(args, "out", None) is not None:
        places["out"] = args.out
    free = []
    for name, path in places.items():
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free.append(f"{name} {path}: {_gb(shutil.disk_usage(probe).free)} free")
    return (
        f"no space left on the device while writing {where} ({'; '.join(free)}). Nothing "
        "half-written was kept. Free space and run the command again: 'gapforge cache info' shows "
        "what the cache holds, 'gapforge cache prune --older-than 30 --images' removes what no "
        "build used for 30 days and the untagged images older builds left in the engine, and "
        "--cache-dir/--out can point at a bigger disk."
    )


if __name__ == "__main__":
    sys.exit(main())
