"""The hostile-input corpus: inputs an attacker in transit, on the media or in a recipe would write.

Every case runs an operator command on a hostile input and asserts, besides its own exit status and
message, the two things shared by all (`Hostile.check`):
- nothing was written outside the output folder: the `outside` folder beside it, planted with a
  canary, is byte-for-byte as it was, and no new name appeared next to the input or the output;
- no byte of a host file (`/etc/passwd`'s first line, the planted canary) appears in any output.

The property tests (test_properties.py) run under a Hypothesis profile chosen by
$HYPOTHESIS_PROFILE: `ci` (the default: 50 cases a test, derandomized so a run is repeatable) or
`fuzz` (`nox -s fuzz`: many cases, fresh randomness each run, the failing case's blob printed).
"""

from __future__ import annotations

import os
import secrets
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

from gapforge.cli import main

PASSWD = Path("/etc/passwd")

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True, database=None)
settings.register_profile("fuzz", max_examples=1_000, deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file bytes, 'dir', or 'link -> target' (links are not followed)."""
    found: dict[str, bytes | str] = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            elif path.is_file():
                found[rel] = path.read_bytes()
    return found


@dataclass
class Hostile:
    """One case's sandbox: `inputs` (what the attacker wrote), `out` (the command's output folder,
    not yet created), `outside` (must not change), and the canary's secret text."""

    root: Path
    inputs: Path
    out: Path
    outside: Path
    canary: Path
    secret: bytes
    before: dict[str, bytes | str] = field(default_factory=dict)
    root_names: set[str] = field(default_factory=set)

    def run(self, *argv: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        """`gapforge ARGV` in this process: (exit status, stdout + stderr). An exception that
        escapes main() (a traceback for the user) fails the test."""
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code if isinstance(exc.code, int) else 2
        except Exception:  # the point: a traceback is a failure of the case
            pytest.fail(f"gapforge {argv} raised instead of refusing:\n{traceback.format_exc()}")
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert "Traceback" not in text, text
        return status, text

    def check(self) -> None:
        """The two shared assertions: nothing outside `out` changed, no host bytes in any output."""
        assert _tree(self.outside) == self.before, "something was written or removed outside --out"
        new = {p.name for p in self.root.iterdir()} - self.root_names - {self.out.name}
        assert not new, f"new names beside the output folder: {sorted(new)}"
        passwd = PASSWD.read_bytes().splitlines()[0] if PASSWD.is_file() else b"root:x:0:0"
        for rel, content in _tree(self.out).items():
            if isinstance(content, bytes):
                assert self.secret not in content, f"{rel} holds the planted canary's bytes"
                assert passwd not in content, f"{rel} holds a line of {PASSWD}"
            else:
                assert not content.startswith("link"), f"{rel} is a symbolic link in the output"


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Hostile]:
    """A sandbox for one hostile case; `check()` runs after the test even if the test did not."""
    root = tmp_path / "site"
    inputs, out, outside = root / "in", root / "out", root / "outside"
    for folder in (inputs, outside):
        folder.mkdir(parents=True)
    secret = b"CANARY-" + secrets.token_hex(16).encode()
    canary = outside / "canary-secret.txt"
    canary.write_bytes(secret + b"\n")
    (outside / "IMPORTANT").mkdir()
    (outside / "IMPORTANT" / "keep.txt").write_bytes(b"keep me\n")
    case = Hostile(root, inputs, out, outside, canary, secret)
    case.before = _tree(outside)
    case.root_names = {p.name for p in root.iterdir()}
    yield case
    case.check()
