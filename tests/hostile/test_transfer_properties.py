"""Property-based tests (Hypothesis) of the transfer parsers an attacker feeds: the parts manifest,
the delta's archive map, and the tar readers (the archive mapper, the join's stream unpacker).
Random bytes and random structures never raise anything but the module's named error, and every
name that comes out is a plain relative path (or a single component where one is expected).

Fast in CI (at most 50 examples a test); a loaded Hypothesis profile other than the default
(`fuzz`, run by `nox -s fuzz`) sets its own number."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gapforge.bundle.archivemap import BlobRef, Inline, map_archive, parse_map
from gapforge.bundle.split_manifest import SCHEMA, PartEntry, PartsManifest, open_manifest
from gapforge.bundle.transfer import MAP_SCHEMA, TransferError
from gapforge.errors import BundleError
from gapforge.names import UnsafeName, component, relative_path
from gapforge.operator.join import _unpack

_DEFAULT = settings.get_profile("default").max_examples
PROPERTY = settings(
    max_examples=min(50, settings().max_examples)
    if settings().max_examples == _DEFAULT
    else settings().max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""≤ 50 examples under the default profile (CI); the fuzz profile's own count when it is loaded."""

HOSTILE_NAMES = st.sampled_from(
    ["..", ".", "", "/etc/passwd", "../x", "a/b", "a\nb", "a\x00b", "-rf", "a\\b", "x" * 300,
     "demo", "0.1.0", "disc-01", "data-01.part", "é"]
)  # fmt: skip
NAMES = st.one_of(HOSTILE_NAMES, st.text(max_size=40))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


def _assert_plain(manifest: PartsManifest) -> None:
    """The names a parsed manifest hands out are single plain components."""
    for value in (manifest.name, manifest.version, manifest.label, manifest.stream_root):
        assert component(value, "property") == value
    for part in manifest.parts:
        for value in (part.name, part.medium, part.file):
            assert component(value, "property") == value


@PROPERTY
@given(st.binary(max_size=2048))
def test_parts_manifest_from_random_bytes(data: bytes) -> None:
    with contextlib.suppress(BundleError, UnsafeName):
        _assert_plain(PartsManifest.parse(data, "parts.dsse.json"))


@PROPERTY
@given(JSON)
def test_parts_manifest_from_random_json(value: Any) -> None:
    with contextlib.suppress(BundleError, UnsafeName):
        _assert_plain(PartsManifest.parse(json.dumps(value).encode(), "parts.dsse.json"))


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    """Manifests close to genuine ones, with names (and a few numbers) drawn from hostile sets."""
    name, version = draw(NAMES), draw(NAMES)
    size = draw(st.integers(0, 5000))
    block = draw(st.sampled_from([512, 1024, 4096]))
    blocks = -(-size // block)
    part = {"name": draw(NAMES), "kind": "data", "index": 0, "medium": draw(NAMES),
            "file": draw(NAMES), "offset": 0, "size": size, "sha256": draw(HEX),
            "blocks": [draw(HEX) for _ in range(blocks)]}  # fmt: skip
    return {
        "schema": SCHEMA, "name": name, "version": version, "sums_sha256": draw(HEX),
        "stream_size": size, "stream_sha256": draw(HEX),
        "stream_root": draw(st.sampled_from([f"{name}-{version}", draw(NAMES)])),
        "medium": "dvd", "capacity": draw(st.integers(-1, 10**6)), "k": 1, "n": 0,
        "block_size": block, "part_size": draw(st.integers(-1, 10**6)), "parts": [part],
    }  # fmt: skip


@PROPERTY
@given(manifests())
def test_near_genuine_manifests_hand_out_only_plain_names(value: dict[str, Any]) -> None:
    try:
        manifest = PartsManifest.parse(json.dumps(value).encode(), "parts.dsse.json")
    except (BundleError, UnsafeName):
        return
    _assert_plain(manifest)
    assert manifest.stream_root == manifest.label


@PROPERTY
@given(st.one_of(st.binary(max_size=512), JSON.map(lambda v: json.dumps(v).encode())))
def test_an_unchecked_envelope_raises_only_named_errors(data: bytes) -> None:
    with contextlib.suppress(BundleError, UnsafeName):
        open_manifest(data, "parts.dsse.json", ())


@st.composite
def archive_maps(draw: st.DrawFn) -> Any:
    """Maps close to genuine ones (inline base64, blob refs) and random JSON."""
    segments = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=64).map(lambda b: {"inline": base64.b64encode(b).decode()}),
                st.builds(lambda d, s: {"blob": d, "size": s},
                          st.one_of(HEX.map("sha256:{}".format), NAMES), st.integers(-5, 10**6)),
                JSON,
            ),
            max_size=6,
        )
    )  # fmt: skip
    return {"schema": MAP_SCHEMA, "size": draw(st.integers(-1, 10**6)), "sha256": draw(HEX),
            "segments": segments} if draw(st.booleans()) else draw(JSON)  # fmt: skip


@PROPERTY
@given(archive_maps())
def test_archive_map_raises_only_transfer_errors(value: Any) -> None:
    try:
        mapped = parse_map(value, "archive-map.json")
    except TransferError:
        return
    total = sum(len(s.data) if isinstance(s, Inline) else s.size for s in mapped.segments)
    assert total == mapped.size
    for segment in mapped.segments:
        if isinstance(segment, BlobRef):
            assert relative_path(f"blobs/sha256/{segment.hex}", "property")
            assert len(segment.hex) == 64 and set(segment.hex) <= set("0123456789abcdef")


@PROPERTY
@given(st.binary(max_size=4096), st.binary(max_size=1024))
def test_the_archive_mapper_on_random_bytes(head: bytes, tail: bytes) -> None:
    """Random bytes, and a real tar header followed by random bytes (a cut or garbled archive)."""
    header = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
    header.size = 10**6
    with tempfile.TemporaryDirectory() as folder:
        for data in (head, header.tobuf(tarfile.PAX_FORMAT) + tail):
            path = Path(folder) / "image.tar"
            path.write_bytes(data)
            try:
                mapped = map_archive(path)
            except TransferError:
                continue
            total = sum(len(s.data) if isinstance(s, Inline) else s.size for s in mapped.segments)
            assert total == len(data)


def test_a_base256_size_past_the_end_is_refused_without_reading_it() -> None:
    header = bytearray(tarfile.TarInfo("blobs/sha256/" + "b" * 64).tobuf(tarfile.USTAR_FORMAT))
    header[124:136] = b"\x80" + b"\xff" * 11  # GNU base-256: about 2**88 bytes
    header[148:156] = b" " * 8
    header[148:155] = f"{sum(header):06o}\0".encode()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.tar"
        path.write_bytes(bytes(header) + b"\0" * 1024)
        try:
            map_archive(path)
        except TransferError as exc:
            assert "runs past the archive's end" in exc.message
        else:
            raise AssertionError("a member larger than the archive was mapped")


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


MEMBER_NAMES = st.one_of(
    HOSTILE_NAMES.map(lambda n: f"demo-1/{n}"), HOSTILE_NAMES, st.text(min_size=1, max_size=30)
)
MEMBERS = st.lists(
    st.tuples(
        MEMBER_NAMES, st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE]),
        st.binary(max_size=64),
    ),
    max_size=5,
)  # fmt: skip


@PROPERTY
@given(MEMBERS)
def test_the_join_unpacker_writes_only_plain_names_under_its_folder(
    members: list[tuple[str, bytes, bytes]],
) -> None:
    manifest = PartsManifest(
        "demo", "1", "0" * 64, 0, "0" * 64, "demo-1", "dvd", 1, 1, 0, 512, 512,
        [PartEntry("data-01", "data", 0, "disc-01", "data-01.part", 0, 0, "0" * 64)],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        stream, into = Path(folder) / "stream", Path(folder) / "into"
        into.mkdir()
        try:
            stream.write_bytes(_tar(members))
        except (ValueError, UnicodeEncodeError):
            return  # a name tarfile itself cannot write
        with contextlib.suppress(BundleError, UnsafeName):
            _unpack(stream, manifest, into)
        for path in into.rglob("*"):
            assert not path.is_symlink()
            relative = path.relative_to(into).as_posix()
            assert relative_path(relative, "property") == relative
            assert relative.split("/")[0] == "demo-1"
