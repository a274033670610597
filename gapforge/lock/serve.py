"""Serving engines' locks: `lockfiles/<profile>.serve-<engine>.txt`, compiled from
`images/<profile>/serve-<engine>.in` under the profile's own lock as a constraint.

The constraint keeps every package the two images share at the training image's version; for
llama-cpp-python that is what lets the serving image reuse the wheel already built from its sdist.
The lock's header records the sha256 of both inputs, so a change to either makes it stale.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gapforge.errors import LockError
from gapforge.lock.python import (
    LOCK_COMMAND,
    PythonLock,
    check_fresh,
    compile_python_lock,
    inputs_sha256,
    parse_python_lock,
)
from gapforge.profile import Profile

SERVE_ENGINES = ("llama.cpp",)
"""Engines that have a serving image; `vllm` is the next one (issue 26)."""
CONSTRAINT_NAME = "profile-constraints.txt"
"""The constraint file's name in the lock's `# via -c …` comments (written beside a copy of the .in)."""


def serve_in(profile: Profile, engine: str) -> Path:
    return profile.directory / f"serve-{engine}.in"


def serve_lock_path(lock_dir: Path, profile: Profile, engine: str) -> Path:
    return lock_dir / f"{profile.name}.serve-{engine}.txt"


def profile_lock_path(lock_dir: Path, profile: Profile) -> Path:
    return lock_dir / f"{profile.name}.txt"


def serve_engines(profile: Profile) -> list[str]:
    """The engines this profile has a serving image for (a `serve-<engine>.in` in its folder)."""
    return [engine for engine in SERVE_ENGINES if serve_in(profile, engine).is_file()]


def constraints_of(lock: PythonLock) -> str:
    """The profile lock's pins without hashes: pip reads hashes in a constraint file as an error."""
    lines = [f"{r.pin} ; {r.marker}" if r.marker else r.pin for r in lock.requirements]
    return "\n".join(lines) + "\n"


def compile_serve_lock(profile: Profile, lock_dir: Path, engine: str, header: str) -> PythonLock:
    """pip-compile the engine's .in under the profile lock's pins; write the engine's lock."""
    source = serve_in(profile, engine)
    profile_lock = parse_python_lock(profile_lock_path(lock_dir, profile))
    output = serve_lock_path(lock_dir, profile, engine)
    work = lock_dir / f".serve-{engine}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        # A copy of the .in beside the constraints, so the lock's comments name no host path.
        copy = work / source.name
        copy.write_text(f"-c {CONSTRAINT_NAME}\n" + source.read_text(encoding="utf-8"))
        (work / CONSTRAINT_NAME).write_text(constraints_of(profile_lock), encoding="utf-8")
        lock = compile_python_lock(copy, output, header, profile.lock_isolated,
                                   inputs=(source, profile_lock.path))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check_serve_lock(lock, profile_lock, engine)
    return lock


def check_serve_lock(lock: PythonLock, profile_lock: PythonLock, engine: str) -> None:
    """Every package the serving lock shares with the profile's lock has the profile's version."""
    ours = profile_lock.by_name()
    moved = [
        f"{r.name} {r.version} (the profile pins {ours[r.key].version})"
        for r in lock.requirements
        if r.key in ours and ours[r.key].version != r.version
    ]
    if moved:
        raise LockError(
            f"{lock.path}: the {engine} serving lock moved {', '.join(moved)} away from "
            f"{profile_lock.path.name}: run '{LOCK_COMMAND}' (it compiles under the profile's pins)"
        )


def read_serve_lock(profile: Profile, lock_dir: Path, engine: str) -> PythonLock:
    """The engine's lock, checked fresh against its .in and the profile's lock, and in step with it."""
    source = serve_in(profile, engine)
    if not source.is_file():
        raise LockError(
            f"{source}: no such file: the '{profile.name}' profile has no {engine} serving image; "
            f"use one of {', '.join(serve_engines(profile)) or '(none)'} or add the file and run "
            f"'{LOCK_COMMAND}'"
        )
    lock = parse_python_lock(serve_lock_path(lock_dir, profile, engine))
    profile_lock = parse_python_lock(profile_lock_path(lock_dir, profile))
    check_fresh(lock, inputs_sha256(source, profile_lock.path), f"{source} or {profile_lock.path}")
    check_serve_lock(lock, profile_lock, engine)
    return lock
