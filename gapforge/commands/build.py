"""`gapforge build RECIPE`: the build engineer builds a recipe into a sealed image, loads it,
smoke-runs and pretests it, and writes the bundle (the stages are gapforge/build.py's)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapforge.commands._shared import add_common, cache_dir
from gapforge.profile import REPO_ROOT
from gapforge.progress import console

if TYPE_CHECKING:
    from gapforge.release_manager.delta import Against

DEFAULT_RECIPE = REPO_ROOT / "recipes" / "smollm2" / "lora-q8-q4.yaml"


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
    build.add_argument("--inventory-key", type=Path, action="append", default=[], metavar="OPERATOR.pub.pem",
                       help="with --delta-from INVENTORY: the site's operator key that signed it")  # fmt: skip
    build.add_argument("--insecure-inventory", action="store_true",
                       help="with --delta-from INVENTORY: accept the key it names itself")  # fmt: skip
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

    against = None  # the site's inventory (or old bundle) is checked before minutes of building
    if args.delta_from:
        from gapforge.release_manager.delta import against_spec

        against = against_spec(
            Path(args.delta_from), args.inventory_key, args.insecure_inventory, "--delta-from"
        )
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
    if "serving" in report:
        serving = report["serving"]
        console.print(f"  serving       {serving['ref']} PASS (network cut): first token "
                      f"{serving['ttft_s']} s, {serving['tokens_per_s']} tokens/s; not in the bundle yet")  # fmt: skip
    if "bundle" in report:
        console.print(f"  bundle        {report['bundle']['path']}")
        console.print(f"  signed by     {report['bundle']['signing_key']}")
    if against is not None:
        _delta_after_build(against, report)
    return 0


def _delta_after_build(against: Against, report: dict[str, Any]) -> None:
    """`build --delta-from`: the delta of the bundle just written, beside it in dist/."""
    from gapforge.errors import BuildError
    from gapforge.release_manager.delta import make_delta

    if "bundle" not in report:
        raise BuildError(
            "--delta-from: this build wrote no bundle (--no-load/--no-smoke/--no-pretest)"
        )
    bundle = Path(report["bundle"]["path"])
    result = make_delta(bundle, against, bundle.parent)
    console.print(
        f"  delta         {result.path} ({result.delta_bytes / 1e6:.2f} MB of the full "
        f"{result.full_bytes / 1e6:.1f} MB; against {against.label})"
    )
