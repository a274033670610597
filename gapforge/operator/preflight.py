"""`gapforge preflight`: go/no-go before a long run, inside the gap: the engine answers, the image is
the one a proven bundle (or a receipt of a verified load) names, it starts offline, the image's own
validation accepts the data, the output folder is writable with room, a GPU is there if needed."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import PRETEST
from gapforge.bundle.runbook import human_size
from gapforge.engine import SealedRun, run_sealed
from gapforge.errors import BundleError
from gapforge.operator.anchor import Anchor
from gapforge.operator.run import Target, gpu_present, prepare_out, resolve_target, sealed_run


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _pretest_output_bytes(target: Target) -> int:
    """What the pretest wrote on sample data (0 for an image reference): its evidence, read as the
    bytes the checked bundle's SHA256SUMS names (BundleError if they changed since) and
    shape-checked, so an altered evidence file cannot talk the disk check into a yes."""
    from gapforge.bundle.documents import PRETEST_EVIDENCE, SignedFiles, parse_document

    if target.bundle is None:
        return 0
    try:
        data = SignedFiles(target.bundle, target.sums_sha256 or None).read(PRETEST)
    except OSError as exc:
        raise BundleError(f"{target.bundle / PRETEST}: cannot be read ({exc})") from None
    evidence, problems = parse_document(data, PRETEST_EVIDENCE)
    if evidence is None:
        raise BundleError(f"{target.bundle / PRETEST}: {'; '.join(problems)}")
    outputs = evidence.get("outputs", {})
    return sum(int(v.get("size", 0)) for v in outputs.values())


def _quiet_run(client: Any, run: SealedRun) -> tuple[int, str]:
    output: list[bytes] = []
    status = run_sealed(client, run, output.append, timeout=900)
    return status, b"".join(output).decode(errors="replace")


def preflight(
    target: str, data: Path, out: Path, anchor: Anchor | None, insecure: bool = False
) -> list[Check]:
    """Go/no-go before a long run: engine, image, offline start, data, output folder, disk, GPU."""
    from gapforge import engine

    checks: list[Check] = []
    client = engine.connect()
    checks.append(
        Check("docker engine", True, f"answers (version {engine.engine_version(client)})")
    )
    try:
        resolved = resolve_target(client, target, anchor, insecure)
    except BundleError as exc:
        return [*checks, Check("image", False, exc.message)]
    checks.append(
        Check("image", True, f"{resolved.ref} is loaded as {resolved.config_digest[:19]}…")
    )
    status, text = _quiet_run(client, SealedRun(resolved.config_digest, ["info", "--json"]))
    try:
        recipe = json.loads(text[text.index("{") :]).get("recipe") if status == 0 else None
    except ValueError:
        recipe = None
    checks.append(Check("starts offline", status == 0,
                        f"'info' ran with --network none: recipe {recipe}" if status == 0 else text[-500:]))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gapforge-preflight-") as scratch:
        try:
            run, _ = sealed_run(
                resolved, ["data"], {"--data": data}, Path(scratch), gpus=False, out_is_ours=True
            )
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
        need = 2 * _pretest_output_bytes(resolved)
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
