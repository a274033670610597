"""What `gapforge verify` found: every problem by file, the signature and its anchor, the release
check, the archive; `as_json()` for `verify --json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge.bundle.imagetar import ImageArchive

if TYPE_CHECKING:
    from gapforge.release.client import ReleaseCheck


@dataclass(frozen=True)
class Problem:
    file: str
    message: str


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
    public_keys: list[Ed25519PublicKey] = field(default_factory=list)
    release: ReleaseCheck | None = None
    scan: dict[str, Any] | None = None
    """The ClamAV scan's report (gapforge.scan.ScanReport.as_json), with --scan."""
    index: dict[str, Any] = field(default_factory=dict)
    archive: ImageArchive | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def development_key(self) -> bool:
        """bundle.json says it was signed with a build cache's development key."""
        return bool(self.index.get("signing_key", {}).get("development"))

    @property
    def bad_files(self) -> list[str]:
        return sorted({p.file for p in self.problems})

    def add(self, file: str, message: str) -> None:
        self.problems.append(Problem(file, message))

    def as_json(self) -> dict[str, Any]:
        archive = self.archive
        return {
            "bundle": str(self.bundle),
            "ok": self.ok,
            "problems": [{"file": p.file, "message": p.message} for p in self.problems],
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
