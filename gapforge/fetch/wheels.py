"""Fetch locked wheels and sdists into the cache, and build sdists into wheels offline.

Every file is downloaded with `pip download --require-hashes`, then hashed again by the cache before
it is trusted. Sdists (packages with no wheel for the image's platform) are built with the profile's
locked build toolchain, in a fixed directory, with the network cut (`unshare -n`), SOURCE_DATE_EPOCH
set and no native CPU flags, so the same sdist gives the same wheel on another machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

from gapforge import __version__
from gapforge.cache import Cache
from gapforge.errors import EnvironmentProblem, FetchError
from gapforge.lock.python import LockedRequirement, PythonLock, canonical_name
from gapforge.profile import Profile
from gapforge.progress import note

# Platform tags of the image (Debian 12, glibc 2.36, x86_64): every manylinux_2_N it satisfies, newest
# first (pip matches N exactly, and the CUDA wheels use many: 2_12, 2_18, 2_25, 2_27, 2_28…).
IMAGE_PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in range(36, 4, -1)),
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64",
)  # fmt: skip
BUILD_ROOT = Path("/tmp/gapforge-sdist-build")
"""Fixed, so paths compiled into a binary are the same on every machine and with every cache."""


def _cached(cache: Cache, requirement: LockedRequirement) -> Path | None:
    for digest in requirement.hashes:
        found = cache.find_file(digest)
        if found is not None:
            return found
    return None


def _project_of(filename: str) -> str:
    stem = filename.removesuffix(".whl").removesuffix(".tar.gz").removesuffix(".zip")
    return canonical_name(stem.split("-")[0])


def _pip_download(
    requirements: list[LockedRequirement], dest: Path, binary: bool, platform_args: list[str]
) -> None:
    req_file = dest / "requirements.txt"
    req_file.write_text("\n".join(r.line() for r in requirements) + "\n", encoding="utf-8")
    # Sdists: only the locked packages themselves. pip prepares an sdist's metadata in an isolated
    # build environment; `--no-binary :all:` would force that environment's own tools (cmake, …) to
    # be compiled from source too.
    names = ",".join(sorted(r.key for r in requirements))
    kind = ["--only-binary", ":all:", *platform_args] if binary else ["--no-binary", names]
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
        "--disable-pip-version-check", "--progress-bar", "on" if sys.stderr.isatty() else "off",
        *kind, "-d", str(dest / "files"), "-r", str(req_file),
    ]  # fmt: skip
    result = subprocess.run(
        command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if result.returncode != 0:
        tail = "\n".join(line for line in result.stdout.splitlines() if "is ignored" not in line)[
            -3000:
        ]
        hint = (
            "the index serves other bytes than the lock pins: check the index, then run 'nox -s lock'"
            if "HASHES" in result.stdout.upper()
            else "check that the package index is reachable, or run 'nox -s lock' if a pin no longer exists"
        )
        raise FetchError(
            f"pip download failed for {len(requirements)} locked files:\n{tail}\nFix: {hint}."
        )


def fetch_locked_files(
    cache: Cache,
    lock: PythonLock,
    profile: Profile | None,
    binary: bool,
    only: set[str] | None = None,
) -> dict[str, Path]:
    """Make sure every selected locked requirement is in the cache; return name -> cached file.

    `profile` selects the image's platform for wheels; None means this machine's (build tools).
    """
    selected = [r for r in lock.requirements if only is None or r.key in only]
    found: dict[str, Path] = {}
    missing: list[LockedRequirement] = []
    for requirement in selected:
        path = _cached(cache, requirement)
        if path is None:
            missing.append(requirement)
        else:
            found[requirement.key] = path
    if missing:
        note(f"downloading {len(missing)} of {len(selected)} locked {'wheels' if binary else 'sdists'} "
             f"from {lock.path.name}")  # fmt: skip
        platform_args: list[str] = []
        if binary and profile is not None:
            platform_args = [a for p in IMAGE_PLATFORMS for a in ("--platform", p)]
            platform_args += ["--python-version", profile.python, "--implementation", "cp"]
            platform_args += ["--abi", profile.python_tag, "--abi", "abi3", "--abi", "none"]
        with cache.tempdir("download-") as work:
            _pip_download(missing, work, binary, platform_args)
            by_name = {r.key: r for r in missing}
            for file in sorted((work / "files").iterdir()):
                matched = by_name.get(_project_of(file.name))
                if matched is None:
                    raise FetchError(
                        f"pip downloaded {file.name}, which no missing lock entry names"
                    )
                try:
                    found[matched.key] = cache.put_file(file, allowed=set(matched.hashes))
                except ValueError as exc:
                    raise FetchError(f"{exc}: run 'nox -s lock' if the index changed") from None
        absent = [r.pin for r in missing if r.key not in found]
        if absent:
            raise FetchError(f"pip did not download {', '.join(absent)}: run 'nox -s lock'")
    else:
        note(
            f"all {len(selected)} locked {'wheels' if binary else 'sdists'} of {lock.path.name} are cached"
        )
    return found


# --- sdist -> wheel --------------------------------------------------------------------------------


def make_venv(cache: Cache, name: str, wheels: list[Path]) -> Path:
    """A venv in the cache holding exactly `wheels` (already hash-checked), made once per name."""
    venv = cache.root / "venvs" / name
    marker = venv / ".complete"
    if marker.is_file():
        os.utime(marker)  # last use, for 'gapforge cache prune'
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    note(f"making the venv {venv} from {len(wheels)} cached wheels")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--disable-pip-version-check", *(str(p) for p in sorted(wheels))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise FetchError(
            f"could not install the locked wheels into {venv}:\n{result.stderr[-2000:]}"
        )
    marker.write_text("\n".join(p.name for p in sorted(wheels)))
    return venv


def build_key(
    sdist_sha256: str,
    build_lock: PythonLock,
    cmake_args: tuple[str, ...],
    wheel_exclude: tuple[str, ...] = (),
) -> str:
    """What a built wheel depends on: the sdist, the toolchain lock, the settings, the builder."""
    settings = [list(cmake_args), list(wheel_exclude)]
    blob = json.dumps([sdist_sha256, build_lock.sha256, settings, __version__, "v2"])
    return hashlib.sha256(blob.encode()).hexdigest()


def build_sdist(
    cache: Cache,
    profile: Profile,
    requirement: LockedRequirement,
    sdist: Path,
    build_lock: PythonLock,
) -> Path:
    """Build `sdist` into a wheel offline (cached by the sdist's hash and the build settings)."""
    settings = profile.sdist_builds.get(requirement.key)
    cmake_args = settings.cmake_args if settings else ()
    wheel_exclude = settings.wheel_exclude if settings else ()
    sdist_sha = sdist.parent.name
    key = build_key(sdist_sha, build_lock, cmake_args, wheel_exclude)
    known = cache.index_get("sdist-builds", key)
    if known is not None:
        wheel = cache.find_file(known["sha256"])
        if wheel is not None:
            note(f"{requirement.pin}: wheel built from its sdist is cached ({wheel.name})")
            return wheel
    if shutil.which("unshare") is None:
        raise EnvironmentProblem(
            "unshare (util-linux) is needed to build sdists with the network cut"
        )
    tools = fetch_locked_files(cache, build_lock, None, binary=True)
    venv = make_venv(cache, f"build-{build_lock.sha256[:16]}", list(tools.values()))
    with _exclusive_build_root():
        known = cache.index_get("sdist-builds", key)  # built by another process while we waited?
        wheel = cache.find_file(known["sha256"]) if known is not None else None
        if wheel is not None:
            note(f"{requirement.pin}: wheel built from its sdist is cached ({wheel.name})")
            return wheel
        return _build_in_root(
            cache, profile, requirement, sdist, venv, key, cmake_args, wheel_exclude
        )


@contextlib.contextmanager
def _exclusive_build_root() -> Iterator[None]:
    """One sdist build at a time on this machine: the fixed build path (for reproducible
    binaries) is shared by every build and cache directory."""
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"waiting for another sdist build to finish with {BUILD_ROOT}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_in_root(
    cache: Cache,
    profile: Profile,
    requirement: LockedRequirement,
    sdist: Path,
    venv: Path,
    key: str,
    cmake_args: tuple[str, ...],
    wheel_exclude: tuple[str, ...],
) -> Path:
    """Unpack the sdist under BUILD_ROOT and build its wheel with the network cut."""
    sdist_sha = sdist.parent.name
    source_root = BUILD_ROOT / f"{requirement.key}-{requirement.version}"
    shutil.rmtree(source_root, ignore_errors=True)
    source_root.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        archive.extractall(source_root, filter="data")
    (top,) = [p for p in source_root.iterdir() if p.is_dir()]
    prefix_map = f"-ffile-prefix-map={top}=."
    env = dict(
        os.environ,
        SOURCE_DATE_EPOCH=str(profile.source_date_epoch),
        CMAKE_ARGS=" ".join(
            [*cmake_args, f"-DCMAKE_C_FLAGS={prefix_map}", f"-DCMAKE_CXX_FLAGS={prefix_map}"]
        ),
        CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 1),
        PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS="",
        PYTHONHASHSEED="0",
    )
    out = source_root / "wheelhouse"
    command = [
        "unshare", "-n", str(venv / "bin/python"), "-m", "pip", "wheel", "--no-deps",
        "--no-build-isolation", "--no-index", "--no-cache-dir", "--disable-pip-version-check",
        f"--config-settings=build-dir={source_root / 'build'}",
        *(f"--config-settings=wheel.exclude={pattern}" for pattern in wheel_exclude),
        "-w", str(out), str(top),
    ]  # fmt: skip
    note(
        f"{requirement.pin}: building a wheel from the sdist, offline (several minutes on 2 cores)"
    )
    log_path = cache.root / "logs" / f"sdist-build-{requirement.key}-{key[:12]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2500:]
        raise FetchError(
            f"building {requirement.pin} from its sdist failed (log: {log_path}):\n{tail}\n"
            f"Fix the build settings in images/{profile.name}/profile.toml [sdist_builds] "
            "or the toolchain in build-requirements.in."
        )
    (wheel,) = out.glob("*.whl")
    cached = cache.put_file(wheel, move=True)
    cache.index_put("sdist-builds", key, {"sha256": cached.parent.name, "filename": cached.name,
                                          "sdist_sha256": sdist_sha, "requirement": requirement.pin})  # fmt: skip
    shutil.rmtree(source_root, ignore_errors=True)
    note(f"{requirement.pin}: built {cached.name} (log: {log_path})")
    return cached


def build_flit_wheel(cache: Cache, pyproject: Path, epoch: int) -> Path:
    """A flit project's wheel, built deterministically (SOURCE_DATE_EPOCH), in the cache."""
    from flit_core.wheel import make_wheel_in

    previous = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    try:
        with cache.tempdir("flit-wheel-") as work:
            info = make_wheel_in(pyproject, work)
            return cache.put_file(Path(info.file), move=True)
    finally:
        if previous is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = previous
