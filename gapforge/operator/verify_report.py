"""What `gapforge verify` found: every problem by file, the signature and its anchor, the release
check, the archive; `as_json()` for `verify --json`.

`ok` means proven, never "no problem was noticed": the signature over SHA256SUMS was checked and
verified with a key the anchor gives, AND nothing else is wrong. Every path that cannot decide (no
index, no metadata, no key, an unreadable or malformed signature, a document of the wrong shape)
adds a problem, and a problem marked `refused` (the input could not be judged) makes the exit status
2 rather than 1.

With `--insecure` the anchor is the bundle's own key: `ok` then proves integrity only (the files
are the ones that key signed), never origin. `authenticated` is True only when the key came from the
operator (a pinned `--key`, or a build key the trusted TUF root names); the trust gate
(gapforge.operator.gate) and receipts require it, and `verify --json` prints both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.imagetar import ImageArchive
from gapforge.names import printable

if TYPE_CHECKING:
    from gapforge.operator.tuf_client import ReleaseCheck


@dataclass(frozen=True)
class Problem:
    file: str
    message: str
    refused: bool = False
    """The input could not be judged (malformed, missing, unreadable): exit 2, not 1."""


@dataclass
class VerifyReport:
    bundle: Path
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    workers: int = 1
    key_fingerprint: str = ""
    key_source: str = ""
    key_pinned: bool = False
    signature_ok: bool = False
    anchor: str = ""
    """How the signature was anchored: `key` (pinned), `root` (a TUF release), `insecure`."""
    anchor_identity: str = ""
    """gapforge.operator.anchor.Anchor.identity: what a receipt binds ('' for --insecure)."""
    public_keys: list[Ed25519PublicKey] = field(default_factory=list)
    release: ReleaseCheck | None = None
    scan: dict[str, Any] | None = None
    """The ClamAV scan's report (gapforge.scan.ScanReport.as_json), with --scan."""
    index: dict[str, Any] = field(default_factory=dict)
    """bundle.json, once its shape was checked ({} when it is missing or malformed)."""
    archive: ImageArchive | None = None
    sums_sha256: str = ""
    """sha256 of the very SHA256SUMS bytes the signature was checked over ('' when none)."""
    changed_reads: set[str] = field(default_factory=set)
    """Documents whose bytes, read to be used, did not hash to their signed line (never used);
    verify names those whose hashed read matched: the medium served other bytes to each read."""
    archive_hashed: bool = False
    """The archive's bytes were hashed against their signed line (False for the check `run`,
    `preflight` and `inspect` make, and for `load` until the stream into Docker matched)."""

    @property
    def ok(self) -> bool:
        """Proven: the signature verified with a key the anchor gives, and no problem was found.
        Under --insecure (anchor `insecure`) that proves integrity only: see `authenticated`."""
        return self.signature_ok and bool(self.sums_sha256) and not self.problems

    @property
    def authenticated(self) -> bool:
        """`ok`, with a key the operator chose (pinned, or named by the trusted TUF root): origin
        proven, not just integrity."""
        return self.ok and self.anchor in ("key", "root")

    @property
    def exit_status(self) -> int:
        """0 proven; 2 when some input could not be judged (a refusal); 1 a failed check."""
        if self.ok:
            return 0
        return 2 if any(p.refused for p in self.problems) else 1

    @property
    def development_key(self) -> bool:
        """bundle.json says it was signed with a build cache's development key."""
        signing = self.index.get("signing_key")
        return isinstance(signing, dict) and signing.get("development") is True

    @property
    def bad_files(self) -> list[str]:
        return sorted({p.file for p in self.problems})

    def add(self, file: str, message: str) -> None:
        """A failed check (exit 1). Names come from the bundle: shown escaped (names.printable),
        so a file name cannot write terminal escape sequences into the report."""
        self.problems.append(Problem(printable(file), printable(message)))

    def refuse(self, file: str, message: str) -> None:
        """An input that cannot be judged (exit 2): missing, malformed, unreadable."""
        self.problems.append(Problem(printable(file), printable(message), refused=True))

    def as_json(self) -> dict[str, Any]:
        archive = self.archive
        return {
            "bundle": str(self.bundle),
            "ok": self.ok,
            "authenticated": self.authenticated,
            "integrity_only": self.ok and not self.authenticated,
            "exit_status": self.exit_status,
            "sha256sums_sha256": self.sums_sha256,
            "problems": [
                {"file": p.file, "message": p.message, "refused": p.refused} for p in self.problems
            ],
            "bad_files": self.bad_files,
            "files_checked": self.files_checked,
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "signature": {
                "ok": self.signature_ok,
                "key_fingerprint": self.key_fingerprint,
                "key_source": self.key_source,
                "key_pinned": self.key_pinned,
                "anchor": self.anchor,
                "anchor_identity": self.anchor_identity,
                "development_key": self.development_key,
            },
            "scan": self.scan,
            "release": None
            if self.release is None
            else {
                "name": self.release.name,
                "version": self.release.version,
                "channel": self.release.channel,
                "found_on": self.release.found_on,
                "root_version": self.release.root_version,
                "ok": self.release.ok,
            },
            "image": None
            if archive is None
            else {
                "ref": (archive.repo_tags or [""])[0],
                "manifest_digest": archive.manifest_digest,
                "config_digest": archive.config_digest,
            },
        }
