"""`gapforge build`: check locks → fetch → assemble → load → smoke → pretest → (serve) → bundle →
report; `serve` only for a recipe with a `serve:` section (the llama.cpp serving image).

Each stage is a function in gapforge/stages/ that takes the plan and what the stages before it
returned, and returns its own result; `build` below is the whole order. Only `fetch` touches the
network. `assemble` reads the cache alone; `load`, `smoke` and `pretest` use the local Docker
engine, and the image runs with no network at all. A bundle is written only for an image whose
sealed pretest passed. Each stage's time goes into a dict that `build` owns and hands to the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from gapforge.pretest import PretestResult
from gapforge.progress import note, step
from gapforge.stages.assemble import BuiltImage, assemble
from gapforge.stages.bundle import WrittenBundle, bundle, signing_key
from gapforge.stages.fetch import fetch
from gapforge.stages.locks import check_locks
from gapforge.stages.plan import BuildOptions, make_plan
from gapforge.stages.report import write_report
from gapforge.stages.sealed import ensure_engine_room, pretest
from gapforge.stages.serve import check_serve_lock, serve

T = TypeVar("T")


def _timed(timings: dict[str, float], name: str, func: Callable[[], T]) -> T:
    start = time.monotonic()
    try:
        return func()
    finally:
        timings[name] = time.monotonic() - start


def _load(client: Any, image: BuiltImage, ref: str) -> None:
    """Load the archive just written, unless the engine already holds its image ID: that ID is the
    digest of the config, which names every layer's digest, so the engine's image is this one (an
    unchanged recipe rebuilt warm) and only the tag is given again."""
    from docker.errors import ImageNotFound

    from gapforge import engine

    config_digest = image.manifest.config_digest
    try:
        held = client.images.get(config_digest)
    except ImageNotFound:
        engine.load(client, image.tar_path, config_digest, ref)
        return
    repo, tag = engine.split_ref(ref)
    held.tag(repo, tag)
    note(f"the engine already holds image ID {config_digest}: not loaded again, tagged {ref}")


def build(options: BuildOptions) -> tuple[BuiltImage, dict[str, Any]]:
    """Run every stage in order; return the image and the build report."""
    from gapforge import engine

    plan = make_plan(options)
    step(f"building {plan.ref} from {plan.loaded.path.name} (profile {plan.profile.name})")
    timings: dict[str, float] = {}
    locks = _timed(timings, "check_locks", lambda: check_locks(plan))
    check_serve_lock(plan)
    key = signing_key(plan) if options.bundle else None
    client = engine.connect() if options.load else None
    inputs, locks = _timed(timings, "fetch", lambda: fetch(plan, locks))
    image = _timed(timings, "assemble", lambda: assemble(plan, locks, inputs))
    smoke = ""
    result: PretestResult | None = None
    written: WrittenBundle | None = None
    if client is not None:
        ensure_engine_room(client, image)
        _timed(timings, "load", lambda: _load(client, image, plan.ref))
        if options.smoke:
            smoke = _timed(
                timings,
                "smoke",
                lambda: engine.smoke_run(client, image.manifest.config_digest, plan.ref),
            )
            if options.pretest:
                result = _timed(timings, "pretest", lambda: pretest(plan, client, image))
    serving = None
    if result is not None and plan.loaded.recipe.serve is not None:
        serving = _timed(timings, "serve", lambda: serve(plan, client, result))
    if result is not None and key is not None:
        written = _timed(timings, "bundle", lambda: bundle(plan, locks, inputs, image, result, key))
    else:
        skipped = [f for f, on in (("--no-load", options.load), ("--no-smoke", options.smoke),
                                   ("--no-pretest", options.pretest)) if not on]  # fmt: skip
        note(f"no bundle: {', '.join(skipped)} given, and only a pretested image is bundled")
    report = write_report(
        plan,
        locks,
        image,
        inputs,
        timings=timings,
        smoke=smoke,
        pretest=result,
        bundle=written,
        serving=serving,
    )
    return image, report
