"""The trust anchor of an operator command: what a bundle's signature is checked against.

A key that travels inside the bundle proves nothing about who made it: whoever altered the bundle
can re-sign it and ship their own public key beside it. So `verify`, `load`, `run` and `preflight`
need an anchor the operator received out of band, one of:

- `--key FILE`: the release key's public half, pinned for this command;
- the release repository's TUF root, installed once with `gapforge trust init root.json` (later
  roots arrive through TUF rotation): the bundle must then be a release the repository lists on the
  site's channel, not revoked, its SHA256SUMS the one the repository signed, and SHA256SUMS.sig made
  by a build key the repository names.

With neither the command stops (exit 2) and says how to get one. `--insecure` uses the bundle's own
key, which proves integrity (the files are the ones that key signed) but not origin; it is printed
loudly and never silent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.sign import fingerprint, load_public_key
from gapforge.errors import GapforgeError

AnchorKind = Literal["key", "root", "insecure"]


class NoTrustAnchor(GapforgeError):
    """No pinned key, no trusted root, no --insecure: nothing to check a signature against."""


@dataclass(frozen=True)
class Anchor:
    kind: AnchorKind
    keys: tuple[Ed25519PublicKey, ...] = ()
    """`key`: the pinned key. `root`: empty until the release check names the build keys."""
    source: str = ""
    """Where the trust comes from, for the report: `--key release.pub.pem`, `trusted root (…)`."""
    metadata: Path | None = None
    """`root`: the release metadata folder to use instead of the bundle's own release/metadata/."""
    channel: str | None = None
    """`root`: the channel to require instead of the site's (trust init --channel)."""
    root_identity: str = ""
    """`root`: the trusted root's identity (`root_identity`), set by choose_anchor."""

    @property
    def pinned(self) -> bool:
        return self.kind != "insecure"

    @property
    def fingerprints(self) -> list[str]:
        return [fingerprint(key) for key in self.keys]

    @property
    def identity(self) -> str:
        """What a receipt binds as "the anchor": `key:<fingerprint>` of a pinned key, the trusted
        root's `tuf-root:sha256:…`, '' for --insecure (which anchors nothing)."""
        if self.kind == "key":
            return "key:" + ",".join(sorted(self.fingerprints))
        return self.root_identity if self.kind == "root" else ""


def root_identity(trust: Path | None = None) -> str:
    """The trusted TUF root, as one string: the sha256 of its sorted root key IDs. A root rotation
    to other keys changes it, so receipts made under the old root no longer authorise a run."""
    from gapforge.operator.tuf_client import trust_state

    keyids = sorted(keyid for _, keyid in trust_state(trust).root_keys)
    return "tuf-root:sha256:" + hashlib.sha256(",".join(keyids).encode()).hexdigest()


def no_anchor_message(command: str) -> str:
    return (
        f"'gapforge {command}' needs a trust anchor, and this machine has none: a key inside the "
        "bundle proves nothing, since whoever altered the bundle can re-sign it and ship their own "
        "key beside it. Either install the release repository's root once with 'gapforge trust "
        "init root.json' (root.json comes from your release manager out of band: on its own "
        "medium, its fingerprint read over the phone), or pass --key RELEASE.pub.pem (the release "
        "key's public half, received out of band). --insecure checks the files against the "
        "bundle's own key only (integrity, not origin): never for production."
    )


def choose_anchor(
    command: str,
    key: Path | None = None,
    insecure: bool = False,
    metadata: Path | None = None,
    channel: str | None = None,
) -> Anchor:
    """--key, else the trusted root, else --insecure, else NoTrustAnchor (exit 2)."""
    from gapforge.operator.tuf_client import trust_dir, trusted_root_installed

    if key is not None:
        return Anchor("key", (load_public_key(key),), f"--key {key}", metadata, channel)
    if trusted_root_installed():
        return Anchor("root", (), f"the trusted release root in {trust_dir()}", metadata, channel,
                      root_identity())  # fmt: skip
    if insecure:
        return Anchor("insecure", (), "the bundle's own key (--insecure: NOT pinned)")
    raise NoTrustAnchor(no_anchor_message(command))
