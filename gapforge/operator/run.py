"""`gapforge run` and `gapforge preflight`: the sealed image on the operator's data, inside the gap.

Always `--network none --read-only`, tmpfs scratch, the data mounted read-only, one output folder,
a non-root user, no capabilities; `--gpus all` when the image is a cuda image and a GPU is present.
The runtime's output streams through and its exit status is passed on (0 pass, 1 a gate failed,
2 an input problem).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gapforge.bundle import INDEX
from gapforge.engine import PROFILE_LABEL, SealedRun, run_sealed
from gapforge.errors import BundleError
from gapforge.fetch.rootfs import IMAGE_USER, USER_ID
from gapforge.multinode import NodeRun, check_internal_network
from gapforge.operator.anchor import Anchor, NoTrustAnchor, no_anchor_message
from gapforge.operator.load import Refused
from gapforge.progress import step

DATA_DIR = "/data"
OUTPUTS = "/outputs"
PARENT_DIR = "/parent"
"""Where `--parent OUT_OLD` (an earlier run's output folder) is mounted, read-only."""
GPU_CHOICES = ("auto", "all", "none")


class RevokedRelease(BundleError):
    """The image's release was revoked since it was loaded: a failed check, exit 1."""

    exit_status = 1


@dataclass(frozen=True)
class Target:
    """The image to run: from a bundle (its ref and the image ID it must have) or a plain reference."""

    ref: str
    config_digest: str
    profile: str
    bundle: Path | None = None
    sums_sha256: str = ""
    """The checked bundle's SHA256SUMS digest ('' for an image reference)."""

    @property
    def cuda(self) -> bool:
        return self.profile.startswith("cuda")


def _checked_bundle(path: Path, anchor: Anchor, insecure: bool) -> Target:
    """The image a bundle folder names, from the record the trust gate returns (the signature by
    the anchor, every file but the archive's bytes, the documents against the archive); with
    `insecure`, a failure is printed loudly and the run goes on from the shape-checked bundle.json."""
    from gapforge.operator.gate import NotVerified, gate
    from gapforge.operator.verify import authenticate_index

    report = authenticate_index(path, anchor)
    if anchor.kind == "insecure":
        step(f"[bold red]--insecure[/]: {path} checked against its own key only (no origin)")
    if report.development_key:
        step("[yellow]signed with a build cache's development key: not for production[/]")
    try:
        verified = gate(report, "run")
    except NotVerified as refused:
        if not insecure:
            raise Refused(
                f"refusing to run {path}: it does not authenticate against {anchor.source}: "
                f"{refused.message} Run 'gapforge verify {path}' for the full check, and get an "
                "intact copy (or pass --insecure to run it anyway: never for production)"
            ) from None
        if not report.index:
            raise BundleError(
                f"{path}/{INDEX}: missing or malformed, so not even --insecure can say which image "
                "to run: get an intact copy of the bundle"
            ) from None
        details = (
            "; ".join(f"{p.file}: {p.message}" for p in report.problems) or "origin not proven"
        )
        step(f"[bold red]--insecure[/]: running {path} although it failed: {details}")
        image = report.index["image"]
        return Target(str(image.get("ref") or ""), str(image["config_digest"]),
                      str(image.get("profile") or ""), path, report.sums_sha256)  # fmt: skip
    return Target(
        verified.ref, verified.config_digest, verified.profile, path, verified.sums_sha256
    )


def _receipt_check(config_digest: str, ref: str, anchor: Anchor | None) -> None:
    """An image named by reference must have been imported by a verified `gapforge load` (or
    checked by `verify --receipt`) on this machine, under this site's trust anchor: its signed
    receipt, under the operator key, names this image ID, a SHA256SUMS digest and the anchor, and
    records a success."""
    from gapforge.operator.anchor import root_identity
    from gapforge.operator.receipt import find_receipt, operator_public_keys
    from gapforge.operator.tuf_client import trust_dir, trusted_root_installed

    identity = anchor.identity if anchor is not None else ""
    if anchor is None and trusted_root_installed():
        identity = root_identity()
    folder = trust_dir() / "receipts"
    receipt = find_receipt(folder, config_digest, operator_public_keys(trust_dir()), identity)
    if receipt is not None and anchor is None:
        _not_revoked(receipt, ref)
    if receipt is None:
        raise BundleError(
            f"{ref} is image {config_digest}, and no signed receipt in {folder} says a verified "
            "'gapforge load' imported it on this machine under this site's trust anchor: run the "
            "bundle folder instead (it is checked against your trust anchor), or load the bundle "
            "with 'gapforge load' first; --insecure runs it unchecked (never for production)"
        )


def _not_revoked(receipt: dict[str, Any], ref: str) -> None:
    """Under a trusted release root, a receipt authorises a run only while the release it loaded
    is not revoked in the site's newest verified release metadata (exit 1 when it is)."""
    from gapforge.operator.tuf_client import revocation_on_record

    name, version = str(receipt.get("name", "")), str(receipt.get("version", ""))
    revoked = revocation_on_record(name, version)
    if revoked is not None:
        raise RevokedRelease(
            f"{ref} is image {receipt.get('config_digest')}, loaded from {name} {version}, which the "
            f"release repository revoked on {revoked.get('at', 'an unknown date')}: "
            f"{revoked.get('reason', 'no reason given')}. It must not run: ask the release manager "
            "which release replaces it"
        )


def check_target(target: str, anchor: Anchor | None, insecure: bool = False) -> Target:
    """What `target` names, before any engine is touched: a bundle folder through the trust gate
    (its image ID from the signed bundle.json), or an image reference (checked against a receipt
    once the engine says which image ID it is)."""
    path = Path(target)
    if path.is_dir():
        if not (path / INDEX).is_file():
            raise BundleError(
                f"{path}: not a bundle (no {INDEX}): pass a bundle folder or an image reference"
            )
        if anchor is None:
            raise NoTrustAnchor(no_anchor_message("run"))
        return _checked_bundle(path, anchor, insecure)
    if target.startswith(("/", "./", "../")) or target.endswith("/"):
        raise BundleError(
            f"{path}: no such bundle folder: pass the folder that 'gapforge build' wrote in dist/"
        )
    return Target(target, "", "")


def resolve_target(
    client: Any, target: str, anchor: Anchor | None, insecure: bool = False,
    wanted: Target | None = None,
) -> Target:  # fmt: skip
    """A bundle folder (authenticated against `anchor`) or an image reference (which a verified
    load must have imported), checked against what the engine has loaded. The Target's
    `config_digest` is what runs: by image ID, never by tag. `wanted`: check_target's answer,
    when the caller checked before connecting to the engine."""
    import docker.errors

    path = Path(target)
    wanted = wanted or check_target(target, anchor, insecure)
    try:
        found = client.images.get(wanted.config_digest or wanted.ref)
    except docker.errors.ImageNotFound:
        fix = (
            f"run 'gapforge load {path}' first"
            if wanted.bundle
            else "load it first ('gapforge load BUNDLE')"
        )
        what = (
            f"{wanted.ref} (image ID {wanted.config_digest})"
            if wanted.config_digest
            else wanted.ref
        )
        raise BundleError(f"the Docker engine has no image {what}: {fix}") from None
    except docker.errors.APIError:
        raise BundleError(
            f"{target}: neither a bundle folder nor an image reference: pass dist/<recipe>-<version> "
            "or an image such as gapforge/<recipe>:<version>"
        ) from None
    if wanted.config_digest and found.id != wanted.config_digest:
        raise BundleError(
            f"the engine's image is {found.id}, not this bundle's {wanted.config_digest}: "
            f"run 'gapforge load {path}' again"
        )
    if wanted.bundle is None:
        if insecure:
            step(f"[bold red]--insecure[/]: running {target} ({found.id}) without a receipt check")
        else:
            _receipt_check(found.id, target, anchor)
    labels = found.labels or {}
    return Target(
        wanted.ref,
        found.id,
        wanted.profile or labels.get(PROFILE_LABEL, ""),
        wanted.bundle,
        wanted.sums_sha256,
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


def prepare_out(out: Path, ours: bool = False) -> str:
    """Create the output folder if missing; return the user to run as (never root).

    As root: a folder this call creates is given to the image's own user, who runs; an existing
    folder keeps its owner (gapforge never changes the owner of a folder it did not create) and the
    run is made as that owner, unless it is root, which is refused with the fix. Not as root: the
    caller's uid:gid, so the outputs are theirs."""
    existed = out.exists() and not ours  # `ours`: a scratch folder this process just made
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(
            f"--out {out}: cannot create it ({exc.strerror}): choose a writable folder"
        ) from None
    if os.geteuid() == 0:
        if not existed:
            os.chown(out, USER_ID, USER_ID)
            return IMAGE_USER
        owner = out.stat()
        if owner.st_uid != 0:
            return f"{owner.st_uid}:{owner.st_gid}"
        raise BundleError(
            f"--out {out}: it exists and belongs to root, and gapforge does not change the owner "
            "of a folder it did not create. The sealed image never runs as root: it needs a "
            f"folder its user can write. Give this one to a user (for the image's own user "
            f"{IMAGE_USER}: 'chown {USER_ID}:{USER_ID} {out}'), or pass a folder that does not "
            "exist yet (gapforge creates it for the image's user)"
        )
    if not os.access(out, os.W_OK):
        raise BundleError(
            f"--out {out}: not writable by you (uid {os.getuid()}): the run writes its outputs "
            "there as you; choose a folder you can write, or ask its owner for write permission"
        )
    return f"{os.getuid()}:{os.getgid()}"


def _mount_file(path: Path, label: str) -> tuple[str, str]:
    if not path.is_file():
        raise BundleError(f"{label} {path}: no such file: pass your JSON-lines data file")
    resolved = path.resolve()
    folder = DATA_DIR if label == "--data" else f"{DATA_DIR}/{label.strip('-')}"
    return str(resolved), f"{folder}/{resolved.name}"


def sealed_run(
    target: Target, command: list[str], data: dict[str, Path], out: Path, gpus: bool,
    out_is_ours: bool = False,
) -> tuple[SealedRun, list[str]]:  # fmt: skip
    """The sealed run of `command`, with each data file mounted read-only and passed as its option."""
    read_only: dict[str, str] = {}
    args = list(command)
    for option, path in data.items():
        host, inside = _mount_file(path, option)
        read_only[host] = inside
        args += [option, inside]
    user = prepare_out(out, out_is_ours)
    run = SealedRun(
        image=target.config_digest, command=args, mounts={str(out.resolve()): OUTPUTS},
        read_only_mounts=read_only, user=user, gpus=gpus,
    )  # fmt: skip
    return run, args


def sealed_identity(target: Target) -> dict[str, str]:
    """What the runtime records in its manifest of the image it ran in (a continual run's lineage
    then names the parent's image and bundle): the image ID, and the bundle's SHA256SUMS digest."""
    from gapforge.hashing import sha256_file

    identity = {"GAPFORGE_IMAGE_DIGEST": target.config_digest}
    if target.sums_sha256:  # the digest of the very SHA256SUMS the check read, not a second read
        identity["GAPFORGE_BUNDLE_SHA256SUMS"] = target.sums_sha256
    elif target.bundle is not None and (target.bundle / "SHA256SUMS").is_file():
        # a Target made by hand (not by resolve_target): lineage only, no trust decision rests on it
        identity["GAPFORGE_BUNDLE_SHA256SUMS"] = sha256_file(target.bundle / "SHA256SUMS")
    return identity


def parent_mount(parent: Path, out: Path) -> tuple[str, str]:
    """`--parent OUT_OLD`: the earlier run's output folder, mounted read-only (host, inside)."""
    if not (parent / "manifest.json").is_file():
        raise BundleError(
            f"--parent {parent}: no manifest.json there: pass the --out folder of an earlier, "
            "finished run"
        )
    if parent.resolve() == out.resolve():
        raise BundleError(f"--parent {parent}: it is the --out folder too: pass a new --out")
    return str(parent.resolve()), PARENT_DIR


def run_image(
    target: str, data: Path, out: Path, gpus: str = "auto", validation: Path | None = None,
    test: Path | None = None, extra: list[str] | None = None, timeout: float | None = None,
    *, anchor: Anchor | None, insecure: bool = False, parent: Path | None = None,
    node: NodeRun | None = None,
) -> int:  # fmt: skip
    """Run the recipe on `data` into `out`; the runtime's output streams to stdout. Returns its status.
    With `node`, this is one node of a training job across nodes, on an internal network."""
    from gapforge import engine

    wanted = check_target(target, anchor, insecure)  # check, then touch: before the engine
    client = engine.connect()
    if node is not None:
        check_internal_network(client, node.network)
        extra = [*(extra or []), *node.runtime_args()]
    resolved = resolve_target(client, target, anchor, insecure, wanted)
    files = (
        {"--data": data}
        | ({"--validation": validation} if validation else {})
        | ({"--test": test} if test else {})
    )
    extra = list(extra or [])
    mounted = parent_mount(parent, out) if parent is not None else None
    if mounted is not None:
        extra += ["--parent", mounted[1]]
    run, args = sealed_run(resolved, ["run", *extra], files, out, use_gpus(gpus, resolved))
    if mounted is not None:
        run = replace(run, read_only_mounts={**run.read_only_mounts, mounted[0]: mounted[1]})
    run = replace(run, environment={**run.environment, **sealed_identity(resolved)})
    network = "--network none"
    if node is not None:
        run = replace(run, network=node.network, hostname=node.hostname)
        network = f"--network {node.network} (internal) as {node.hostname}"
    step(f"{resolved.ref} (image {resolved.config_digest[:19]}…) {' '.join(args)}  ({network} --read-only, user {run.user}"
         f"{', --gpus all' if run.gpus else ''}) → {out}")  # fmt: skip

    def passthrough(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    return run_sealed(client, run, passthrough, timeout)
