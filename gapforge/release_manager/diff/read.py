"""What one bundle says about itself, read for `gapforge diff`: its documents, locks and checksums.

Only the small documents are read (bundle.json, recipe/, the SBOM, the pretest evidence, SHA256SUMS);
image.tar is left alone here. Nothing is verified here: `gapforge diff` passes each bundle through
the trust gate first. Names from bundle.json (the locks) are parsed as plain relative paths.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.bundle import INDEX, PRETEST, RECIPE_DIR, SBOM, SUMS
from gapforge.bundle.documents import SignedFiles as Signed
from gapforge.bundle.sums import parse_sums
from gapforge.errors import BundleError
from gapforge.names import no_links, relative_path

RECIPE_JSON = f"{RECIPE_DIR}/recipe.json"
LOCKS_DIR = f"{RECIPE_DIR}/locks"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class PackageList:
    """Package name → version, and where it was read from."""

    versions: dict[str, str]
    source: str
    """`sbom.cdx.json`, a lock's path in the bundle, or '' when the bundle names none."""


@dataclass
class BundleFacts:
    path: Path
    index: dict[str, Any]
    recipe: dict[str, Any]
    evidence: dict[str, Any]
    python: PackageList
    debian: PackageList
    model_files: dict[str, FileEntry]
    """The model folder's files in the image (the SBOM's model component)."""
    model_inputs: dict[str, FileEntry]
    """The locked files the model was made from (recipe/locks/models/*.json)."""
    sums: dict[str, str] | None
    """SHA256SUMS: file → sha256; None when the bundle has none."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Size of each file SHA256SUMS lists (and of SHA256SUMS and its signature) that exists."""
    notes: list[str] = field(default_factory=list)
    """What could not be read, each naming the file; the comparison goes on without it."""

    @property
    def label(self) -> str:
        return f"{self.index.get('name', '?')} {self.index.get('version', '?')}"


def normalize_python_name(name: str) -> str:
    """PEP 503: `Charset_Normalizer` and `charset-normalizer` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _json_document(signed: Signed, name: str, notes: list[str] | None) -> dict[str, Any]:
    """The JSON object in `name`; with `notes`, a missing or bad file is noted and reads as {},
    without, it is an error that names the file."""
    path = signed.bundle / name
    try:
        value = json.loads(signed.read(name).decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if notes is None:
            raise BundleError(
                f"{path}: unreadable ({type(exc).__name__}: {detail}); the diff needs it. Pass "
                f"an intact bundle (check it with 'gapforge verify {signed.bundle}')."
            ) from None
        if not isinstance(exc, FileNotFoundError):
            notes.append(f"{path}: unreadable ({detail}); compared as empty")
        return {}
    return value


def parse_pip_lock(text: str) -> dict[str, str]:
    """A pip-compile lock's `name==version \\` pins: normalized name → version."""
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalize_python_name(match[1])] = match[2]
    return pins


def parse_debian_lock(text: str) -> dict[str, str]:
    """A Debian lock's `name version arch sha256 size path` lines: name → version."""
    versions = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("#"):
            versions[fields[0]] = fields[1]
    return versions


def _sbom_packages(sbom: dict[str, Any], purl_type: str) -> dict[str, str]:
    versions = {}
    for component in sbom.get("components", []):
        if str(component.get("purl", "")).startswith(f"pkg:{purl_type}/"):
            name = str(component.get("name", ""))
            if purl_type == "pypi":
                name = normalize_python_name(name)
            versions[name] = str(component.get("version", ""))
    return versions


def lock_names(bundle: Path, index: dict[str, Any]) -> list[str]:
    """bundle.json's `locks` keys, each parsed as a plain relative path (gapforge.names): a `../`
    or absolute name is refused (UnsafeName, exit 2), never read."""
    locks = index.get("locks", {})
    where = f"{bundle / INDEX}: locks"
    if not isinstance(locks, dict):
        raise BundleError(f"{where}: a JSON {type(locks).__name__}, not an object of lock → sha256")
    return [relative_path(name, f"{where}: key") for name in locks]


def _lock_files(bundle: Path, index: dict[str, Any], suffix: str) -> list[str]:
    """The locks in recipe/locks/ whose names end with `suffix`: those bundle.json lists, else any;
    never through a symbolic link."""
    listed = [f"{LOCKS_DIR}/{name}" for name in lock_names(bundle, index) if name.endswith(suffix)]
    if not listed and (bundle / LOCKS_DIR).is_dir() and not (bundle / LOCKS_DIR).is_symlink():
        listed = [
            p.relative_to(bundle).as_posix()
            for p in sorted((bundle / LOCKS_DIR).rglob(f"*{suffix}"))
            if not p.is_symlink()
        ]
    for name in listed:
        no_links(bundle, bundle / name, f"{bundle / INDEX}: locks")
    return [name for name in listed if (bundle / name).is_file()]


def _choose(expected: Any, candidates: list[PackageList]) -> PackageList:
    """The complete list: the first whose count is the one bundle.json states, else the longest."""
    present = [c for c in candidates if c.versions]
    for candidate in present:
        if candidate.versions and len(candidate.versions) == expected:
            return candidate
    if not present:
        return PackageList({}, "")
    return max(present, key=lambda c: len(c.versions))


def _packages(
    signed: Signed, index: dict[str, Any], sbom: dict[str, Any], kind: str
) -> PackageList:
    purl_type, suffix, parse = (
        ("pypi", ".txt", parse_pip_lock)
        if kind == "python"
        else ("deb", ".debian.lock", parse_debian_lock)
    )
    candidates = [PackageList(_sbom_packages(sbom, purl_type), SBOM)]
    locks = _lock_files(signed.bundle, index, suffix)
    if locks:
        merged: dict[str, str] = {}
        for name in locks:
            merged.update(parse(signed.read(name).decode("utf-8", errors="replace")))
        candidates.append(PackageList(merged, ", ".join(locks)))
    return _choose(index.get("packages", {}).get(kind), candidates)


def _sbom_model_files(sbom: dict[str, Any]) -> dict[str, FileEntry]:
    files = {}
    for component in sbom.get("components", []):
        if component.get("type") != "machine-learning-model":
            continue
        for file in component.get("components", []):
            hashes = [
                h.get("content", "") for h in file.get("hashes", []) if h.get("alg") == "SHA-256"
            ]
            sizes = [
                p.get("value")
                for p in file.get("properties", [])
                if p.get("name") == "gapforge:size"
            ]
            size = int(sizes[0]) if sizes and str(sizes[0]).isdigit() else None
            files[str(file.get("name", ""))] = FileEntry(hashes[0] if hashes else "", size)
    return files


def _model_inputs(signed: Signed, index: dict[str, Any], notes: list[str]) -> dict[str, FileEntry]:
    files = {}
    for name in _lock_files(signed.bundle, index, ".json"):
        lock = _json_document(signed, name, notes)
        for file in lock.get("files", []):
            if isinstance(file, dict) and "path" in file:
                files[str(file["path"])] = FileEntry(str(file.get("sha256", "")), file.get("size"))
    return files


def _sums(signed: Signed, notes: list[str]) -> tuple[dict[str, str] | None, dict[str, int]]:
    bundle = signed.bundle
    try:
        raw = signed.sums_bytes if signed.sums_bytes is not None else signed.read(SUMS)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{bundle / SUMS}: unreadable ({exc}); the bundle's files are not compared")
        return None, {}
    lines, problems = parse_sums(text)
    if problems:
        notes.append(f"{bundle / SUMS}: {len(problems)} lines skipped ({problems[0]})")
    sums = {line.name: line.sha256 for line in lines}
    sizes = {}
    for name in [*sums, SUMS, f"{SUMS}.sig"]:
        with contextlib.suppress(OSError):
            sizes[name] = (bundle / name).stat().st_size
    return sums, sizes


def read_bundle(bundle: Path, pinned: str | None = None) -> BundleFacts:
    """Read the documents of the bundle folder `bundle`; BundleError when it is not a bundle or its
    bundle.json or recipe/recipe.json cannot be read. `pinned`: the sha256 of the SHA256SUMS the
    trust gate proved; every file read must then be the bytes it lists (Signed)."""
    if not (bundle / INDEX).is_file():
        raise BundleError(
            f"{bundle}: not a bundle (no {INDEX} in it): pass the folder 'gapforge build' wrote, "
            "dist/<name>-<version>/, for each of the two bundles to compare."
        )
    signed = Signed(bundle, pinned)
    notes: list[str] = []
    index = _json_document(signed, INDEX, None)
    recipe = _json_document(signed, RECIPE_JSON, None)
    sbom = _json_document(signed, SBOM, notes)
    evidence = _json_document(signed, PRETEST, notes)
    for name, document in ((SBOM, sbom), (PRETEST, evidence)):
        if not document and not any(note.startswith(str(bundle / name)) for note in notes):
            notes.append(f"{bundle / name}: missing; compared as empty")
    sums, sizes = _sums(signed, notes)
    return BundleFacts(
        path=bundle,
        index=index,
        recipe=recipe,
        evidence=evidence,
        python=_packages(signed, index, sbom, "python"),
        debian=_packages(signed, index, sbom, "debian"),
        model_files=_sbom_model_files(sbom),
        model_inputs=_model_inputs(signed, index, notes),
        sums=sums,
        sizes=sizes,
        notes=notes,
    )
