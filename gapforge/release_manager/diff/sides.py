"""The two sides of `gapforge diff`, each verified before a byte of it is compared: the design says
nothing is diffed before the check passes.

A bundle folder goes through the trust gate with the operator's anchor (--key, the trusted root
from 'gapforge trust init', or --insecure: the bundle's own key, integrity only). A release version
is resolved through the release repository to the bundle it was added from, which is verified
against the repository's own build keys (the candidate role), and its SHA256SUMS must be the very
one the repository lists for that version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gapforge.errors import BundleError

if TYPE_CHECKING:
    from gapforge.release_manager.repository import Repository


def verified_side(
    spec: str, key: Path | None, insecure: bool, open_repo: Callable[[], Repository]
) -> tuple[Path, str]:
    """The bundle folder `spec` names, once verified (module docstring), and the sha256 of the
    SHA256SUMS whose signature was proven (what the diff then reads must be the bytes it lists:
    gapforge.release_manager.diff.read.Signed); NotVerified (exit 1) or NoTrustAnchor / BundleError (exit 2)."""
    from gapforge.operator.anchor import Anchor, choose_anchor
    from gapforge.operator.transfer_trust import verify_or_refuse
    from gapforge.release import target_path
    from gapforge.release.keys import crypto_key
    from gapforge.release_manager.releases import resolve

    if Path(spec).is_dir():
        report = verify_or_refuse(Path(spec), choose_anchor("diff", key, insecure), "diff")
        return Path(spec), report.sums_sha256
    repo = open_repo()
    name, version = resolve(repo, spec)
    recorded = repo.bundles.get(f"{name}-{version}")
    if recorded is None or not Path(recorded).is_dir():
        raise BundleError(
            f"{spec}: release {name}/{version} is in {repo.path}, but the bundle it was added from "
            f"({recorded or 'not recorded'}) is not on this machine: pass the bundle folder instead"
        )
    keys = tuple(crypto_key(k) for k in repo.keys_of("candidate")[0])
    anchor = Anchor("key", keys, f"the build keys of the release repository {repo.path}")
    report = verify_or_refuse(Path(recorded), anchor, "diff")
    entry = repo.targets("candidate").signed.targets.get(target_path("candidate", name, version))
    listed = entry.hashes.get("sha256") if entry is not None else None
    actual = report.sums_sha256  # the very bytes whose signature was proven
    if listed != actual:
        raise BundleError(
            f"{recorded}: its SHA256SUMS (sha256 {actual}) is not the one the release repository "
            f"lists for {name} {version} ({listed}): the bundle folder changed after it was added; "
            "pass the released bundle"
        )
    return Path(recorded), actual
