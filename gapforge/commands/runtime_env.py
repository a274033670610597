"""`gapforge runtime-env --python PY`: install a profile's locked runtime wheels into a Python, for
the tests and benchmarks that run the runtime outside the image."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from gapforge.commands._shared import add_common, cache_of
from gapforge.errors import GapforgeError


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
