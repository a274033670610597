"""Which tensors of a .safetensors file changed: one sha256 per tensor, read from the file's header.

A safetensors file is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the tensors'
bytes (offsets count from the end of the header). The model files are read straight out of the model
layer inside image.tar, streamed through `tarfile`: nothing is extracted to disk.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, BinaryIO, cast

CHUNK = 4 * 1024 * 1024
MAX_HEADER = 100 * 1024 * 1024
"""The format's own limit on the JSON header (the safetensors library refuses larger ones)."""
BLOB_PREFIX = "blobs/sha256/"


@dataclass(frozen=True)
class TensorDigest:
    """One tensor as the header describes it, and the sha256 of its bytes."""

    dtype: str
    shape: tuple[int, ...]
    sha256: str
    size: int
    """Bytes of the tensor's data."""

    def describe(self) -> str:
        """`F32[576, 49152]`: dtype and shape, the way release notes name a tensor."""
        return f"{self.dtype}[{', '.join(str(n) for n in self.shape)}]"


def _entry(name: str, value: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(value, dict):
        raise ValueError(f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str):
        raise ValueError(f"tensor {name!r}: dtype is not a string ({dtype!r})")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"tensor {name!r}: shape is not a list of sizes ({shape!r})")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise ValueError(
            f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end] within the "
            f"{data_size} bytes of data"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _read_exactly(stream: BinaryIO, count: int, digest: Any | None = None) -> bytes:
    """Read `count` bytes; feed them to `digest` (and return b'') when given, else return them."""
    kept = bytearray()
    left = count
    while left:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            raise ValueError(f"the file ends {left} bytes early")
        if digest is None:
            kept += chunk
        else:
            digest.update(chunk)
        left -= len(chunk)
    return bytes(kept)


def tensor_digests(stream: BinaryIO, size: int) -> dict[str, TensorDigest]:
    """Each tensor of the safetensors file in `stream` (`size` bytes, read from its current position
    forwards, never seeking back): name → dtype, shape and sha256 of its bytes.

    Works on an open file or on a tar member (`TarFile.extractfile`). Raises ValueError, naming what
    is wrong, when the bytes are not a well-formed safetensors file."""
    if size < 8:
        raise ValueError(f"{size} bytes is too short for a safetensors file")
    (header_size,) = struct.unpack("<Q", _read_exactly(stream, 8))
    if header_size > min(MAX_HEADER, size - 8):
        raise ValueError(f"header length {header_size} does not fit in a {size}-byte file")
    try:
        header = json.loads(_read_exactly(stream, header_size))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    data_size = size - 8 - header_size
    entries = sorted(
        (
            (name, *_entry(name, value, data_size))
            for name, value in header.items()
            if name != "__metadata__"
        ),
        key=lambda e: (e[3], e[4]),
    )
    position = 0
    result: dict[str, TensorDigest] = {}
    for name, dtype, shape, begin, end in entries:
        if begin < position:
            raise ValueError(f"tensor {name!r} overlaps the tensor before it")
        _read_exactly(stream, begin - position, hashlib.sha256())  # a gap: read past it
        digest = hashlib.sha256()
        _read_exactly(stream, end - begin, digest)
        position = end
        result[name] = TensorDigest(dtype, shape, digest.hexdigest(), end - begin)
    return result


# --- the model layer inside image.tar ----------------------------------------------------------------


def _find_in_layer(layer: tarfile.TarFile, names: list[str]) -> dict[str, tarfile.TarInfo]:
    """Model file name (relative to the model folder) → the layer's member for it."""
    found: dict[str, tarfile.TarInfo] = {}
    for info in layer:
        if not info.isfile():
            continue
        path = PurePosixPath(info.name.removeprefix("./"))
        for name in names:
            if (path.as_posix() == name or path.as_posix().endswith("/" + name)) and (
                name not in found or len(info.name) < len(found[name].name)
            ):
                found[name] = info
    return found


def model_file_tensors(
    image_tar: str, layer_digests: list[str], names: list[str]
) -> dict[str, dict[str, TensorDigest] | str]:
    """For each model file in `names`: its tensors, or why they could not be read.

    `layer_digests` are the layers to look in, the model layer first (the others are looked in only
    when a file is not found in it). Reads the archive's tar headers and the files' bytes, nothing
    else; never raises on a bad archive (the reason is returned instead)."""
    result: dict[str, dict[str, TensorDigest] | str] = {}
    try:
        with tarfile.open(image_tar, "r:") as archive:
            left = list(names)
            for digest in layer_digests:
                if not left:
                    break
                member = archive.getmember(BLOB_PREFIX + digest.removeprefix("sha256:"))
                blob = archive.extractfile(member)
                if blob is None:
                    continue
                with tarfile.open(fileobj=blob, mode="r:") as layer:
                    for name, info in _find_in_layer(layer, left).items():
                        stream = layer.extractfile(info)
                        if stream is None:
                            continue
                        try:
                            result[name] = tensor_digests(cast(BinaryIO, stream), info.size)
                        except ValueError as exc:
                            result[name] = f"not a readable safetensors file: {exc}"
                        left.remove(name)
    except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
        reason = f"{image_tar} could not be read ({type(exc).__name__}: {exc})"
        return {name: result.get(name, reason) for name in names}
    for name in names:
        result.setdefault(name, f"not found in the image's model layer in {image_tar}")
    return result
