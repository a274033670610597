"""Parity over media parts with zfec, stripe by stripe, and the block hashes that make it safe.

The K data parts are plain byte ranges of the stream. Stripe s is block s of every part (block_size
bytes at block_size * s); zfec turns the K data blocks of a stripe into N parity blocks, and any K of
the K + N blocks of a stripe give the data blocks back. A stripe is as long as block s of data-01
(the longest part); a shorter data part (the last one) counts as zeros past its end, which need no
medium, so they are always "present".

zfec does not notice a wrong share: fed a corrupt block it returns wrong data without a word. So
every block of every part has its own sha256 in the signed manifest, a block is fed to zfec only
after its hash matched, and each block zfec rebuilds is checked against its hash too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import zfec

MAX_SHARES = 256
"""zfec works in GF(2^8): at most 256 parts (data + parity) in one set."""


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def block_hashes(data: bytes, block_size: int) -> list[str]:
    """sha256 of each block of `data` (for tests and small parts; split hashes as it writes)."""
    return [
        hashlib.sha256(data[i : i + block_size]).hexdigest()
        for i in range(0, len(data), block_size)
    ]


def block_length(part_size: int, block_size: int, stripe: int) -> int:
    """How many bytes of a part of `part_size` bytes lie in `stripe` (0 past its end)."""
    return max(0, min(block_size, part_size - stripe * block_size))


def stripe_length(first_part_size: int, block_size: int, stripe: int) -> int:
    """The length of every block of `stripe` as zfec sees it (data-01 is the longest part)."""
    return block_length(first_part_size, block_size, stripe)


def padded(block: bytes, length: int) -> bytes:
    return block if len(block) == length else block + bytes(length - len(block))


class StripeCoder:
    """zfec's encoder and decoder for K data and N parity shares, built once for a whole set."""

    def __init__(self, k: int, n: int) -> None:
        if k < 1 or n < 0 or k + n > MAX_SHARES:
            raise ValueError(f"k={k}, n={n}: need k >= 1 and k + n <= {MAX_SHARES}")
        self.k, self.n = k, n
        self._encoder = zfec.Encoder(k, k + n) if n else None
        self._decoder = zfec.Decoder(k, k + n)
        self._parity_numbers = tuple(range(k, k + n))

    def encode(self, data_blocks: Sequence[bytes]) -> list[bytes]:
        """The N parity blocks of one stripe; `data_blocks` are K blocks of the same length."""
        if self._encoder is None:
            return []
        return [bytes(b) for b in self._encoder.encode(tuple(data_blocks), self._parity_numbers)]

    def decode(self, shares: dict[int, bytes]) -> list[bytes]:
        """The K data blocks of a stripe from any K shares (share number → block), all checked
        against their hashes first: zfec cannot tell a wrong share from a right one."""
        if len(shares) < self.k:
            raise ValueError(f"{len(shares)} shares, {self.k} needed")
        chosen = sorted(shares)[: self.k]
        if chosen == list(range(self.k)):
            return [shares[i] for i in chosen]
        blocks = tuple(shares[i] for i in chosen)
        return [bytes(b) for b in self._decoder.decode(blocks, tuple(chosen))]
