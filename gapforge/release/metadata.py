"""TUF metadata as files, shared by the release repository (connected side) and the site's TUF
client (inside): timestamps as TUF writes them, a role's keys, and writes that are never seen
half-done."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key
from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization.json import JSONSerializer


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write(path: Path, data: bytes) -> None:
    """Write a finished file under its final name by rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def metadata_bytes(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


def role_keys(delegator: Root | Targets, role: str) -> list[Key]:
    """The keys a delegator names for `role`, in its order."""
    delegated = delegator.get_delegated_role(role)
    return [delegator.get_key(keyid) for keyid in delegated.keyids]
