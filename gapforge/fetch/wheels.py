"""Fetch locked wheels and sdists into the cache, and build sdists into wheels offline.

Every file is downloaded with `pip download --require-hashes`, then hashed again by the cache before
it is trusted. Sdists (packages with no wheel for the image's platform) are built inside a root made
from the profile's locked Debian build set (compilers, libc, Python headers: never the host's), with
the locked build tools, the network cut, a fixed path, environment, locale, time zone and umask,
SOURCE_DATE_EPOCH set and no native CPU flags: the same sdist gives the same wheel on any machine.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Protocol

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


# --- venvs of cached wheels -------------------------------------------------------------------------


def make_venv(cache: Cache, name: str, wheels: list[Path]) -> Path:
    """A venv in the cache holding exactly `wheels` (already hash-checked), made once per name and
    verified on every use like any cache entry: each installed file against its wheel's RECORD."""
    venv = cache.root / "venvs" / name
    marker = venv / ".complete"
    expected = sorted(p.name for p in wheels)
    with cache.exclusive(f"venv-{name}"):
        if marker.is_file():
            problems = verify_venv(venv, expected)
            if not problems:
                os.utime(marker)  # last use, for 'gapforge cache prune'
                return venv
            note(f"the cached venv {venv} is damaged ({problems[0]}): making it again")
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        note(f"making the venv {venv} from {len(wheels)} cached wheels")
        _run_checked([sys.executable, "-m", "venv", str(venv)], f"could not create the venv {venv}",
                     "check that this Python has the venv module (Debian: apt-get install python3-venv)")  # fmt: skip
        _run_checked(
            [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
             "--disable-pip-version-check", *(str(p) for p in sorted(wheels))],
            f"could not install the {len(wheels)} locked wheels into {venv}",
            "check the lock's wheels fit this machine's Python, or run 'nox -s lock'",
        )  # fmt: skip
        marker.write_text(json.dumps({"wheels": expected}, indent=1), encoding="utf-8")
        return venv


def _run_checked(command: list[str], what: str, fix: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise FetchError(f"{what}:\n{tail}\nFix: {fix}.")


def verify_venv(venv: Path, expected_wheels: list[str]) -> list[str]:
    """Problems with a cached venv: wheels other than expected, or files that differ from their
    wheel's RECORD (sha256 and size). Empty when it is intact."""
    try:
        recorded = json.loads((venv / ".complete").read_text(encoding="utf-8")).get("wheels")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded != expected_wheels:
        return ["it was made from other wheels"]
    problems: list[str] = []
    records = sorted(venv.glob("lib/python*/site-packages/*.dist-info/RECORD"))
    if len(records) < len(expected_wheels):
        return [f"{len(expected_wheels) - len(records)} installed packages are missing"]
    for record in records:
        site = record.parent.parent
        with open(record, newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                if len(row) < 3 or not row[1].startswith("sha256="):
                    continue
                path = (site / row[0]).resolve() if ".." in row[0] else site / row[0]
                try:
                    with open(path, "rb") as f:
                        digest = hashlib.file_digest(f, "sha256").digest()
                except OSError:
                    problems.append(f"{row[0]} is missing")
                    continue
                want = row[1].removeprefix("sha256=")
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != want:
                    problems.append(f"{row[0]} was changed")
                if len(problems) > 10:
                    return problems
    return problems


# --- sdist -> wheel, in the locked Debian build root -------------------------------------------------

SOURCE_INSIDE = "/build/src"
"""Where an sdist is unpacked inside the build root: the same path on every machine."""


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
            with tarfile.open(sdist) as archive:
                archive.extractall(work / "src", filter="data")
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
            note(f"{requirement.pin}: building a wheel from the sdist in the locked Debian build "
                 "root, network cut (several minutes on 2 cores for llama.cpp)")  # fmt: skip
            log_path = self.cache.root / "logs" / f"sdist-build-{requirement.key}-{key[:12]}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
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
