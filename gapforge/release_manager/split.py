"""`gapforge split`: cut a bundle into media-sized parts plus zfec parity parts, one folder per medium.

The bundle folder becomes one deterministic stream: a tar of its files in sorted order under
`<name>-<version>/`, mtime 0, owner 0, modes normalized (gapforge.oci.tar). The stream is cut into
K data parts of the medium's size, plain byte ranges (`cat data-*.part | tar -x` gives the bundle
back when every data part is there), then N parity parts are computed stripe by stripe
(gapforge.bundle.parity): any N lost or corrupt parts can be rebuilt. Every medium gets its part,
the signed parts manifest (gapforge.bundle.split_manifest) and a README.txt:

    OUT/disc-01/data-01.part  parts.dsse.json  README.txt
    …
    OUT/disc-07/parity-02.part  parts.dsse.json  README.txt

Every file is written under a temporary name and renamed when complete; the manifests last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gapforge.atomic import write_atomic
from gapforge.bundle import INDEX, RELEASE_DIR, SUMS
from gapforge.bundle.parity import MAX_SHARES, StripeCoder, block_length, padded
from gapforge.bundle.sign import SigningKey
from gapforge.bundle.split_manifest import (
    MANIFEST_NAME,
    METADATA_DIR,
    README_NAME,
    PartEntry,
    PartsManifest,
    sign_manifest,
)
from gapforge.errors import BundleError
from gapforge.oci.tar import entries_from_tree, write_tar
from gapforge.progress import byte_progress

MEDIA: dict[str, int] = {
    "dvd": 4_700_372_992,  # DVD±R single layer, 2,295,104 sectors of 2,048 bytes
    "bd25": 25_025_314_816,  # BD-R single layer
    "bd50": 50_050_629_632,  # BD-R dual layer
    "usb-32g": 31_000_000_000,  # a "32 GB" stick, with room for the vendor's rounding
}
"""Usable capacity in bytes of each named medium."""

DEFAULT_BLOCK_SIZE = 1024 * 1024
STREAM_MTIME = 0
FS_MARGIN = 32 * 1024 * 1024
"""Room left on each medium for its file system's own structures (UDF, FAT32, exFAT)."""
HASH_LINE = 100
"""Bytes one block hash takes in the signed manifest: 64 hex digits, JSON, base64 in DSSE."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_medium(text: str) -> tuple[str, int]:
    """`dvd`, `bd25`, `bd50`, `usb-32g`, or a size (`700M`, `4.7G`, `64KiB`, bytes): its label and
    capacity in bytes. K, M, G, T are powers of 1000, as media are sold; KiB, MiB, GiB powers of 1024."""
    if text.lower() in MEDIA:
        return text.lower(), MEDIA[text.lower()]
    match = _SIZE.match(text)
    if match is None:
        raise BundleError(
            f"--media {text!r}: not a medium or a size: give one of {', '.join(MEDIA)}, or a size "
            "like 700M, 4.7G, 64KiB or a number of bytes"
        )
    number, unit = match.group(1), (match.group(2) or "").upper()
    binary = "I" in unit
    letter = unit[:1] if unit not in ("", "B") else ""
    factor = 1024 ** "KMGT".index(letter) * 1024 if binary and letter else _UNITS[letter]
    return text, int(float(number) * factor)


def fs_margin(capacity: int) -> int:
    return min(FS_MARGIN, capacity // 64)


def manifest_estimate(parts: int, part_size: int, block_size: int) -> int:
    """A bound on the signed manifest's size for `parts` parts of `part_size` bytes."""
    return 16384 + parts * (-(-part_size // block_size) * HASH_LINE + 1024)


def plan_part_size(capacity: int, stream_size: int, parity: int, block_size: int) -> int:
    """The data part size (a multiple of block_size) that leaves room on each medium for the file
    system, the manifest (which grows with the number of parts) and the README."""
    part_size = capacity
    for _ in range(4):  # the manifest's size depends on the number of parts, which depends on it
        k = max(1, -(-stream_size // max(part_size, 1)))
        reserve = fs_margin(capacity) + manifest_estimate(k + parity, part_size, block_size) + 8192
        part_size = (capacity - reserve) // block_size * block_size
        if part_size < block_size:
            raise BundleError(
                f"--media: {capacity} bytes leave no room for a part of even one {block_size}-byte "
                "block beside the manifest: choose a larger medium or a smaller --block-size"
            )
    return part_size


@dataclass
class _OpenPart:
    name: str
    medium: str
    file: str
    offset: int
    tmp: Path
    final: Path
    handle: BinaryIO
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    block: hashlib._Hash = field(default_factory=hashlib.sha256)
    block_fill: int = 0
    size: int = 0
    blocks: list[str] = field(default_factory=list)


def _medium_name(index: int) -> str:
    return f"disc-{index + 1:02d}"


class PartWriter:
    """A write-only sink that cuts what it is given into data parts of `part_size` bytes, each
    hashed whole and block by block, each renamed into place when full."""

    def __init__(self, out: Path, part_size: int, block_size: int) -> None:
        self.out, self.part_size, self.block_size = out, part_size, block_size
        self.parts: list[PartEntry] = []
        self.written = 0
        self._current: _OpenPart | None = None

    def _open(self) -> _OpenPart:
        index = len(self.parts)
        name, medium = f"data-{index + 1:02d}", _medium_name(index)
        folder = self.out / medium
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{name}.part"
        tmp = folder / f".{name}.part.partial"
        return _OpenPart(name, medium, final.name, self.written, tmp, final, open(tmp, "wb"))

    def _close(self, part: _OpenPart) -> None:
        if part.block_fill:
            part.blocks.append(part.block.hexdigest())
        part.handle.close()
        os.replace(part.tmp, part.final)
        self.parts.append(
            PartEntry(
                part.name, "data", len(self.parts), part.medium, part.file, part.offset,
                part.size, part.digest.hexdigest(), part.blocks,
            )
        )  # fmt: skip

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._current is None:
                self._current = self._open()
            part = self._current
            room = min(self.part_size - part.size, self.block_size - part.block_fill)
            chunk = view[:room]
            part.handle.write(chunk)
            part.digest.update(chunk)
            part.block.update(chunk)
            part.size += len(chunk)
            part.block_fill += len(chunk)
            self.written += len(chunk)
            view = view[len(chunk) :]
            if part.block_fill == self.block_size:
                part.blocks.append(part.block.hexdigest())
                part.block, part.block_fill = hashlib.sha256(), 0
            if part.size == self.part_size:
                self._close(part)
                self._current = None
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> list[PartEntry]:
        if self._current is not None:
            self._close(self._current)
            self._current = None
        return self.parts


def write_parity(
    out: Path,
    data: list[PartEntry],
    n: int,
    block_size: int,
    progress: Callable[[int], None] = lambda _: None,
) -> list[PartEntry]:
    """Parity parts parity-01 … parity-N beside the data parts, stripe by stripe, hashed per block."""
    k, first = len(data), data[0].size
    coder = StripeCoder(k, n)
    names = [f"parity-{j + 1:02d}" for j in range(n)]
    media = [_medium_name(k + j) for j in range(n)]
    finals = [out / media[j] / f"{names[j]}.part" for j in range(n)]
    tmps = [f.with_name(f".{f.name}.partial") for f in finals]
    digests = [hashlib.sha256() for _ in range(n)]
    blocks: list[list[str]] = [[] for _ in range(n)]
    for tmp in tmps:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        sources = [os.open(out / p.medium / p.file, os.O_RDONLY) for p in data]
        for fd in sources:
            stack.callback(os.close, fd)
        sinks = [stack.enter_context(open(tmp, "wb")) for tmp in tmps]
        for stripe in range(-(-first // block_size)):
            length = block_length(first, block_size, stripe)
            shares = []
            for fd, part in zip(sources, data, strict=True):
                size = block_length(part.size, block_size, stripe)
                shares.append(padded(os.pread(fd, size, stripe * block_size), length))
            for j, block in enumerate(coder.encode(shares)):
                sinks[j].write(block)
                digests[j].update(block)
                blocks[j].append(hashlib.sha256(block).hexdigest())
            progress(length * k)
    for tmp, final in zip(tmps, finals, strict=True):
        os.replace(tmp, final)
    return [
        PartEntry(names[j], "parity", k + j, media[j], finals[j].name, 0, first,
                  digests[j].hexdigest(), blocks[j])
        for j in range(n)
    ]  # fmt: skip


def readme_text(manifest: PartsManifest, part: PartEntry) -> str:
    total, k, n = manifest.k + manifest.n, manifest.k, manifest.n
    number = int(part.medium.split("-")[1])
    data_files = " ".join(f"../{p.medium}/{p.file}" for p in manifest.data_parts)
    return f"""{manifest.name} {manifest.version}: a gapforge bundle split across {total} media.

This is disc {number} of {total}, holding {part.file} ({part.kind} part, {part.size} bytes).
The bundle needs any {k} of them: {k} data part{"s" if k != 1 else ""} and {n} parity part{"s" if n != 1 else ""};
any {n} lost or damaged medi{"a" if n != 1 else "um"} can be rebuilt from the others.

Check this medium on its own (every block against the signed manifest {MANIFEST_NAME}):
    gapforge join --check /path/to/{part.medium} --key RELEASE.pub.pem
Join (give every medium you have; parts are only read, never written):
    gapforge join /path/to/disc-01 /path/to/disc-02 ... --out DIR --key RELEASE.pub.pem
Then check the bundle with your trust anchor:
    gapforge verify DIR/{manifest.label} --key RELEASE.pub.pem

Without gapforge, when every data part is there and undamaged, the data parts are the stream:
    cat {data_files} | tar -x
and the stream's sha256 is {manifest.stream_sha256}
(read the manifest: jq -r .payload {MANIFEST_NAME} | base64 -d).
Medium {number} of {total}; block size {manifest.block_size} bytes.
"""


def bundle_identity(bundle: Path) -> tuple[str, str, str, str]:
    """(name, version, sha256 of SHA256SUMS, signing key fingerprint) of a bundle folder."""
    try:
        index = json.loads((bundle / INDEX).read_bytes())
        sums = (bundle / SUMS).read_bytes()
        return (
            str(index["name"]),
            str(index["version"]),
            hashlib.sha256(sums).hexdigest(),
            str(index.get("signing_key", {}).get("fingerprint", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{bundle}: not a gapforge bundle ({exc}): it needs {INDEX} and {SUMS}; give the folder "
            "'gapforge build' wrote under dist/"
        ) from None


def _release_metadata(bundle: Path) -> dict[str, bytes]:
    """The bundle's release/metadata/*.json (TUF, self-signed), carried on every medium so a site
    under the trusted root can check the parts manifest's signer before reading any part."""
    folder = bundle / RELEASE_DIR / "metadata"
    if not folder.is_dir():
        return {}
    return {
        path.name: path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.suffix == ".json" and path.is_file() and not path.is_symlink()
    }


@dataclass(frozen=True)
class SplitResult:
    manifest: PartsManifest
    media: list[Path]


def split_bundle(
    bundle: Path,
    out: Path,
    medium: str,
    parity: int,
    key: SigningKey,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> SplitResult:
    """Split `bundle` into media folders under `out` (see the module docstring)."""
    label, capacity = parse_medium(medium)
    name, version, sums_sha256, bundle_key = bundle_identity(bundle)
    if bundle_key and bundle_key != key.fingerprint:
        raise BundleError(
            f"--key {key.path}: its fingerprint {key.fingerprint} is not the bundle's signing key "
            f"{bundle_key} ({bundle / INDEX}): sign the parts manifest with the key that signed "
            "the bundle, so the operator checks both with the one key they pinned"
        )
    if parity < 0:
        raise BundleError(f"--parity {parity}: must be 0 or more (1 covers one lost medium)")
    if block_size < 512:
        raise BundleError(f"--block-size {block_size}: must be at least 512 bytes")
    existing = sorted(out.glob("disc-*")) if out.is_dir() else []
    if existing:
        raise BundleError(
            f"--out {out}: already holds {existing[0].name}: give an empty or new folder, so no "
            "medium mixes parts of two splits"
        )
    entries = entries_from_tree(bundle, prefix=f"{name}-{version}")
    if any(e.kind not in ("file", "dir") for e in entries):
        bad = next(e.path for e in entries if e.kind not in ("file", "dir"))
        raise BundleError(f"{bundle}: {bad} is not a file or folder: a bundle holds neither links")
    estimate = sum(e.size for e in entries) + 1536 * len(entries) + 10240
    part_size = plan_part_size(capacity, estimate, parity, block_size)
    if -(-estimate // part_size) + parity > MAX_SHARES:
        raise BundleError(
            f"--media {medium}: {bundle} needs {-(-estimate // part_size)} parts of {part_size} "
            f"bytes, plus {parity} parity: more than zfec's {MAX_SHARES}: choose a larger medium"
        )
    out.mkdir(parents=True, exist_ok=True)
    writer = PartWriter(out, part_size, block_size)
    with byte_progress(f"split {name}-{version}", estimate) as advance:
        stream = write_tar(entries, writer, STREAM_MTIME, advance)  # type: ignore[arg-type]
    data = writer.finish()
    with byte_progress(f"parity x{parity}", data[0].size * len(data) if parity else 0) as advance:
        parities = write_parity(out, data, parity, block_size, advance) if parity else []
    manifest = PartsManifest(
        name=name, version=version, sums_sha256=sums_sha256, stream_size=stream.size,
        stream_sha256=stream.digest.removeprefix("sha256:"), stream_root=f"{name}-{version}",
        medium=label, capacity=capacity, k=len(data), n=parity, block_size=block_size,
        part_size=part_size, parts=data + parities,
    )  # fmt: skip
    manifest.validate("split")
    envelope = sign_manifest(manifest, key)
    metadata = _release_metadata(bundle)
    media = []
    for part in manifest.parts:
        folder = out / part.medium
        write_atomic(folder / README_NAME, readme_text(manifest, part).encode())
        if metadata:
            (folder / METADATA_DIR).mkdir(exist_ok=True)
        for file_name, content in metadata.items():
            write_atomic(folder / METADATA_DIR / file_name, content)
        write_atomic(folder / MANIFEST_NAME, envelope)
        used = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        if used > capacity - fs_margin(capacity):
            raise BundleError(
                f"{folder}: {used} bytes do not fit on a {label} of {capacity} bytes with room for "
                "its file system: choose a larger --block-size (fewer block hashes) or medium"
            )
        media.append(folder)
    return SplitResult(manifest, media)
