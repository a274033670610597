"""Image profiles: `images/<name>/` holds what every image of that profile shares."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.errors import GapforgeError

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
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GapforgeError(
            f"{path}: missing or bad field {exc}: compare with images/cpu/profile.toml"
        ) from None
