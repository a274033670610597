"""`gapforge run` and `gapforge preflight`: the sealed image on the operator's data, inside the gap.

Always `--network none --read-only`, tmpfs scratch, the data mounted read-only, one output folder,
a non-root user, no capabilities; `--gpus all` when the image is a cuda image and a GPU is present.
The runtime's output streams through and its exit status is passed on (0 pass, 1 a gate failed,
2 an input problem).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import INDEX, PRETEST
from gapforge.bundle.runbook import human_size
from gapforge.engine import PROFILE_LABEL, SealedRun, run_sealed
from gapforge.errors import BundleError
from gapforge.fetch.rootfs import IMAGE_USER, USER_ID

DATA_DIR = "/data"
OUTPUTS = "/outputs"
GPU_CHOICES = ("auto", "all", "none")


@dataclass(frozen=True)
class Target:
    """The image to run: from a bundle (its ref and the image ID it must have) or a plain reference."""

    ref: str
    config_digest: str
    profile: str
    bundle: Path | None = None

    @property
    def cuda(self) -> bool:
        return self.profile.startswith("cuda")


def resolve_target(client: Any, target: str) -> Target:
    """A bundle folder or an image reference, checked against what the engine has loaded."""
    import docker.errors

    path = Path(target)
    if path.is_dir():
        if not (path / INDEX).is_file():
            raise BundleError(
                f"{path}: not a bundle (no {INDEX}): pass a bundle folder or an image reference"
            )
        index = json.loads((path / INDEX).read_text(encoding="utf-8"))
        image = index["image"]
        wanted = Target(image["ref"], image["config_digest"], image.get("profile", ""), path)
    elif target.startswith(("/", "./", "../")) or target.endswith("/"):
        raise BundleError(
            f"{path}: no such bundle folder: pass the folder that 'gapforge build' wrote in dist/"
        )
    else:
        wanted = Target(target, "", "")
    try:
        found = client.images.get(wanted.ref)
    except docker.errors.ImageNotFound:
        fix = (
            f"run 'gapforge load {path}' first"
            if wanted.bundle
            else "load it first ('gapforge load BUNDLE')"
        )
        raise BundleError(f"the Docker engine has no image {wanted.ref}: {fix}") from None
    except docker.errors.APIError:
        raise BundleError(
            f"{target}: neither a bundle folder nor an image reference: pass dist/<recipe>-<version> "
            "or an image such as gapforge/<recipe>:<version>"
        ) from None
    if wanted.config_digest and found.id != wanted.config_digest:
        raise BundleError(
            f"the engine's {wanted.ref} is image {found.id}, not this bundle's {wanted.config_digest}: "
            f"run 'gapforge load {path}' again"
        )
    labels = found.labels or {}
    return Target(
        wanted.ref, found.id, wanted.profile or labels.get(PROFILE_LABEL, ""), wanted.bundle
    )


def gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


def use_gpus(choice: str, target: Target) -> bool:
    if choice == "all":
        return True
    if choice == "none":
        return False
    return target.cuda and gpu_present()


def prepare_out(out: Path) -> str:
    """Create the output folder; return the user to run as. As root: the image's own user, owning
    the folder. Otherwise: the caller's uid:gid, so the outputs are theirs."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(
            f"--out {out}: cannot create it ({exc.strerror}): choose a writable folder"
        ) from None
    if os.geteuid() == 0:
        os.chown(out, USER_ID, USER_ID)
        return IMAGE_USER
    if not os.access(out, os.W_OK):
        raise BundleError(f"--out {out}: not writable by you: choose a folder you can write")
    return f"{os.getuid()}:{os.getgid()}"


def _mount_file(path: Path, label: str) -> tuple[str, str]:
    if not path.is_file():
        raise BundleError(f"{label} {path}: no such file: pass your JSON-lines data file")
    resolved = path.resolve()
    folder = DATA_DIR if label == "--data" else f"{DATA_DIR}/{label.strip('-')}"
    return str(resolved), f"{folder}/{resolved.name}"


def sealed_run(
    target: Target, command: list[str], data: dict[str, Path], out: Path, gpus: bool
) -> tuple[SealedRun, list[str]]:
    """The sealed run of `command`, with each data file mounted read-only and passed as its option."""
    read_only: dict[str, str] = {}
    args = list(command)
    for option, path in data.items():
        host, inside = _mount_file(path, option)
        read_only[host] = inside
        args += [option, inside]
    user = prepare_out(out)
    run = SealedRun(
        image=target.ref, command=args, mounts={str(out.resolve()): OUTPUTS},
        read_only_mounts=read_only, user=user, gpus=gpus,
    )  # fmt: skip
    return run, args


def run_image(
    target: str, data: Path, out: Path, gpus: str = "auto", validation: Path | None = None,
    test: Path | None = None, extra: list[str] | None = None, timeout: float | None = None,
) -> int:  # fmt: skip
    """Run the recipe on `data` into `out`; the runtime's output streams to stdout. Returns its status."""
    from gapforge import engine
    from gapforge.progress import step

    client = engine.connect()
    resolved = resolve_target(client, target)
    files = (
        {"--data": data}
        | ({"--validation": validation} if validation else {})
        | ({"--test": test} if test else {})
    )
    run, args = sealed_run(resolved, ["run", *(extra or [])], files, out, use_gpus(gpus, resolved))
    step(f"{resolved.ref} {' '.join(args)}  (--network none --read-only, user {run.user}"
         f"{', --gpus all' if run.gpus else ''}) → {out}")  # fmt: skip

    def passthrough(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    return run_sealed(client, run, passthrough, timeout)


# --- preflight ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _pretest_output_bytes(bundle: Path | None) -> int:
    if bundle is None or not (bundle / PRETEST).is_file():
        return 0
    evidence = json.loads((bundle / PRETEST).read_text(encoding="utf-8"))
    return sum(int(v.get("size", 0)) for v in evidence.get("outputs", {}).values())


def _quiet_run(client: Any, run: SealedRun) -> tuple[int, str]:
    output: list[bytes] = []
    status = run_sealed(client, run, output.append, timeout=900)
    return status, b"".join(output).decode(errors="replace")


def preflight(target: str, data: Path, out: Path) -> list[Check]:
    """Go/no-go before a long run: engine, image, offline start, data, output folder, disk, GPU."""
    from gapforge import engine

    checks: list[Check] = []
    client = engine.connect()
    checks.append(
        Check("docker engine", True, f"answers (version {engine.engine_version(client)})")
    )
    try:
        resolved = resolve_target(client, target)
    except BundleError as exc:
        return [*checks, Check("image", False, exc.message)]
    checks.append(
        Check("image", True, f"{resolved.ref} is loaded as {resolved.config_digest[:19]}…")
    )
    status, text = _quiet_run(client, SealedRun(resolved.ref, ["info", "--json"]))
    try:
        recipe = json.loads(text[text.index("{") :]).get("recipe") if status == 0 else None
    except ValueError:
        recipe = None
    checks.append(Check("starts offline", status == 0,
                        f"'info' ran with --network none: recipe {recipe}" if status == 0 else text[-500:]))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gapforge-preflight-") as scratch:
        try:
            run, _ = sealed_run(resolved, ["data"], {"--data": data}, Path(scratch), gpus=False)
            status, text = _quiet_run(client, run)
            lines = [line for line in text.strip().splitlines() if line.strip()]
            summary = [
                line for line in lines if line.startswith("[data]") and "starting" not in line
            ]
            detail = "; ".join(summary[:3]) if status == 0 else "\n".join(lines[-12:])
            checks.append(
                Check("data", status == 0, f"{data}: the image's own validation: {detail}")
            )
        except BundleError as exc:
            checks.append(Check("data", False, exc.message))
    try:
        user = prepare_out(out)
        free = shutil.disk_usage(out).free
        need = 2 * _pretest_output_bytes(resolved.bundle)
        room = free >= need
        detail = f"{out} is writable by {user}; {human_size(free)} free"
        if need:
            detail += f" (the pretest's outputs took {human_size(need // 2)} on sample data; yours need more)"
        checks.append(Check("output folder", room, detail))
    except BundleError as exc:
        checks.append(Check("output folder", False, exc.message))
    if resolved.cuda:
        present = gpu_present()
        checks.append(
            Check(
                "gpu",
                present,
                "nvidia-smi sees a GPU" if present else "no GPU visible (nvidia-smi -L failed)",
            )
        )
    return checks
