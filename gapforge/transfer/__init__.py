"""Transfer: move a bundle into the gap carrying only the blobs the site lacks (delta), on media
sized to the medium with parity (split, join).

Bundles are content-addressed, so the inside exports a signed inventory of the blobs it holds
(`inventory`), the outside writes a delta against it (`delta`), and the inside rebuilds the very
same image.tar from the delta and what it holds (`rebuild`), then verifies it like a full bundle:
the delta carries the original SHA256SUMS and SHA256SUMS.sig unchanged.

A delta bundle folder holds every file of the bundle except image.tar, plus:

    delta/delta.json          what it was made against, the blobs included and left out, the
                              full archive's size and sha256
    delta/archive-map.json    the archive as segments: inline bytes (tar headers, small members,
                              padding, end blocks; base64) and blob references (digest, size)
    delta/blobs/sha256/<hex>  only the blobs the site lacks

A split (`split`, `parity`, `split_manifest`; `join`, `join_sources`) serialises the bundle as one
deterministic tar stream cut into K data parts of the medium's size plus N zfec parity parts, each
with its own sha256 and per-block hashes in a signed manifest carried on every medium (with the
bundle's release metadata, `release-metadata/`, so a site under the trusted root can check the
manifest's signer before reading a part).

Check, then touch (`trust`, `delta_check`): a delta's signed SHA256SUMS and a parts manifest are
proven against the operator's anchor before anything they name is read or written; names from them
go through gapforge.names; links are refused, never followed; the result passes the trust gate
before it is renamed into place.
"""

from __future__ import annotations

from pathlib import Path

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
