"""Image profiles: `images/<name>/` holds what every image of that profile shares, and what those
images need of their host: the CUDA release and minimum NVIDIA driver, the x86 features of llama.cpp
(as image labels and environment)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.errors import GapforgeError, LockError
from gapforge.lock.python import PythonLock

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SdistBuild:
    """How one package without a usable wheel is built from its locked sdist."""

    name: str
    cmake_args: tuple[str, ...] = ()
    wheel_exclude: tuple[str, ...] = ()
    """Paths left out of the built wheel (scikit-build-core's wheel.exclude)."""


@dataclass(frozen=True)
class DebianBase:
    """A Debian package set: mmdebstrap's variant plus `include`, resolved against `mirrors`."""

    suite: str
    variant: str
    include: tuple[str, ...]
    mirrors: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    name: str
    directory: Path
    architecture: str
    python: str
    source_date_epoch: int
    debian: DebianBase
    build_root: DebianBase | None = None
    """The locked Debian root that compiles the profile's sdists (`[build_root]`); None: no sdists."""
    sdist_builds: dict[str, SdistBuild] = field(default_factory=dict)
    own_layer_min_bytes: int = 150 * 1024 * 1024
    lock_isolated: bool = False
    """Resolve the lock against the package index alone, ignoring this machine's pip config."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every image of this profile (`[env]`)."""
    triton_launcher: bool = False
    """`[triton] prebuilt_launcher`: compile Triton's CUDA driver module in the build root and ship
    it, so Triton's kernels (flex attention, Liger) run in an image without a C compiler."""
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """`[features]`: each named feature set → its root requirements (gapforge.lock.features)."""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_cuda(self) -> bool:
        return self.name == "cuda" or bool(self.raw.get("cuda", False))

    @property
    def requirements_in(self) -> Path:
        return self.directory / "requirements.in"

    @property
    def build_requirements_in(self) -> Path:
        return self.directory / "build-requirements.in"

    @property
    def python_tag(self) -> str:
        return "cp" + self.python.replace(".", "")


DEFAULT_MIRRORS = (
    "deb http://deb.debian.org/debian {suite} main",
    "deb http://deb.debian.org/debian {suite}-updates main",
    "deb http://deb.debian.org/debian-security {suite}-security main",
)


def load_profile(name: str, images_dir: Path | None = None) -> Profile:
    """Read `images/<name>/profile.toml`."""
    directory = (images_dir or REPO_ROOT / "images") / name
    path = directory / "profile.toml"
    if not path.is_file():
        known = sorted(p.name for p in directory.parent.iterdir() if (p / "profile.toml").is_file())
        raise GapforgeError(
            f"{path}: no such image profile {name!r}: use one of {', '.join(known) or '(none)'}"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise GapforgeError(f"{path}: not valid TOML: {exc}: fix the file") from None
    try:
        deb = raw["debian"]
        suite = str(deb["suite"])
        debian = DebianBase(
            suite=suite,
            variant=str(deb.get("variant", "minbase")),
            include=tuple(sorted(deb.get("include", []))),
            mirrors=tuple(m.format(suite=suite) for m in deb.get("mirrors", DEFAULT_MIRRORS)),
        )
        build_root = None
        if "build_root" in raw:
            build_root = DebianBase(
                suite=suite,
                variant=str(raw["build_root"].get("variant", "minbase")),
                include=tuple(sorted(raw["build_root"].get("include", []))),
                mirrors=debian.mirrors,
            )
        builds = {
            pkg: SdistBuild(
                name=pkg,
                cmake_args=tuple(conf.get("cmake_args", ())),
                wheel_exclude=tuple(conf.get("wheel_exclude", ())),
            )
            for pkg, conf in raw.get("sdist_builds", {}).items()
        }
        if builds and build_root is None:
            raise KeyError("build_root (the profile builds sdists, so it needs one)")
        triton_launcher = bool(raw.get("triton", {}).get("prebuilt_launcher", False))
        if triton_launcher and build_root is None:
            raise KeyError("build_root (the profile pre-builds Triton's launcher, so it needs one)")
        return Profile(
            name=str(raw["name"]),
            directory=directory,
            architecture=str(raw.get("architecture", "amd64")),
            python=str(raw["python"]),
            source_date_epoch=int(raw["source_date_epoch"]),
            debian=debian,
            build_root=build_root,
            sdist_builds=builds,
            own_layer_min_bytes=int(raw.get("layers", {}).get("own_layer_min_mb", 150))
            * 1024
            * 1024,
            lock_isolated=bool(raw.get("lock", {}).get("isolated", False)),
            env={str(k): str(v) for k, v in raw.get("env", {}).items()},
            triton_launcher=triton_launcher,
            features={
                str(name): tuple(str(r) for r in roots)
                for name, roots in raw.get("features", {}).items()
            },
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GapforgeError(
            f"{path}: missing or bad field {exc}: compare with images/cpu/profile.toml"
        ) from None


# --- CUDA profile: what the host's driver must offer --------------------------------------------------

# Minimum Linux driver of each CUDA toolkit release (NVIDIA's CUDA release notes, "CUDA Toolkit and
# Corresponding Driver Versions"). The image runs on this driver or newer.
CUDA_MIN_DRIVER = {
    "11.8": "520.61.05", "12.0": "525.60.13", "12.1": "530.30.02", "12.2": "535.54.03",
    "12.3": "545.23.06", "12.4": "550.54.14", "12.5": "555.42.02", "12.6": "560.28.03",
    "12.8": "570.26", "12.9": "575.51.03", "13.0": "580.65.06",
}  # fmt: skip
# The lock entry that names the CUDA release torch's wheels were built against, most telling first.
CUDA_VERSION_SOURCES = ("cuda-toolkit", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12")


def cuda_version(lock: PythonLock) -> str:
    """`major.minor` of the CUDA release the locked torch wheels use (from cuda-toolkit or the runtime)."""
    pins = lock.by_name()
    for name in CUDA_VERSION_SOURCES:
        if name in pins:
            return ".".join(pins[name].version.split(".")[:2])
    raise LockError(
        f"{lock.path}: no {' / '.join(CUDA_VERSION_SOURCES)} pin, so the image's CUDA release is unknown: "
        "the cuda profile needs PyPI's CUDA build of torch; check its requirements.in and run 'nox -s lock'"
    )


def cuda_min_driver(version: str) -> str:
    """The oldest NVIDIA driver that runs a CUDA `version` (major.minor) application."""
    if version in CUDA_MIN_DRIVER:
        return CUDA_MIN_DRIVER[version]
    raise LockError(
        f"CUDA {version}: its minimum driver is not in gapforge/profile.py CUDA_MIN_DRIVER: add it from "
        "NVIDIA's CUDA release notes"
    )


FEATURES_LABEL = "io.gapforge.features"
"""The image's feature sets, `base,preference` (gapforge_runtime/features.py decides them)."""


# --- llama.cpp: the x86 features its library needs of the host CPU -----------------------------------

LLAMA_CPP_PACKAGE = "llama-cpp-python"
CPU_BASELINE_LABEL = "io.gapforge.llama_cpp.cpu_baseline"
CPU_BASELINE_ENV = "GAPFORGE_LLAMA_CPP_CPU_BASELINE"
"""Read by the runtime (gapforge_runtime.preflight) before it loads llama.cpp: keep the names equal."""

# ggml's CMake switch for each x86 instruction set → the name ggml reports it by, which the runtime
# maps to a /proc/cpuinfo flag. SSE3 and SSSE3 have no switch: every AVX CPU has them.
GGML_CPU_FEATURES = {
    "GGML_SSE42": "SSE42", "GGML_AVX": "AVX", "GGML_AVX_VNNI": "AVX_VNNI", "GGML_AVX2": "AVX2",
    "GGML_BMI2": "BMI2", "GGML_FMA": "FMA", "GGML_F16C": "F16C", "GGML_AVX512": "AVX512",
    "GGML_AVX512_VBMI": "AVX512_VBMI", "GGML_AVX512_VNNI": "AVX512_VNNI",
    "GGML_AVX512_BF16": "AVX512_BF16", "GGML_AMX_TILE": "AMX_TILE", "GGML_AMX_INT8": "AMX_INT8",
    "GGML_AMX_BF16": "AMX_BF16",
}  # fmt: skip
_CMAKE_DEFINE = re.compile(r"^-D\s*([A-Za-z0-9_]+)(?::[A-Za-z]+)?=(.*)$")
_CMAKE_FALSE = {"", "0", "OFF", "NO", "FALSE", "N", "IGNORE", "NOTFOUND"}


def _cmake_true(value: str) -> bool:
    """CMake's truth of a -D value: ON, YES, TRUE, Y or a non-zero number."""
    value = value.strip().upper()
    return value not in _CMAKE_FALSE and not value.endswith("-NOTFOUND")


def cpu_baseline(cmake_args: Sequence[str], where: str) -> list[str]:
    """The x86 features, sorted, that llama.cpp built with these CMake arguments needs of its CPU.

    Only the features switched on count: the wheel is built with SOURCE_DATE_EPOCH set, and then
    ggml turns every feature it is not told about off (GGML_NATIVE_DEFAULT is OFF).
    """
    switches: dict[str, bool] = {}
    for arg in cmake_args:
        match = _CMAKE_DEFINE.match(arg.strip())
        if match:
            switches[match.group(1)] = _cmake_true(match.group(2))  # the last -D wins, as in CMake
    if switches.get("GGML_NATIVE"):
        raise GapforgeError(
            f"{where}: -DGGML_NATIVE=ON builds llama.cpp for the build machine's own CPU, so no "
            "image could say which CPUs it runs on: set -DGGML_NATIVE=OFF and switch on the "
            "features of a fixed baseline (-DGGML_AVX2=ON, -DGGML_FMA=ON, ...), as "
            "images/cpu/profile.toml does"
        )
    return sorted(
        GGML_CPU_FEATURES[name] for name, on in switches.items() if on and name in GGML_CPU_FEATURES
    )


def llama_cpp_cpu_baseline(profile: Profile) -> str | None:
    """`AVX,AVX2,F16C,FMA`: what the profile's llama.cpp needs; None if the profile does not build it."""
    for name, build in sorted(profile.sdist_builds.items()):
        if re.sub(r"[-_.]+", "-", name).lower() == LLAMA_CPP_PACKAGE:
            where = f'{profile.directory / "profile.toml"}: sdist_builds."{name}".cmake_args'
            return ",".join(cpu_baseline(build.cmake_args, where))
    return None


TRITON_LAUNCHER_ENV = "GAPFORGE_TRITON_LAUNCHER"
TRITON_LAUNCHER_DIR = "/opt/gapforge/triton"
"""Where the image keeps Triton's pre-built CUDA driver module and its record (`launcher.json`)."""


def profile_env(profile: Profile, lock: PythonLock) -> dict[str, str]:
    """The profile's own variables; for CUDA also NVIDIA_REQUIRE_CUDA, which the container toolkit
    checks; and the CPU baseline of llama.cpp, which the runtime checks before it loads the library."""
    env = dict(profile.env)
    if profile.is_cuda:
        env["NVIDIA_REQUIRE_CUDA"] = f"cuda>={cuda_version(lock)}"
    baseline = llama_cpp_cpu_baseline(profile)
    if baseline is not None:
        env[CPU_BASELINE_ENV] = baseline
    if profile.triton_launcher:
        env[TRITON_LAUNCHER_ENV] = TRITON_LAUNCHER_DIR
    return env


def profile_labels(profile: Profile, lock: PythonLock) -> dict[str, str]:
    """Labels that say what the image needs of its host (CUDA release, minimum NVIDIA driver, the
    x86 features of its llama.cpp)."""
    labels = {"io.gapforge.accelerator": "none"}
    if profile.is_cuda:
        version = cuda_version(lock)
        labels = {
            "io.gapforge.accelerator": "cuda",
            "io.gapforge.cuda.version": version,
            "io.gapforge.cuda.min_driver": cuda_min_driver(version),
        }
    baseline = llama_cpp_cpu_baseline(profile)
    if baseline is not None:
        labels[CPU_BASELINE_LABEL] = baseline
    return labels
