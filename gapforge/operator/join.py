"""`gapforge join`: rebuild a bundle from the media of a split, repairing lost or damaged parts.

Every block of every part is checked against the signed manifest before it is used; a block that
fails counts as missing, so one bad sector costs one block, not the medium. Good data blocks are
copied into `OUT/.join-<name>-<version>/stream` and recorded in `state.json` beside it, so a join that
stops (a disc not at hand, Ctrl-C, a full disk) resumes where it was: parts already copied and
checked are not read again. Missing data blocks are rebuilt stripe by stripe from parity
(gapforge.bundle.parity), each checked against its own hash. The stream is then unpacked into
`OUT/<name>-<version>/` (renamed into place only when its sha256 matches) and the work folder
removed. The sources are opened read-only, never written.

Check, then touch: the manifest's signature is checked with the keys the operator's anchor names
(gapforge.operator.join_sources.media_keys) before any part is read, and every name in it is a plain
component (`split_manifest`). The work folder lies inside OUT and holds only what this join wrote;
the unpacked bundle goes through the trust gate (the `verify` callback) before it is renamed into
place, and a refused stream or bundle removes the work folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle import PUBLIC_KEY, SUMS
from gapforge.bundle.parity import StripeCoder, block_length, padded
from gapforge.bundle.sign import load_public_key
from gapforge.bundle.split_manifest import PartEntry, PartsManifest, open_manifest
from gapforge.errors import BundleError, GapforgeError
from gapforge.names import no_links, relative_path
from gapforge.operator.join_sources import Sources, find_sources, ranges, read_block
from gapforge.progress import byte_progress

STATE_NAME = "state.json"
STREAM_NAME = "stream"


@dataclass
class JoinResult:
    bundle: Path
    copied: list[str] = field(default_factory=list)
    """Data parts read from the media in this run."""
    skipped: list[str] = field(default_factory=list)
    """Data parts a previous, interrupted run had already copied and checked."""
    repaired_blocks: int = 0
    pinned: bool = False
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _State:
    """Which blocks of which data parts are in the work stream, checked: a small JSON file."""

    def __init__(self, path: Path, manifest_digest: str) -> None:
        self.path, self.digest = path, manifest_digest
        self.good: dict[str, set[int]] = {}
        try:
            value = json.loads(path.read_bytes())
            if value.get("manifest_sha256") == manifest_digest:
                self.good = {n: set(b) for n, b in value["good_blocks"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def save(self) -> None:
        value = {
            "manifest_sha256": self.digest,
            "good_blocks": {n: sorted(b) for n, b in sorted(self.good.items())},
        }
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.path)


def _copy_part(
    part: PartEntry,
    copies: list[Path],
    good: set[int],
    stream: BinaryIO,
    block_size: int,
    advance: Callable[[int], None],
) -> None:
    """The part's good blocks from its copies into the stream; `good` gains each one written."""
    for path in copies:
        with open(path, "rb") as source:  # read-only: media may be write-protected
            for index, expected in enumerate(part.blocks):
                if index in good:
                    continue
                length = block_length(part.size, block_size, index)
                try:
                    source.seek(index * block_size)
                    data = source.read(length)
                except OSError:  # a bad sector: the block counts as missing
                    data = b""
                if len(data) == length and hashlib.sha256(data).hexdigest() == expected:
                    stream.seek(part.offset + index * block_size)
                    stream.write(data)
                    good.add(index)
                    advance(length)
        if len(good) == len(part.blocks):
            return


def _repair(
    sources: Sources, state: _State, stream: BinaryIO, warnings: list[str]
) -> tuple[int, str]:
    """Rebuild missing data blocks from parity; the count rebuilt, and what more is needed ("" when
    nothing)."""
    manifest, size = sources.manifest, sources.manifest.block_size
    data, parity = manifest.data_parts, manifest.parity_parts
    first = data[0].size
    coder = StripeCoder(manifest.k, manifest.n)
    repaired, failing = 0, {}
    parity_bad: dict[str, set[int]] = {p.name: set() for p in parity}
    stripes = -(-first // size)
    for stripe in range(stripes):
        length = block_length(first, size, stripe)
        missing = [
            i for i, p in enumerate(data)
            if block_length(p.size, size, stripe) and stripe not in state.good.get(p.name, set())
        ]  # fmt: skip
        if not missing:
            continue
        shares: dict[int, bytes] = {}
        for i, part in enumerate(data):
            if i in missing:
                continue
            real = block_length(part.size, size, stripe)
            stream.seek(part.offset + stripe * size)
            shares[i] = padded(stream.read(real), length)
        for part in parity:
            if len(shares) >= manifest.k:
                break
            for path in sources.copies.get(part.name, []):
                block = read_block(path, part, size, stripe)
                if block is not None:
                    shares[part.index] = block
                    break
            else:
                parity_bad[part.name].add(stripe)
        if len(shares) < manifest.k:
            failing[stripe] = (manifest.k - len(shares), missing)
            continue
        rebuilt = coder.decode(shares)
        for i in missing:
            part = data[i]
            block = rebuilt[i][: block_length(part.size, size, stripe)]
            if hashlib.sha256(block).hexdigest() != part.blocks[stripe]:
                raise BundleError(
                    f"{part.name} block {stripe}: rebuilt from parity but its hash does not match "
                    "the manifest: a share passed its hash check yet was wrong, which should not "
                    "happen; report it with the manifest, and try the join with other media"
                )
            stream.seek(part.offset + stripe * size)
            stream.write(block)
            state.good.setdefault(part.name, set()).add(stripe)
            repaired += 1
        if repaired and repaired % 64 == 0:
            stream.flush()
            state.save()
    stream.flush()
    state.save()
    if not failing:
        return repaired, ""
    return repaired, _needs_message(sources, state, failing, parity_bad)


def _needs_message(
    sources: Sources,
    state: _State,
    failing: dict[int, tuple[int, list[int]]],
    parity_bad: dict[str, set[int]],
) -> str:
    manifest, size = sources.manifest, sources.manifest.block_size
    needed = max(deficit for deficit, _ in failing.values())
    described = []
    for part in manifest.parts:
        if part.kind == "data":
            bad = [
                s for s in failing
                if block_length(part.size, size, s) and s not in state.good.get(part.name, set())
            ]  # fmt: skip
        else:
            bad = sorted(parity_bad[part.name] & set(failing))
        if not bad:
            continue
        if part.name not in sources.copies:
            described.append(f"{part.medium} ({part.name}, lost)")
        else:
            described.append(f"{part.medium} ({part.name}, corrupt blocks {ranges(bad)})")
    return f"needs {needed} more of: {', '.join(described)}"


def _unpack(stream_path: Path, manifest: PartsManifest, into: Path) -> str:
    """Unpack the stream's regular files and folders under `into`; the stream's sha256 (read to its
    end). Only plain files and folders under the stream's root are accepted."""
    digest = hashlib.sha256()

    class _Hashing:
        def __init__(self, raw: BinaryIO) -> None:
            self.raw = raw

        def read(self, n: int = -1) -> bytes:
            data = self.raw.read(n)
            digest.update(data)
            return data

    root = PurePosixPath(manifest.stream_root)
    with open(stream_path, "rb") as raw:
        reader = _Hashing(raw)
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                name = relative_path(member.name.rstrip("/"), f"{stream_path}: member name")
                path = PurePosixPath(name)
                if path.parts[:1] != root.parts:
                    raise BundleError(f"stream member {member.name!r} lies outside {root}")
                target = into / path
                no_links(into, target, f"{stream_path}: member {name}")
                if member.isdir():
                    _make_folder(target, member.name)
                elif member.isfile():
                    _write_member(tar, member, target)
                else:
                    raise BundleError(f"stream member {member.name!r} is not a file or folder")
        while reader.read(1024 * 1024):
            pass
    return digest.hexdigest()


def _make_folder(target: Path, name: str) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name came first
        raise BundleError(f"stream member {name!r}: cannot be a folder ({exc.strerror})") from None


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """One regular file of the stream, written as a new file (never over one, never through a
    link), 0644 or 0755."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        with open(target, "xb") as sink:
            shutil.copyfileobj(source, sink, 1024 * 1024)
        os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    except OSError as exc:  # twice the same name, or a folder of that name
        raise BundleError(
            f"stream member {member.name!r}: cannot be written ({exc.strerror or exc}): the stream "
            "names it twice or as a file and a folder; not a stream gapforge split wrote"
        ) from None


def join_parts(
    paths: Sequence[Path],
    out: Path,
    keys: Sequence[Ed25519PublicKey] = (),
    on_part: Callable[[str], None] | None = None,
    after_join: Callable[[Path], None] | None = None,
    verify: Callable[[Path], object] | None = None,
) -> JoinResult:
    """Rebuild the bundle of the media `paths` into `out/<name>-<version>/` (module docstring).
    The manifest's signature is checked with `keys` (when given) before any part is read; its
    names are plain components. `verify` (the operator's trust gate) sees the unpacked bundle
    before it is renamed into place; a refusal there or of the stream removes the work folder."""
    started = time.monotonic()
    sources = find_sources(paths, keys)
    manifest = sources.manifest
    result = JoinResult(out / manifest.label, pinned=sources.pinned, warnings=sources.warnings)
    if result.bundle.exists() or result.bundle.is_symlink():
        raise BundleError(
            f"--out {out}: {result.bundle.name} already exists: remove it or give another --out "
            "(a join never overwrites a bundle)"
        )
    work = out / f".join-{manifest.label}"
    no_links(out, work, f"--out {out}")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(mode=0o700, exist_ok=True)
    needs = _gather(sources, work, result, on_part)
    if needs:
        raise BundleError(
            f"{manifest.label}: too many parts lost or damaged for {manifest.n} parity: {needs}. "
            f"Bring them and run the same command again with them added: the blocks checked so "
            f"far are kept in {work}"
        )
    try:
        unpacked = _unpacked(sources, work)
        if not sources.pinned:
            result.warnings.append(_self_check(sources.envelope, unpacked))
        if verify is not None:
            verify(unpacked)
    except (GapforgeError, OSError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError):
            raise BundleError(
                f"{out}: the joined bundle could not be written ({exc.strerror or exc}): pass "
                "an --out folder you can write to, with room for the bundle"
            ) from None
        raise
    os.replace(unpacked, result.bundle)
    shutil.rmtree(work)
    result.seconds = time.monotonic() - started
    if after_join is not None:
        after_join(result.bundle)
    return result


def _gather(
    sources: Sources, work: Path, result: JoinResult, on_part: Callable[[str], None] | None
) -> str:
    """Every good data block into the work stream, then the missing ones from parity; what more
    is needed ("" when nothing)."""
    manifest = sources.manifest
    state = _State(work / STATE_NAME, hashlib.sha256(sources.payload).hexdigest())
    stream_path = work / STREAM_NAME
    if not state.good or not stream_path.exists():
        state.good = {}
        with open(stream_path, "wb") as handle:
            handle.truncate(manifest.stream_size)
    with open(stream_path, "r+b") as stream:
        todo = [p for p in manifest.data_parts if len(state.good.get(p.name, ())) < len(p.blocks)]
        result.skipped = [p.name for p in manifest.data_parts if p not in todo]
        total = sum(p.size for p in todo)
        with byte_progress(f"join {manifest.label}", total) as advance:
            for part in todo:
                good = state.good.setdefault(part.name, set())
                _copy_part(
                    part, sources.copies.get(part.name, []), good, stream,
                    manifest.block_size, advance,
                )  # fmt: skip
                stream.flush()
                state.save()
                result.copied.append(part.name)
                if on_part is not None:
                    on_part(part.name)
        result.repaired_blocks, needs = _repair(sources, state, stream, result.warnings)
    return needs


def _unpacked(sources: Sources, work: Path) -> Path:
    """The stream unpacked under `work/unpack/`, its sha256 and SHA256SUMS checked against the
    manifest: the bundle folder, not yet in place."""
    manifest, stream_path = sources.manifest, work / STREAM_NAME
    unpack = work / "unpack"
    shutil.rmtree(unpack, ignore_errors=True)
    unpack.mkdir()
    try:
        digest = _unpack(stream_path, manifest, unpack)
    except tarfile.TarError as exc:
        raise BundleError(
            f"{stream_path}: not a tar stream gapforge split wrote ({exc}): the media do not hold "
            "a bundle; ask for them again"
        ) from None
    if digest != manifest.stream_sha256:
        raise BundleError(
            f"{stream_path}: sha256 {digest}, the manifest says {manifest.stream_sha256}: the work "
            "stream changed on disk after its blocks were checked. It was removed: run the same "
            "command again"
        )
    unpacked = unpack / manifest.stream_root
    sums_path = unpacked / SUMS
    if sums_path.is_symlink() or not sums_path.is_file():
        raise BundleError(f"{stream_path}: the stream holds no {manifest.stream_root}/{SUMS}")
    if hashlib.sha256(sums_path.read_bytes()).hexdigest() != manifest.sums_sha256:
        raise BundleError(f"{sums_path}: not the SHA256SUMS the parts manifest names")
    return unpacked


def _self_check(envelope: bytes, bundle: Path) -> str:
    """Unpinned: the manifest's signature against the bundle's own key (integrity, not origin)."""
    try:
        open_manifest(envelope, "parts manifest", [load_public_key(bundle / PUBLIC_KEY)])
    except BundleError as exc:
        raise BundleError(
            f"{exc}. The manifest is not signed by the key inside the bundle either: these media "
            "were altered or mixed; get them again"
        ) from None
    return (
        "UNPINNED: no --key was given, so the parts manifest was checked only against the key "
        "inside the bundle (integrity, not origin). Run 'gapforge verify' on the bundle with your "
        "own trust anchor before using it"
    )
