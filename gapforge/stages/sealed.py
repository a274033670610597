"""Stages load, smoke and pretest: the sealed image in the local Docker engine (gapforge.engine loads
and smoke-runs it; gapforge.pretest runs the recipe in it, network cut)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gapforge.pretest import PretestResult, run_pretest
from gapforge.stages.assemble import BuiltImage, ensure_free
from gapforge.stages.plan import BuildPlan


def ensure_engine_room(client: Any, image: BuiltImage) -> None:
    """Stop before `docker load` if a local engine's data-root cannot hold the unpacked layers."""
    root = Path(client.info().get("DockerRootDir") or "/nonexistent")
    if root.is_dir():  # a local engine: its image store must hold the unpacked layers
        ensure_free(root, image.tar_path.stat().st_size, "loading the image", "Docker's data-root")


def pretest(plan: BuildPlan, client: Any, image: BuiltImage) -> PretestResult:
    """Run the recipe in the sealed image on its sample data; evidence beside the archive."""
    return run_pretest(
        client, plan.ref, image.manifest.manifest_digest, image.manifest.config_digest,
        image.tar_path.parent / "pretest", plan.options.pretest_timeout,
    )  # fmt: skip
