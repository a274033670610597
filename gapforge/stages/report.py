"""Stage report: build.json beside the archive: what was built from what, how long each stage took,
the pretest and bundle results, and how to rebuild the same bytes elsewhere."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gapforge import __version__
from gapforge.checkout import git_state
from gapforge.lock.debian import read_debian_lock
from gapforge.pretest import PretestResult
from gapforge.profile import REPO_ROOT
from gapforge.stages.assemble import BuiltImage
from gapforge.stages.fetch import Inputs
from gapforge.stages.locks import Locks
from gapforge.stages.plan import BuildPlan
from gapforge.stages.serve import ServingResult

if TYPE_CHECKING:
    from gapforge.stages.bundle import WrittenBundle


def reproduce_section(plan: BuildPlan, locks: Locks, inputs: Inputs) -> dict[str, Any]:
    """What another machine needs to rebuild these exact bytes, and the command that does it."""
    debian = read_debian_lock(locks.debian_path)
    snapshots = {debian.path.name: debian.snapshot}
    if locks.build_debian_path is not None:
        snapshots[locks.build_debian_path.name] = read_debian_lock(locks.build_debian_path).snapshot
    try:
        recipe = plan.loaded.path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        recipe = str(plan.loaded.path)
    command = f"gapforge build {recipe} --frozen"
    if plan.options.lock_dir.resolve() != (REPO_ROOT / "lockfiles").resolve():
        command += f" --lock-dir {plan.options.lock_dir}"
    return {
        "gapforge": {"version": __version__, **git_state()},
        "locks": locks.digests(),
        "debian_snapshots": snapshots,
        "source_date_epoch": plan.profile.source_date_epoch,
        "command": command,
        "note": "the same gapforge commit, recipe and locks rebuild this archive byte for byte on "
        "any machine; --frozen refuses to change a lock",
    }


def write_report(
    plan: BuildPlan, locks: Locks, image: BuiltImage, inputs: Inputs, *,
    timings: Mapping[str, float], smoke: str = "", pretest: PretestResult | None = None,
    bundle: WrittenBundle | None = None, serving: ServingResult | None = None,
) -> dict[str, Any]:  # fmt: skip
    """build.json beside the archive, from what the stages returned; returned as a dict too."""
    report: dict[str, Any] = {
        "recipe": {
            "name": plan.loaded.recipe.name,
            "version": plan.loaded.recipe.version,
            "path": str(plan.loaded.path),
        },
        "profile": plan.profile.name,
        "image": {
            "ref": plan.ref,
            "tar": str(image.tar_path),
            "tar_sha256": image.archive_sha256,
            "manifest_digest": image.manifest.manifest_digest,
            "config_digest": image.manifest.config_digest,
        },
        "layers": [
            {"name": layer.name, "digest": layer.digest, "size": layer.size}
            for layer in image.layers.layers
        ],
        "layers_reused": image.layers.reused,
        "layers_written": image.layers.written,
        "locks": locks.digests(),
        "features": locks.features.record(locks.python),
        "frozen": plan.options.frozen,
        "debian_refresh": [r.to_json() for r in inputs.debian_refreshes],
        "reproduce": reproduce_section(plan, locks, inputs),
        "sdist_build_s": round(inputs.sdist_build_seconds, 2),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "smoke": smoke,
        "builder": __version__,
        "cache": str(plan.cache.root),
    }
    if pretest is not None:
        report["pretest"] = {
            "passed": pretest.passed,
            "seconds": round(pretest.seconds, 2),
            "evidence": str(pretest.folder / "evidence.json"),
        }
    if serving is not None:
        completion = serving.evidence["completion"]
        report["serving"] = {
            "ref": serving.image.ref,
            "tar": str(serving.image.tar_path),
            "manifest_digest": serving.image.manifest.manifest_digest,
            "config_digest": serving.image.manifest.config_digest,
            "passed": serving.evidence["passed"],
            "ttft_s": round(completion["ttft_s"], 3),
            "tokens_per_s": round(completion["tokens_per_s"] or 0.0, 1),
            "evidence": str(serving.evidence_path),
        }
    if bundle is not None:
        size = sum(f.stat().st_size for f in bundle.path.rglob("*") if f.is_file())
        report["bundle"] = {
            "path": str(bundle.path),
            "signing_key": bundle.signing_key,
            "size": size,
        }
    tmp = image.report_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, image.report_path)
    return report
