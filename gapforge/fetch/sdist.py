"""Build sdists into wheels offline, in the locked Debian build root.

Sdists (packages with no wheel for the image's platform) are built inside a root made from the
profile's locked Debian build set (compilers, libc, Python headers: never the host's), with the
locked build tools, the network cut, a fixed path, environment, locale, time zone and umask,
SOURCE_DATE_EPOCH set and no native CPU flags: the same sdist gives the same wheel on any machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Protocol

from gapforge import __version__
from gapforge.cache import Cache
from gapforge.errors import EnvironmentProblem, FetchError
from gapforge.fetch.wheels import fetch_locked_files
from gapforge.lock.python import LockedRequirement, PythonLock
from gapforge.profile import Profile
from gapforge.progress import note, waiting

SOURCE_INSIDE = "/build/src"
"""Where an sdist is unpacked inside the build root: the same path on every machine."""


SDIST_ESTIMATES = {"llama-cpp-python": "about 3 min on 2 cores: it compiles llama.cpp"}
"""What a build from source is expected to take, where it is long (179 s measured, 2026-12-03)."""


def build_key(
    sdist_sha256: str,
    build_lock: PythonLock,
    root_lock_sha256: str,
    python: str,
    cmake_args: tuple[str, ...],
    wheel_exclude: tuple[str, ...] = (),
) -> str:
    """Every input that can change a built wheel's bytes: the sdist, the build tools' lock, the
    Debian build root's lock (compilers, libc, Python headers), the Python, the settings and the
    builder's own code for building."""
    settings = [list(cmake_args), list(wheel_exclude)]
    blob = json.dumps(
        [sdist_sha256, build_lock.sha256, root_lock_sha256, python, settings, __version__, "v3"]
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _unpack_sdist(sdist: Path, dest: Path) -> None:
    """Unpack a .tar.gz or (older sdists, such as word2number's) .zip sdist into `dest`."""
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as archive:
            for member in archive.namelist():
                target = (dest / member).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise FetchError(f"{sdist.name}: member {member!r} leaves the archive's folder")
            archive.extractall(dest)
        return
    with tarfile.open(sdist) as archive:
        archive.extractall(dest, filter="data")


class BuildRootSource(Protocol):
    """Where the locked Debian build root comes from (gapforge.fetch.debian.DebianInputs)."""

    def build_lock_sha256(self) -> str:
        """The build root lock's digest as it is now."""
        ...

    def prepare_build_root(self) -> None:
        """Every locked .deb of the build root in the cache (the lock may be refreshed)."""
        ...

    def make_build_root(self, work: Path) -> Path:
        """The root, installed from the cached .debs into `work`."""
        ...


class SdistBuilder:
    """Builds a profile's sdists into wheels inside a root made from the locked Debian build set,
    network cut, in a fixed environment; the host's compilers, Python and paths are never used.
    The root is made on first need and removed on close."""

    def __init__(
        self, cache: Cache, profile: Profile, build_lock: PythonLock, roots: BuildRootSource
    ) -> None:
        self.cache = cache
        self.profile = profile
        self.build_lock = build_lock
        self.roots = roots
        self._stack = contextlib.ExitStack()
        self._root: Path | None = None
        self._tools: list[Path] | None = None
        self.seconds = 0.0
        """Time spent building (root included), for the build report."""

    def __enter__(self) -> SdistBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def key(self, requirement: LockedRequirement, sdist: Path) -> str:
        settings = self.profile.sdist_builds.get(requirement.key)
        return build_key(
            sdist.parent.name,
            self.build_lock,
            self.roots.build_lock_sha256(),
            self.profile.python,
            settings.cmake_args if settings else (),
            settings.wheel_exclude if settings else (),
        )

    def cached(self, key: str) -> Path | None:
        known = self.cache.index_get("sdist-builds", key, required=("sha256",))
        return self.cache.find_file(known["sha256"]) if known is not None else None

    def wheel(self, requirement: LockedRequirement, sdist: Path) -> Path:
        """The wheel built from `sdist` (cached by every input that can change its bytes)."""
        key = self.key(requirement, sdist)
        wheel = self.cached(key)
        if wheel is None:
            self.roots.prepare_build_root()  # a refreshed build root lock is another input
            key = self.key(requirement, sdist)
            with self.cache.exclusive(f"sdist-build-{key[:32]}"):
                wheel = self.cached(key)  # built by another process while we waited?
                if wheel is None:
                    started = time.monotonic()
                    try:
                        wheel = self._build(requirement, sdist, key)
                    finally:
                        self.seconds += time.monotonic() - started
                    return wheel
        note(f"{requirement.pin}: wheel built from its sdist is cached ({wheel.name})")
        return wheel

    def root(self) -> Path:
        """The locked build root, for other offline builds (Triton's launcher); made on first need."""
        self.roots.prepare_build_root()
        return self._root_and_tools()[0]

    def _root_and_tools(self) -> tuple[Path, list[Path]]:
        if self._root is None or self._tools is None:
            work = self._stack.enter_context(self.cache.tempdir("build-root-"))
            self._root = self.roots.make_build_root(work)
            tools = fetch_locked_files(self.cache, self.build_lock, self.profile, binary=True)
            self._tools = sorted(tools.values())
        return self._root, self._tools

    def _build(self, requirement: LockedRequirement, sdist: Path, key: str) -> Path:
        settings = self.profile.sdist_builds.get(requirement.key)
        cmake_args = settings.cmake_args if settings else ()
        wheel_exclude = settings.wheel_exclude if settings else ()
        root, tools = self._root_and_tools()
        with self.cache.tempdir("sdist-build-") as work:
            (work / "src").mkdir()
            (work / "tools").mkdir()
            (work / "out").mkdir()
            for tool in tools:
                shutil.copyfile(tool, work / "tools" / tool.name)
            _unpack_sdist(sdist, work / "src")
            tops = [p for p in (work / "src").iterdir() if p.is_dir()]
            if len(tops) != 1:
                raise FetchError(
                    f"{sdist.name}: expected one top folder in the sdist, found {len(tops)}: "
                    "this sdist cannot be built; pin another version in requirements.in"
                )
            top = f"{SOURCE_INSIDE}/{tops[0].name}"
            prefix_map = f"-ffile-prefix-map={top}=."
            env = {
                "SOURCE_DATE_EPOCH": str(self.profile.source_date_epoch),
                "CMAKE_ARGS": " ".join(
                    [
                        *cmake_args,
                        f"-DCMAKE_C_FLAGS={prefix_map}",
                        f"-DCMAKE_CXX_FLAGS={prefix_map}",
                    ]
                ),
                "CMAKE_BUILD_PARALLEL_LEVEL": str(len(os.sched_getaffinity(0)) or 1),
                "CFLAGS": prefix_map,
                "CXXFLAGS": prefix_map,
                "PIP_NO_INDEX": "1",
                "PIP_NO_CACHE_DIR": "1",
            }
            pip = "/build/venv/bin/python -m pip --disable-pip-version-check"
            script = " && ".join([
                "python3 -m venv /build/venv",
                f"{pip} install --quiet --no-index --no-deps /build/tools/*.whl",
                f"cd {top}",
                f"{pip} wheel --no-deps --no-build-isolation --no-index --no-cache-dir "
                "--config-settings=build-dir=/build/cmake "
                + " ".join(f"--config-settings=wheel.exclude={p}" for p in wheel_exclude)
                + " -w /build/out .",
            ])  # fmt: skip
            log_path = self.cache.root / "logs" / f"sdist-build-{requirement.key}-{key[:12]}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            what = f"{requirement.pin}: building a wheel from the sdist in the locked Debian build root, network cut"
            with waiting(what, SDIST_ESTIMATES.get(requirement.key, "")):
                returncode = run_in_root(root, {"/build": work}, script, env, log_path)
            if returncode != 0:
                tail = log_path.read_text(errors="replace")[-2500:]
                raise FetchError(
                    f"building {requirement.pin} from its sdist failed (log: {log_path}):\n{tail}\n"
                    f"Fix the build settings in images/{self.profile.name}/profile.toml "
                    "[sdist_builds], the toolchain in build-requirements.in, or the Debian build "
                    "root's packages in [build_root]."
                )
            built = sorted((work / "out").glob("*.whl"))
            if len(built) != 1:
                raise FetchError(
                    f"building {requirement.pin} from its sdist left {len(built)} wheels instead "
                    f"of one (log: {log_path}): check the sdist's build backend"
                )
            cached = self.cache.put_file(built[0], move=True)
        self.cache.index_put("sdist-builds", key, {
            "sha256": cached.parent.name, "filename": cached.name,
            "sdist_sha256": sdist.parent.name, "requirement": requirement.pin,
        })  # fmt: skip
        note(f"{requirement.pin}: built {cached.name} (log: {log_path})")
        return cached


BUILD_PATH = "/build/venv/bin:/usr/local/bin:/usr/bin:/bin"


def run_in_root(
    root: Path, binds: dict[str, Path], script: str, env: dict[str, str], log: Path
) -> int:
    """Run `script` (sh) inside `root` with bubblewrap: no network, a fresh environment (nothing of
    the host's but what `env` says), fixed locale, time zone, umask and host name."""
    if shutil.which("bwrap") is None:
        raise EnvironmentProblem(
            "bubblewrap (bwrap) is needed to build sdists in the locked Debian root: run "
            "'bash scripts/setup.sh' (or apt-get install bubblewrap)"
        )
    fixed = {
        "PATH": BUILD_PATH, "HOME": "/build/home", "LC_ALL": "C", "LANG": "C", "TZ": "UTC",
        "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": "/tmp",
    }  # fmt: skip
    command = [
        "bwrap", "--bind", str(root), "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
        "--unshare-all", "--hostname", "gapforge-build", "--die-with-parent", "--clearenv",
    ]  # fmt: skip
    for inside, host in binds.items():
        command += ["--bind", str(host), inside]
    for name, value in sorted({**fixed, **env}.items()):
        command += ["--setenv", name, value]
    command += ["--chdir", "/", "/bin/sh", "-c", f"umask 022 && mkdir -p /build/home && {script}"]
    with open(log, "w") as handle:
        return subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, check=False
        ).returncode
