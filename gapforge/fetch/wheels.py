"""Fetch locked wheels and sdists into the cache; venvs made from cached wheels; flit wheels.

Every file is downloaded with `pip download --require-hashes`, then hashed again by the cache before
it is trusted. Sdists are built into wheels offline by gapforge.fetch.sdist.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gapforge.cache import Cache
from gapforge.errors import FetchError
from gapforge.lock.python import LockedRequirement, PythonLock, canonical_name
from gapforge.profile import Profile
from gapforge.progress import note, waiting

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
            kind = "wheels" if binary else "sdists"
            with waiting(f"pip download of {len(missing)} locked {kind}"):
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
        with waiting(f"making the venv {venv} from {len(wheels)} cached wheels"):
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
