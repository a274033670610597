"""Verify figures: `gapforge verify` against `sha256sum -c SHA256SUMS` on the same bundle, same run.

The bundle: `--bundle DIR`, else the default recipe's `dist/smollm2-135m-desk-0.1.0` when `make build`
has made it, else the tiny test recipe built, pretested and bundled here first. The page cache is
warmed with one untimed pass, then each command runs `--repeat` times and the median counts. Both
read the same bytes; MB/s is the bundle's bytes over the command's wall time, start-up included.
gapforge verify is pinned to the bundle's own public key (`--key`): the same work as with a site's
pinned key, and no trust anchor needs installing on the benchmark machine.

Goal (issue 15, item 4): gapforge verify at least 3x `sha256sum -c`.

Run with `nox -s bench`, or: python benchmarks/bench_verify.py [--bundle DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_BUNDLE = REPO / "dist" / "smollm2-135m-desk-0.1.0"


def _tiny_bundle(root: Path) -> Path:
    """The integration tests' tiny recipe, built, pretested and bundled (about a minute, warm cache)."""
    from tests.integration import conftest

    class Factory:
        def mktemp(self, name: str) -> Path:
            path = root / name
            path.mkdir()
            return path

    project = conftest.tiny_project.__wrapped__(Factory())  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "gapforge.cli", "build", str(project / "recipes/tiny/tiny.yaml"),
               "--lock-dir", str(project / "lockfiles"), "--out", str(root / "build"), "--dist", str(root / "dist")]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return root / "dist" / "tiny-desk-0.0.1"


def _timed(command: list[str], cwd: Path | None = None) -> float:
    start = time.monotonic()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def _median(command: list[str], repeat: int, cwd: Path | None = None) -> float:
    return statistics.median(_timed(command, cwd) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: the default recipe's, or a tiny one)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="gapforge-bench-verify-"))
    try:
        bundle = args.bundle or (DEFAULT_BUNDLE if (DEFAULT_BUNDLE / "SHA256SUMS").is_file() else None)
        if bundle is None:
            print("no bundle of the default recipe in dist/ ('make build' makes it): bundling the tiny recipe")
            bundle = _tiny_bundle(scratch)
        files = [line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()]
        size = sum((bundle / name).stat().st_size for name in files)
        gapforge = [sys.executable, "-m", "gapforge.cli", "verify", str(bundle), "--key", str(bundle / "signing-key.pub.pem")]
        sha256sum = ["sha256sum", "-c", "--quiet", "--strict", "SHA256SUMS"]
        _timed(sha256sum, bundle)  # warm the page cache: both then read from memory
        report = json.loads(subprocess.run([*gapforge, "--json"], capture_output=True, text=True, check=True).stdout)
        ours = _median(gapforge, args.repeat)
        deep = _median([*gapforge, "--deep"], args.repeat)
        theirs = _median(sha256sum, args.repeat, bundle)
        one_thread = _median([*gapforge, "--workers", "1"], args.repeat)
        cores = len(os.sched_getaffinity(0))
        print(f"\ngapforge verify benchmark: {bundle.name}, {len(files)} files, {size / 1e6:.0f} MB, {cores} cores, "
              f"median of {args.repeat}")  # fmt: skip
        rows = {
            "gapforge verify (every file, signature, digests)": ours,
            "gapforge verify --workers 1": one_thread,
            "gapforge verify --deep (+ every blob, SBOM schema)": deep,
            "sha256sum -c SHA256SUMS (coreutils)": theirs,
        }
        for label, seconds in rows.items():
            print(f"  {label:<52} {size / 1e6 / seconds:8.0f} MB/s  ({seconds:.2f} s)")
        verdict = "met" if theirs / ours >= 3 else "NOT MET"
        print(f"  {'ratio (gapforge verify / sha256sum -c)':<52} {theirs / ours:8.2f} x   goal >= 3 x: {verdict}")
        print(f"  {'ratio (gapforge verify --deep / sha256sum -c)':<52} {theirs / deep:8.2f} x")
        inside = report["bytes_hashed"] / 1e6 / report["seconds"]
        print(f"  {'verify_bundle() alone (no interpreter start-up)':<52} {inside:8.0f} MB/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
