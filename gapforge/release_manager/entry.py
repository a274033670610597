"""What a release entry says about a bundle: read from its bundle.json, SHA256SUMS and evidence.

The TUF target's file is the bundle's SHA256SUMS (it pins every file); its custom metadata repeats
what a release manager and an operator want to see without opening the bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gapforge.bundle import INDEX, PRETEST, PROVENANCE, RECIPE_DIR, SBOM, SIGNATURE, SUMS
from gapforge.bundle.sums import parse_sums
from gapforge.release import ReleaseError


@dataclass(frozen=True)
class BundleRelease:
    """One bundle as the release repository sees it."""

    path: Path
    name: str
    version: str
    index: dict[str, Any]
    sums: bytes
    signature: bytes
    custom: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


def _read(bundle: Path, name: str) -> bytes:
    try:
        return (bundle / name).read_bytes()
    except OSError as exc:
        raise ReleaseError(
            f"{bundle / name}: cannot be read ({exc.strerror}): pass the folder of a built bundle "
            "(dist/<recipe>-<version>/, with bundle.json, SHA256SUMS and SHA256SUMS.sig)"
        ) from None


def _json(bundle: Path, name: str) -> dict[str, Any]:
    try:
        value = json.loads(_read(bundle, name))
    except ValueError as exc:
        raise ReleaseError(f"{bundle / name}: not valid JSON ({exc}): rebuild the bundle") from None
    if not isinstance(value, dict):
        raise ReleaseError(f"{bundle / name}: not a JSON object: rebuild the bundle")
    return value


def read_bundle(bundle: Path, now: datetime) -> BundleRelease:
    """bundle.json, SHA256SUMS and its signature, and the custom metadata of its release entry."""
    index = _json(bundle, INDEX)
    sums = _read(bundle, SUMS)
    signature = _read(bundle, SIGNATURE)
    problems = [
        f"bundle.json: {field} is missing or not a string"
        for field in ("name", "version")
        if not isinstance(index.get(field), str) or not index.get(field)
    ]
    if not isinstance(index.get("image"), dict):
        problems.append("bundle.json: image is missing")
    lines, bad = parse_sums(sums.decode("utf-8", errors="replace"))
    problems += [f"SHA256SUMS: {problem}" for problem in bad]
    if problems:
        raise ReleaseError(
            f"{bundle}: not a bundle the release repository can list: {'; '.join(problems)}. "
            "Rebuild it with 'gapforge build'."
        )
    digests = {line.name: line.sha256 for line in lines}
    custom = release_custom(bundle, index, digests, now)
    return BundleRelease(
        bundle.resolve(), index["name"], index["version"], index, sums, signature, custom
    )


def _model(bundle: Path, index: dict[str, Any]) -> dict[str, Any]:
    model = index.get("model") or {}
    locks: dict[str, str] = index.get("locks") or {}
    lock_name = next((name for name in sorted(locks) if name.startswith("models/")), None)
    files: dict[str, str] = {}
    if lock_name is not None:
        lock_path = bundle / RECIPE_DIR / "locks" / lock_name
        try:
            lock = json.loads(lock_path.read_text(encoding="utf-8"))
            files = {str(f["path"]): str(f["sha256"]) for f in lock.get("files", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            files = {}  # the lock's own sha256 is still pinned below, through SHA256SUMS
    return {
        "id": model.get("id"),
        "revision": model.get("revision"),
        "lock": lock_name,
        "lock_sha256": locks.get(lock_name) if lock_name else None,
        "files": files,
    }


def _pretest(bundle: Path, index: dict[str, Any]) -> dict[str, Any]:
    summary = index.get("pretest") or {}
    facts: dict[str, Any] = {
        "passed": summary.get("passed"),
        "verdict": summary.get("verdict"),
        "seconds": summary.get("seconds"),
    }
    try:
        evidence = json.loads((bundle / PRETEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return facts
    if isinstance(evidence, dict):
        facts["gates"] = [
            {key: gate.get(key) for key in ("name", "passed", "value", "limit")}
            for gate in evidence.get("gates") or []
            if isinstance(gate, dict)
        ]
        facts["deltas_vs_merged_pct"] = evidence.get("deltas_vs_merged_pct") or {}
    return facts


def canonical(value: Any) -> Any:
    """`value` with every float written as a string: TUF signs canonical JSON, which has no floats."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def release_custom(
    bundle: Path, index: dict[str, Any], digests: dict[str, str], now: datetime
) -> dict[str, Any]:
    """The custom metadata of a release entry (TargetFile.custom); floats (pretest figures) are
    strings, as canonical JSON has no floats."""
    return canonical(_custom(bundle, index, digests, now))  # type: ignore[no-any-return]


def _custom(
    bundle: Path, index: dict[str, Any], digests: dict[str, str], now: datetime
) -> dict[str, Any]:
    image = index.get("image") or {}
    key = index.get("signing_key") or {}
    builder = index.get("builder") or {}
    return {
        "name": index.get("name"),
        "version": index.get("version"),
        "image": {
            "manifest_digest": image.get("manifest_digest"),
            "config_digest": image.get("config_digest"),
            "sha256": image.get("sha256"),
            "size": image.get("size"),
            "ref": image.get("ref"),
            "profile": image.get("profile"),
            "layers": [
                {k: layer.get(k) for k in ("name", "digest", "size")}
                for layer in image.get("layers") or []
            ],
        },
        "model": _model(bundle, index),
        "sbom": {"sha256": digests.get(SBOM)},
        "provenance": {"sha256": digests.get(PROVENANCE)},
        "pretest": _pretest(bundle, index),
        "gapforge": {"version": builder.get("version"), "commit": builder.get("commit")},
        "signing_key": {
            "fingerprint": key.get("fingerprint"),
            "development": bool(key.get("development", False)),
        },
        "added": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
