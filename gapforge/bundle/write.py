"""Write a bundle atomically: everything goes into a hidden sibling folder, then one rename.

A reader never sees a half-written bundle under the final name: until the rename there is only
`.<name>.partial-<pid>`, which nothing treats as a bundle (verify refuses it: no signature yet).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gapforge.atomic import swap_in
from gapforge.bundle import (
    BUNDLE_SCHEMA,
    DASHBOARD,
    IMAGE_TAR,
    INDEX,
    PRETEST,
    PRETEST_LOG,
    PRETEST_REPORT,
    PROVENANCE,
    PUBLIC_KEY,
    RECIPE_DIR,
    RUNBOOK,
    SBOM,
    SIGNATURE,
    SUMS,
    WHEELS_DIR,
)
from gapforge.bundle.provenance import render_provenance
from gapforge.bundle.runbook import TEMPLATES, render_runbook, runbook_context
from gapforge.bundle.sbom import render_sbom
from gapforge.bundle.sign import SigningKey, sign
from gapforge.bundle.source import BundleSource
from gapforge.bundle.sums import HashJob, bundle_files, hash_jobs, job_bytes, render_sums
from gapforge.errors import BuildError
from gapforge.progress import byte_progress, note, step

COPY_CHUNK = 8 * 1024 * 1024


def place(source: Path, target: Path, advance: Callable[[int], None] | None = None) -> None:
    """Hard-link `source` to `target` when they share a filesystem (instant, no extra disk), else copy.

    Every writer of the sources (the image archive, the cache) replaces files by rename, never in
    place, so a link never sees its bytes change."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        if advance is not None:
            advance(source.stat().st_size)
        return
    except OSError:
        pass
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(COPY_CHUNK):
            dst.write(chunk)
            if advance is not None:
                advance(len(chunk))
    target.chmod(0o644)


def _write(root: Path, name: str, data: bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


def _hash_all(root: Path, names: list[str], label: str) -> dict[str, str]:
    jobs = [HashJob(name, root / name) for name in names]
    with byte_progress(label, job_bytes(jobs)) as advance:
        results = hash_jobs(jobs, advance)
    missing = [r.label for r in results.values() if r.sha256 is None]
    if missing:
        raise BuildError(
            f"could not read {', '.join(missing)} while writing the bundle: build again"
        )
    return {label: str(result.sha256) for label, result in results.items()}


def bundle_index(source: BundleSource, key: SigningKey, evidence: dict[str, Any]) -> dict[str, Any]:
    """bundle.json: what `inspect` shows and what `load`/`run` need, without opening the archive."""
    image = source.image
    return {
        "schema": BUNDLE_SCHEMA,
        "name": source.name,
        "version": source.version,
        "description": source.description,
        "created": source.finished,
        "image": {
            "ref": image.ref,
            "file": IMAGE_TAR,
            "sha256": image.tar_sha256,
            "size": image.tar.stat().st_size,
            "manifest_digest": image.manifest_digest,
            "config_digest": image.config_digest,
            "profile": image.profile,
            "labels": image.labels,
            "layers": [{"name": x.name, "digest": x.digest, "size": x.size} for x in image.layers],
        },
        "model": {
            "id": source.model.id,
            "source": source.model.source,
            "revision": source.model.revision,
        },
        **(
            {
                "models": {
                    name: {"id": m.id, "source": m.source, "revision": m.revision}
                    for name, m in source.extra_models
                }
            }
            if source.extra_models
            else {}
        ),
        "packages": {"python": len(source.python_packages), "debian": len(source.debian_packages)},
        "locks": source.locks,
        "pretest": {
            "passed": evidence.get("passed"),
            "verdict": evidence.get("verdict"),
            "seconds": evidence.get("seconds"),
            "evidence": PRETEST,
        },
        "signing_key": {
            "fingerprint": key.fingerprint,
            "file": PUBLIC_KEY,
            "development": key.development,
        },
        "builder": {"version": source.builder_version, **source.git},
        "files": {"sbom": SBOM, "provenance": PROVENANCE, "runbook": RUNBOOK, "wheels": WHEELS_DIR},
    }


def _fill(work: Path, source: BundleSource, key: SigningKey) -> dict[str, str]:
    """Every file but SHA256SUMS and its signature; returns name → sha256 of each."""
    big = [(source.image.tar, IMAGE_TAR)]
    big += [(wheel, f"{WHEELS_DIR}/{wheel.name}") for wheel in source.operator_wheels]
    with byte_progress(
        "placing the archive and wheels", sum(p.stat().st_size for p, _ in big)
    ) as advance:
        for path, name in big:
            place(path, work / name, advance)
    for name, data in source.recipe_files.items():
        _write(work, f"{RECIPE_DIR}/{name}", data)
    for name, inside in (
        (PRETEST, "evidence.json"),
        (PRETEST_LOG, "log.txt"),
        (PRETEST_REPORT, "report.md"),
    ):
        if (source.pretest_dir / inside).is_file():
            _write(work, name, (source.pretest_dir / inside).read_bytes())
    _write(work, PUBLIC_KEY, key.public_pem)
    _write(work, DASHBOARD, (TEMPLATES / "grafana-dashboard.json").read_bytes())
    digests = _hash_all(work, bundle_files(work), "hashing the bundle")
    if source.image.tar_sha256 and digests[IMAGE_TAR] != source.image.tar_sha256:
        raise BuildError(
            f"{IMAGE_TAR} in the bundle hashes to {digests[IMAGE_TAR]}, the build wrote "
            f"{source.image.tar_sha256}: the archive changed under the build; build again"
        )
    source = replace(source, image=replace(source.image, tar_sha256=digests[IMAGE_TAR]))
    evidence = json.loads((source.pretest_dir / "evidence.json").read_text(encoding="utf-8"))
    wheel_count = len(source.operator_wheels)
    generated = {
        SBOM: render_sbom(source),
        PROVENANCE: render_provenance(source, key),
        INDEX: _json(bundle_index(source, key, evidence)),
        RUNBOOK: render_runbook(runbook_context(source, key.fingerprint, wheel_count)).encode(),
    }
    for name, data in generated.items():
        _write(work, name, data)
    digests.update(_hash_all(work, list(generated), "hashing the bundle's documents"))
    return digests


def write_bundle(source: BundleSource, key: SigningKey, dist_dir: Path) -> Path:
    """Write `dist_dir/<name>-<version>/`, signed with `key`; return its path."""
    final = dist_dir / source.bundle_name
    step(f"writing the bundle {final}")
    dist_dir.mkdir(parents=True, exist_ok=True)
    work = dist_dir / f".{source.bundle_name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    start = time.monotonic()
    try:
        digests = _fill(work, source, key)
        sums = render_sums(digests)
        _write(work, SUMS, sums)
        _write(work, SIGNATURE, sign(key, sums))
        for directory in [work, *(p for p in work.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        swap_in(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    note(
        f"bundle {final} ({len(digests) + 2} files, {size / 1e6:.1f} MB) in {time.monotonic() - start:.1f} s"
    )
    note(f"signed with {key.path} ({key.fingerprint})")
    return final
