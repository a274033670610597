"""ClamAV's side of the clean room (gapforge.scan): what a scan found (ScanReport), the site's
signature database, chosen or refused, and one `clamscan` process over a list of files, its output
parsed. Everything fails closed: no
clamscan, no signatures, or an error of clamscan's is an error, never a clean result."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.bundle import IMAGE_TAR
from gapforge.errors import GapforgeError
from gapforge.progress import console, note

CLAMSCAN = "clamscan"
DEFAULT_DATABASE = Path("/var/lib/clamav")
ENGINE_FILE_LIMIT = 2**31 - 1
"""The largest file ClamAV 1.4 scans (it warns that it cannot scan 2 GiB or more)."""
LIMIT_OPTIONS = (
    f"--max-filesize={ENGINE_FILE_LIMIT}",
    f"--max-scansize={ENGINE_FILE_LIMIT}",
    "--max-files=1000000",  # a wheel holds more than the default 10000 members
    "--max-scantime=0",  # no limit: the default gives up on a file after 2 minutes, as clean
    "--alert-exceeds-max=yes",  # a file over a limit is reported, not assumed clean
)
LIMIT_SIGNATURE = "Heuristics.Limits.Exceeded."
SIGNATURE_SUFFIXES = frozenset({
    ".cvd", ".cld", ".cud", ".hdb", ".hsb", ".hdu", ".hsu", ".mdb", ".msb", ".mdu", ".msu", ".ndb",
    ".ndu", ".ldb", ".ldu", ".idb", ".cdb", ".cbc", ".pdb", ".gdb", ".wdb", ".crb", ".yar", ".yara",
})  # fmt: skip
"""Files that carry signatures (.fp/.sfp/.ign/.ign2/.ftm/.cfg only tune others)."""
APT_FIX = (
    "install it with 'apt-get install clamav' (Debian's ClamAV; do not run freshclam in the gap)"
)
DB_FIX = "pass the site's ClamAV signature database with --clamav-db PATH (a folder of .cvd/.cld/.hdb/.ndb files, or one such file)"


class ScanError(GapforgeError):
    """The scan could not be made (no clamscan, no signatures, clamscan failed): never a clean result."""


@dataclass(frozen=True)
class Target:
    """What a file handed to clamscan is, in the bundle's terms."""

    file: str
    """The bundle file it is or lies in: `image.tar`, `wheels/x.whl`."""
    where: str
    """`layer 'model' (sha256:…), path opt/x` or `bundle file wheels/x.whl`."""


@dataclass(frozen=True)
class Finding:
    file: str
    where: str
    signature: str

    @property
    def over_limit(self) -> bool:
        """ClamAV's own note that a limit stopped it: not a virus, but not scanned either."""
        return self.signature.startswith(LIMIT_SIGNATURE)

    def message(self) -> str:
        if self.over_limit:
            limit = self.signature.removeprefix(LIMIT_SIGNATURE)
            return f"{self.where}: not scanned: over the engine's limit ({limit})"
        return f"{self.where}: {self.signature} FOUND"


@dataclass
class ScanReport:
    bundle: Path
    database: Path
    signatures: int = 0
    """How many signatures clamscan loaded ("Known viruses")."""
    database_files: list[str] = field(default_factory=list)
    engine: str = ""
    findings: list[Finding] = field(default_factory=list)
    """Signature hits and files a limit kept from being scanned (`over_limit`)."""
    errors: list[str] = field(default_factory=list)
    """clamscan's own errors and files it could not read: the scan is incomplete."""
    unsafe_names: list[tuple[str, str]] = field(default_factory=list)
    """(where, why): layer members whose names leave the root (scanned all the same)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Layer members with no bytes of their own, by kind (symlink, hardlink, device, fifo)."""
    files_listed: int = 0
    """Files handed to clamscan; it counts empty ones (`files_empty`) as not scanned."""
    files_empty: int = 0
    files_scanned: int = 0
    """clamscan's own count ("Scanned files")."""
    bytes_scanned: int = 0
    bytes_extracted: int = 0
    extract_seconds: float = 0.0
    scan_seconds: float = 0.0
    seconds: float = 0.0
    workers: int = 1

    @property
    def hits(self) -> list[Finding]:
        return [f for f in self.findings if not f.over_limit]

    @property
    def unscanned(self) -> list[Finding]:
        return [f for f in self.findings if f.over_limit]

    @property
    def ok(self) -> bool:
        return not (self.findings or self.errors or self.unsafe_names)

    def as_json(self) -> dict[str, Any]:
        def finding(f: Finding) -> dict[str, str]:
            return {"file": f.file, "where": f.where, "signature": f.signature}

        return {
            "bundle": str(self.bundle),
            "ok": self.ok,
            "hits": [finding(f) for f in self.hits],
            "unscanned": [finding(f) for f in self.unscanned],
            "errors": self.errors,
            "unsafe_names": [{"where": w, "why": why} for w, why in self.unsafe_names],
            "skipped": self.skipped,
            "files_listed": self.files_listed,
            "files_empty": self.files_empty,
            "files_scanned": self.files_scanned,
            "bytes_scanned": self.bytes_scanned,
            "bytes_extracted": self.bytes_extracted,
            "seconds": round(self.seconds, 3),
            "extract_seconds": round(self.extract_seconds, 3),
            "scan_seconds": round(self.scan_seconds, 3),
            "workers": self.workers,
            "database": {
                "path": str(self.database),
                "signatures": self.signatures,
                "files": self.database_files,
            },
            "engine": self.engine,
        }


def scan_problems(report: ScanReport) -> list[tuple[str, str]]:
    """(file, message) pairs for `VerifyReport.add`: every hit, unscanned file, unsafe name, error."""
    problems = [(f.file, f.message()) for f in report.findings]
    problems += [(IMAGE_TAR, f"{where}: {why}") for where, why in report.unsafe_names]
    problems += [("clamscan", f"the scan is incomplete: {error}") for error in report.errors]
    return problems


# --- the signature database --------------------------------------------------------------------


def database_files(database: Path) -> list[str]:
    """The files of `database` that carry signatures (names, sorted); [] when there are none."""
    if database.is_file():
        return [database.name] if database.stat().st_size > 0 else []
    if not database.is_dir():
        return []
    return sorted(
        p.name
        for p in database.iterdir()
        if p.suffix in SIGNATURE_SUFFIXES and p.is_file() and p.stat().st_size > 0
    )


def choose_database(database: Path | None) -> tuple[Path, list[str]]:
    """The database to scan with (`--clamav-db`, else /var/lib/clamav) and its signature files."""
    if database is None:
        files = database_files(DEFAULT_DATABASE)
        if not files:
            raise ScanError(
                f"no ClamAV signatures in {DEFAULT_DATABASE} (freshclam cannot fetch them inside an "
                f"air gap): {DB_FIX}"
            )
        return DEFAULT_DATABASE, files
    if not database.exists():
        raise ScanError(f"--clamav-db {database}: no such file or folder: {DB_FIX}")
    files = database_files(database)
    if not files:
        raise ScanError(
            f"--clamav-db {database}: holds no signatures (an empty database would pass "
            f"everything): {DB_FIX}"
        )
    return database, files


def find_clamscan() -> str:
    found = shutil.which(CLAMSCAN)
    if found is None:
        raise ScanError(f"{CLAMSCAN} is not installed: {APT_FIX}; then {DB_FIX}")
    return found


# --- running clamscan ----------------------------------------------------------------------------


_SUMMARY = re.compile(r"^(Known viruses|Engine version|Scanned files): (.*)$", re.M)


@dataclass
class ClamscanOutput:
    """What one clamscan run said: (path, signature) hits, its error lines and its summary."""

    hits: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)


def parse_clamscan(stdout: str, stderr: str) -> ClamscanOutput:
    """Parse `clamscan --infected --stdout` output: `PATH: SIGNATURE FOUND` lines (a signature
    name holds no ': ', a path may), `WARNING:`/`ERROR:` lines and the SCAN SUMMARY."""
    result = ClamscanOutput()
    for line in stdout.splitlines():
        if line.endswith(" FOUND") and ": " in line:
            path, _, signature = line.removesuffix(" FOUND").rpartition(": ")
            result.hits.append((path, signature))
        elif line.startswith(("WARNING: ", "ERROR: ")):
            result.errors.append(line)
    result.errors += [
        line for line in stderr.splitlines() if "Error" in line or line.startswith("ERROR")
    ]
    result.summary = {key: value.strip() for key, value in _SUMMARY.findall(stdout)}
    return result


def clamscan_command(clamscan: str, database: Path, file_list: Path) -> list[str]:
    return [
        clamscan,
        f"--database={database}",
        f"--file-list={file_list}",
        "--infected",
        "--stdout",
        "--follow-dir-symlinks=0",
        "--follow-file-symlinks=0",
        *LIMIT_OPTIONS,
    ]


@contextmanager
def _status(message: str) -> Iterator[None]:
    if console.is_terminal:
        with console.status(f"    {message}"):
            yield
    else:
        note(message)
        yield


def run_clamscan(
    clamscan: str, database: Path, targets: dict[str, Target], folder: Path, size: int
) -> ClamscanOutput:
    """One clamscan over every target (the database loads once); raises when it could not run."""
    file_list = folder / "files.txt"
    file_list.write_text("".join(path + "\n" for path in targets), encoding="utf-8")
    with _status(f"clamscan: {len(targets)} files, {size / 1e6:.0f} MB"):
        done = subprocess.run(
            clamscan_command(clamscan, database, file_list),
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
    output = parse_clamscan(done.stdout, done.stderr)
    if done.returncode not in (0, 1) and not output.errors:
        output.errors.append(f"clamscan exited with status {done.returncode}")
    if output.summary.get("Known viruses", "0") == "0":
        detail = "; ".join(output.errors) or done.stderr.strip()[-500:]
        raise ScanError(
            f"clamscan loaded no signatures from {database} ({detail or 'no summary'}): {DB_FIX}"
        )
    return output
