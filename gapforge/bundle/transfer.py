"""The formats a bundle crosses the gap in, read and written on both sides: a delta's folder and
records, an inventory's type, and the error of any transfer input. The release manager's side is
gapforge/release_manager/ (delta, split); the site's is gapforge/operator/ (inventory, join,
rebuild).

Bundles are content-addressed, so the inside exports a signed inventory of the blobs it holds
(`operator/inventory.py`), the outside writes a delta against it (`release_manager/delta.py`),
and the inside rebuilds the very same image.tar from the delta and what it holds
(`operator/rebuild.py`), then verifies it like a full bundle: the delta carries the original
SHA256SUMS and SHA256SUMS.sig unchanged.

A delta bundle folder holds every file of the bundle except image.tar, plus:

    delta/delta.json          what it was made against, the blobs included and left out, the
                              full archive's size and sha256
    delta/archive-map.json    the archive as segments: inline bytes (tar headers, small members,
                              padding, end blocks; base64) and blob references (digest, size)
    delta/blobs/sha256/<hex>  only the blobs the site lacks

A split (`release_manager/split.py`, `bundle/parity.py`, `bundle/split_manifest.py`;
`operator/join.py`, `operator/join_sources.py`) serialises the bundle as one deterministic tar
stream cut into K data parts of the medium's size plus N zfec parity parts, each with its own sha256 and per-block
hashes in a signed manifest carried on every medium (with the bundle's release metadata,
`release-metadata/`, so a site under the trusted root can check the manifest's signer before
reading a part).

Check, then touch (`operator/transfer_trust.py`, `operator/delta_check.py`): a delta's signed
SHA256SUMS and a parts manifest are proven against the operator's anchor before anything they
name is read or written; names from them go through gapforge.names; links are refused, never
followed; the result passes the trust gate before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.bundle import IMAGE_TAR, INDEX, SUMS
from gapforge.bundle.sums import parse_sums
from gapforge.errors import GapforgeError

DELTA_DIR = "delta"
DELTA_JSON = f"{DELTA_DIR}/delta.json"
ARCHIVE_MAP = f"{DELTA_DIR}/archive-map.json"
DELTA_BLOBS = f"{DELTA_DIR}/blobs/sha256"
DELTA_SCHEMA = "gapforge/delta/v1"
MAP_SCHEMA = "gapforge/archive-map/v1"
INVENTORY_SCHEMA = "gapforge/inventory/v1"
INVENTORY_TYPE = "application/vnd.gapforge.inventory+json"


class TransferError(GapforgeError):
    """An inventory, a delta or a rebuild's input is unusable, or a blob cannot be found."""


def is_delta(path: Path) -> bool:
    """True for a delta bundle folder (it has delta/delta.json and delta/archive-map.json)."""
    return (path / DELTA_JSON).is_file() and (path / ARCHIVE_MAP).is_file()


CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class BundleFacts:
    """What the transfer needs from a bundle's (or a delta's) small files."""

    folder: Path
    index: dict[str, Any]
    sums: bytes
    archive_sha256: str
    """image.tar's line in SHA256SUMS."""
    lines: dict[str, str] = field(default_factory=dict)
    """Every SHA256SUMS line: file name → sha256 hex."""

    @property
    def label(self) -> str:
        return f"{self.index.get('name')}-{self.index.get('version')}"

    @property
    def sums_sha256(self) -> str:
        return hashlib.sha256(self.sums).hexdigest()

    def blob_names(self) -> dict[str, str]:
        """digest → what the blob is, for messages: `layer 'model'`, `the image config`."""
        image = self.index.get("image", {})
        names = {
            str(image.get("config_digest")): "the image config",
            str(image.get("manifest_digest")): "the image manifest",
        }
        for layer in image.get("layers", []):
            names[str(layer.get("digest"))] = f"layer '{layer.get('name')}'"
        return names


def read_facts(folder: Path) -> BundleFacts:
    """bundle.json and SHA256SUMS of a bundle or delta folder, and image.tar's line in it."""
    missing = [name for name in (INDEX, SUMS) if not (folder / name).is_file()]
    if missing:
        raise TransferError(
            f"{folder}: {', '.join(missing)} missing: not a bundle folder 'gapforge build' wrote "
            "(or a delta made from one); pass the whole folder"
        )
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TransferError(f"{folder / INDEX}: cannot be read ({exc})") from None
    sums = (folder / SUMS).read_bytes()
    lines, _ = parse_sums(sums.decode(errors="replace"))
    line = next((line for line in lines if line.name == IMAGE_TAR), None)
    if not isinstance(index, dict) or line is None:
        raise TransferError(
            f"{folder}: {SUMS} lists no {IMAGE_TAR} (or {INDEX} is not an object): not a bundle "
            "gapforge built"
        )
    return BundleFacts(folder, index, sums, line.sha256, {x.name: x.sha256 for x in lines})


def delta_record(delta: Path) -> dict[str, Any]:
    """delta/delta.json of a delta folder."""
    try:
        value = json.loads((delta / DELTA_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TransferError(f"{delta / DELTA_JSON}: cannot be read ({exc})") from None
    if not isinstance(value, dict) or value.get("schema") != DELTA_SCHEMA:
        raise TransferError(f"{delta / DELTA_JSON}: not a gapforge delta (schema {DELTA_SCHEMA})")
    return value
