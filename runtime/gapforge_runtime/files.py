"""Content hashes and atomic writes: every output is written to a temp name, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def describe_path(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, or of every file of a folder (sorted by relative path)."""
    if path.is_file():
        return {"path": str(path), "sha256": sha256_file(path), "size": path.stat().st_size}
    files = {
        str(p.relative_to(path)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
    # A folder's digest is the digest of its sorted (name, file digest) list: stable and cheap.
    listing = "".join(f"{name}\0{meta['sha256']}\n" for name, meta in files.items())
    return {
        "path": str(path),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "size": sum(meta["size"] for meta in files.values()),
        "files": files,
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temp name in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (sorted keys, indented, trailing newline) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success replace `final` with it, on failure remove it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Some writers (safetensors) create 0600 files; outputs are shared and go into image layers.
    for item in tmp.rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)
    tmp.chmod(0o755)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def temp_path_for(path: Path) -> Path:
    """A temp name beside `path` for a single file written by another program."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")
