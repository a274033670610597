"""The byte sink every deterministic tar is written through: blocks written and hashed at once.

A layer is written once and its digest is needed at once (the manifest names it); reading the tar
back to hash it would double the disk traffic of the build's biggest step. tar.py decides what the
bytes are; this module only moves them, so it knows nothing of tar.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 1024 * 1024
"""Bytes per block written and hashed: big enough for hashlib to release the GIL for long."""
BLOCKS = 4
"""Blocks in flight per tar being written: one filling, the others being written or hashed."""


class HashingSink:
    """Write-through blocks of CHUNK bytes: each full block goes to `out`, then to a hashing thread.

    Members are copied straight into the current block (`readinto`), so the bytes are copied once
    from the page cache and never again; the block is written by the caller's thread while the
    previous one is hashed on another (hashlib releases the GIL), so writing costs about what
    hashing alone does. A block is reused only once it is both written and hashed.
    """

    def __init__(self, out: BinaryIO, progress: Callable[[int], None] | None) -> None:
        self._out = out
        self._progress = progress
        self._digest = hashlib.sha256()
        self.size = 0
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(BLOCKS):
            self._free.put(bytearray(CHUNK))
        self._full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._hasher = threading.Thread(target=self._hash_blocks, name="tar-hash", daemon=True)
        self._hasher.start()
        self._block = self._free.get()
        self._view = memoryview(self._block)
        self._used = 0

    @property
    def offset(self) -> int:
        """Bytes written so far, the current block included."""
        return self.size + self._used

    def _hash_blocks(self) -> None:
        while (item := self._full.get()) is not None:
            block, length = item
            self._digest.update(memoryview(block)[:length])
            self._free.put(block)

    def _flush(self) -> None:
        if not self._used:
            return
        self._out.write(self._view[: self._used])
        self.size += self._used
        if self._progress is not None:
            self._progress(self._used)
        self._full.put((self._block, self._used))
        self._block = self._free.get()
        self._view = memoryview(self._block)
        self._used = 0

    def write(self, data: bytes) -> None:
        """Append `data` (headers, padding, small members)."""
        offset = 0
        while offset < len(data):
            take = min(len(data) - offset, CHUNK - self._used)
            self._view[self._used : self._used + take] = data[offset : offset + take]
            self._used += take
            offset += take
            if self._used == CHUNK:
                self._flush()

    def copy_from(self, stream: BinaryIO, size: int, path: str) -> None:
        """Append exactly `size` bytes read from `stream`, read straight into the block."""
        readinto = getattr(stream, "readinto", None)
        remaining = size
        while remaining:
            take = min(remaining, CHUNK - self._used)
            target = self._view[self._used : self._used + take]
            if readinto is not None:
                got = readinto(target)
            else:
                data = stream.read(take)
                got = len(data)
                target[:got] = data
            if not got:
                raise OSError(
                    f"{path}: unexpected end of data: the file is {size - remaining} bytes long, "
                    f"but {size} were listed when the layer was planned (did it change meanwhile?)"
                )
            self._used += got
            remaining -= got
            if self._used == CHUNK:
                self._flush()

    def finish(self) -> str:
        """Write what is left, wait for the hash; `sha256:<hex>` of every byte written."""
        self._flush()
        self._full.put(None)
        self._hasher.join()
        return "sha256:" + self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the hashing thread after an error (what was written is thrown away)."""
        self._full.put(None)
        self._hasher.join()
