"""Python lockfiles: pip-compile --generate-hashes, parsed into typed entries, checked for staleness.

A lockfile starts with a header naming the sha256 of the inputs it was compiled from; when the
inputs change, the lock is stale and `nox -s build` says to run `nox -s lock`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gapforge.errors import LockError

INPUTS_HEADER = "# gapforge-inputs-sha256: "
LOCK_COMMAND = "nox -s lock"

_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)"
    r"(?:\s*;\s*(?P<marker>[^\\]+?))?\s*(?P<hashes>(?:--hash=sha256:[0-9a-f]{64}\s*)+)$"
)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def canonical_name(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class LockedRequirement:
    """One pinned requirement with every sha256 its files may have."""

    name: str
    version: str
    hashes: tuple[str, ...]
    marker: str = ""

    @property
    def key(self) -> str:
        return canonical_name(self.name)

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    def line(self) -> str:
        """The requirement as pip reads it with --require-hashes."""
        marker = f" ; {self.marker}" if self.marker else ""
        hashes = " ".join(f"--hash=sha256:{h}" for h in self.hashes)
        return f"{self.pin}{marker} {hashes}"


@dataclass(frozen=True)
class PythonLock:
    path: Path
    inputs_sha256: str
    requirements: tuple[LockedRequirement, ...]

    def by_name(self) -> dict[str, LockedRequirement]:
        return {r.key: r for r in self.requirements}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments; keep the first line number of each."""
    result: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line.strip())
        joined = " ".join(part for part in buffer if part)
        buffer = []
        if joined:
            result.append((start, joined))
    return result


def parse_python_lock(path: Path) -> PythonLock:
    """Parse a hash-locked requirements file; every line must be `name==version --hash=…`."""
    if not path.is_file():
        raise LockError(f"{path}: the lockfile is missing: run '{LOCK_COMMAND}' to create it")
    text = path.read_text(encoding="utf-8")
    inputs = ""
    for line in text.splitlines():
        if line.startswith(INPUTS_HEADER):
            inputs = line[len(INPUTS_HEADER) :].strip()
    if not re.fullmatch(r"[0-9a-f]{64}", inputs):
        raise LockError(
            f"{path}: no '{INPUTS_HEADER.strip()}' header: the file was not written by "
            f"'{LOCK_COMMAND}' or was edited by hand; run '{LOCK_COMMAND}' to regenerate it"
        )
    requirements: list[LockedRequirement] = []
    problems: list[str] = []
    for number, line in _logical_lines(text):
        match = _REQUIREMENT.match(line)
        if match is None:
            problems.append(f"{path}:{number}: not a pinned, hashed requirement: {line[:80]!r}")
            continue
        requirements.append(
            LockedRequirement(
                name=match["name"],
                version=match["version"],
                hashes=tuple(_HASH.findall(match["hashes"])),
                marker=(match["marker"] or "").strip(),
            )
        )
    if problems:
        raise LockError("\n".join([*problems, f"Run '{LOCK_COMMAND}' to regenerate the lockfile."]))
    names = [r.key for r in requirements]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LockError(f"{path}: {', '.join(duplicates)} pinned twice: run '{LOCK_COMMAND}'")
    return PythonLock(path=path, inputs_sha256=inputs, requirements=tuple(requirements))


def inputs_sha256(*inputs: Path | bytes) -> str:
    """The sha256 over the inputs of a lockfile, in order (files by content)."""
    digest = hashlib.sha256()
    for item in inputs:
        data = item if isinstance(item, bytes) else item.read_bytes()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def check_fresh(lock: PythonLock, expected_inputs: str, inputs_shown: str) -> None:
    """Raise if the lock was compiled from other inputs than the ones on disk now."""
    if lock.inputs_sha256 != expected_inputs:
        raise LockError(
            f"{lock.path} is stale: {inputs_shown} changed since it was compiled: "
            f"run '{LOCK_COMMAND}' and commit the new lockfile"
        )


# pip settings of a machine that must not shape an isolated lock: extra indexes, find-links (a local
# CPU torch, say) and constraint files. The index itself (PIP_INDEX_URL, a PyPI mirror) is kept.
_MACHINE_PIP_SETTINGS = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")


def isolated_pip_env() -> dict[str, str]:
    """This environment without the machine's pip config files and package-source settings."""
    env = {k: v for k, v in os.environ.items() if k not in _MACHINE_PIP_SETTINGS}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def compile_python_lock(
    requirements_in: Path,
    output: Path,
    header: str,
    isolated: bool = False,
    inputs: tuple[Path, ...] = (),
) -> PythonLock:
    """Run pip-compile --generate-hashes on `requirements_in`, then write `output` atomically.

    `isolated` resolves against the package index alone (see `isolated_pip_env`). `inputs` (default:
    `requirements_in` alone) are the files whose sha256 the header records for the freshness check.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    command = [
        sys.executable, "-m", "piptools", "compile",
        "--quiet", "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-header",
        "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
        "--resolver=backtracking", "--output-file", str(tmp.resolve()), requirements_in.name,
    ]  # fmt: skip
    if output.is_file():
        # Start from the current pins so a re-lock moves only what it must.
        tmp.write_bytes(output.read_bytes())
    try:
        # relative to its folder, so no host path ends up in the lock's comments
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd=requirements_in.parent,
            env=isolated_pip_env() if isolated else None,
        )
        if result.returncode != 0:
            raise LockError(
                f"pip-compile failed for {requirements_in}:\n{result.stderr.strip()[-3000:]}\n"
                "Fix the requirement it names in that file (or check that the package index is reachable)."
            )
        body = tmp.read_text(encoding="utf-8")
        digest = inputs_sha256(*(inputs or (requirements_in,)))
        text = header + f"{INPUTS_HEADER}{digest}\n" + body
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return parse_python_lock(output)
