"""What a release manager does to releases: add a bundle to `candidate`, promote it to `approved`
(with as many approvers as the threshold asks), revoke it; and the lookups show/list use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, TargetFile, Targets

from gapforge.bundle.sign import signature_valid
from gapforge.release import CHANNELS, REVOKED, ReleaseError, target_path
from gapforge.release.keys import crypto_key, key_fingerprint
from gapforge.release.metadata import atomic_write, iso, metadata_bytes
from gapforge.release_manager.entry import read_bundle
from gapforge.release_manager.repository import STAGED, Repository, sign_role


@dataclass
class Release:
    """One name and version as the repository lists it."""

    name: str
    version: str
    channels: list[str] = field(default_factory=list)
    revoked: dict[str, Any] | None = None
    custom: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    length: int = 0

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


def releases(repo: Repository) -> dict[tuple[str, str], Release]:
    """Every release listed on a channel or revoked, by (name, version)."""
    found: dict[tuple[str, str], Release] = {}
    roles = {role: repo.targets(role) for role in ("targets", *CHANNELS)}
    for role, md in roles.items():
        for path, entry in md.signed.targets.items():
            channel, _, rest = path.partition("/")
            name, _, version = rest.partition("/")
            release = found.setdefault((name, version), Release(name, version))
            if role == "targets" and channel == REVOKED:
                release.revoked = dict(entry.custom.get("revoked", {})) if entry.custom else {}
                continue
            if channel != role:
                continue
            release.channels.append(channel)
            release.custom = dict(entry.custom or {})
            release.sha256 = entry.hashes.get("sha256", "")
            release.length = entry.length
    return found


def resolve(repo: Repository, spec: str) -> tuple[str, str]:
    """`<name>/<version>`, `<name>-<version>` or a bare version (when only one name has it)."""
    known = sorted(releases(repo))
    if "/" in spec:
        name, _, version = spec.partition("/")
        if (name, version) in known:
            return name, version
    matches = [(n, v) for n, v in known if f"{n}-{v}" == spec] or [
        (n, v) for n, v in known if v == spec
    ]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(f"{n}/{v}" for n, v in known) or "none yet"
    if len(matches) > 1:
        raise ReleaseError(
            f"{spec}: several recipes have this version ({', '.join(f'{n}/{v}' for n, v in matches)}): "
            "name one as <name>/<version> or <name>-<version>"
        )
    raise ReleaseError(
        f"{spec}: no such release in {repo.path} (listed: {listed}): add the bundle first with "
        "'gapforge release add BUNDLE'"
    )


@dataclass(frozen=True)
class AddResult:
    name: str
    version: str
    added: bool
    """False when the same SHA256SUMS was already listed (nothing changed)."""
    signer: str
    """The fingerprint of the build key whose signature on SHA256SUMS verified."""


def add_bundle(repo: Repository, bundle: Path, keys: list[Path] | None = None) -> AddResult:
    """List a built bundle on `candidate`, after checking SHA256SUMS.sig with a build key."""
    found = read_bundle(bundle, repo.clock())
    build_keys, threshold = repo.keys_of("candidate")
    signer = next(
        (k for k in build_keys if signature_valid(crypto_key(k), found.sums, found.signature)),
        None,
    )
    if signer is None:
        claimed = (found.index.get("signing_key") or {}).get("fingerprint", "an unknown key")
        accepted = ", ".join(key_fingerprint(k) for k in build_keys)
        raise ReleaseError(
            f"{bundle}/SHA256SUMS.sig: not signed by a build key this repository names. The bundle "
            f"says it was signed by {claimed}; the candidate role accepts {accepted}. Rebuild with "
            "a build key (gapforge build --key ...), or add the key with 'gapforge release rotate "
            "--role candidate --add-key KEY.pub.pem'"
        )
    path = target_path("candidate", found.name, found.version)
    candidate = repo.targets("candidate")
    entry = TargetFile.from_data(path, found.sums, ["sha256"])
    existing = candidate.signed.targets.get(path)
    fp = key_fingerprint(signer)
    if existing is not None:
        if existing.hashes == entry.hashes and existing.length == entry.length:
            return AddResult(found.name, found.version, False, fp)
        raise ReleaseError(
            f"{found.name} {found.version} is already on candidate with another SHA256SUMS "
            f"(sha256 {existing.hashes.get('sha256')}, this bundle's is {entry.hashes['sha256']}): "
            "released versions are immutable; bump the recipe's version and build again"
        )
    entry.unrecognized_fields["custom"] = found.custom
    repo.renew(candidate, "candidate")
    candidate.signed.targets[path] = entry
    sign_role(candidate, "candidate", build_keys, threshold, repo.keyring(keys or []))
    repo.publish({"candidate": candidate}, repo.keyring(keys or []))
    repo.bundles[found.label] = str(found.path)
    repo.save_settings()
    repo.log("add", version=found.label, channel="candidate")
    return AddResult(found.name, found.version, True, fp)


@dataclass(frozen=True)
class PromoteResult:
    name: str
    version: str
    signatures: int
    threshold: int
    published: bool
    already: bool = False


def _refuse_promotion(repo: Repository, name: str, version: str, entry: TargetFile) -> None:
    custom = entry.custom or {}
    problems = []
    if (custom.get("signing_key") or {}).get("development"):
        problems.append(
            "it was signed with the cache's development key (signing_key.development is true): "
            "rebuild with a build key (--key or $GAPFORGE_SIGNING_KEY) under a new version"
        )
    pretest = custom.get("pretest") or {}
    if pretest.get("passed") is not True:
        problems.append(
            f"its pretest did not pass (verdict {pretest.get('verdict')!r}): fix the recipe and "
            "build a new version"
        )
    revoked = repo.targets().signed.targets.get(target_path(REVOKED, name, version))
    if revoked is not None:
        info = (revoked.custom or {}).get("revoked", {})
        problems.append(f"it was revoked on {info.get('at')}: {info.get('reason')}")
    if problems:
        raise ReleaseError(
            f"{name} {version} cannot be promoted to approved: " + "; ".join(problems)
        )


def promote(repo: Repository, spec: str, keys: list[Path], to: str = "approved") -> PromoteResult:
    """Copy a candidate entry into `approved`, signed by approvers; stage it below the threshold."""
    if to != "approved":
        raise ReleaseError(f"--to {to}: releases are promoted from candidate to approved only")
    name, version = resolve(repo, spec)
    candidate_entry = repo.targets("candidate").signed.targets.get(
        target_path("candidate", name, version)
    )
    if candidate_entry is None:
        raise ReleaseError(
            f"{name} {version} is not on candidate: add its bundle first ('gapforge release add')"
        )
    _refuse_promotion(repo, name, version, candidate_entry)
    path = target_path("approved", name, version)
    approved_keys, threshold = repo.keys_of("approved")
    current = repo.targets("approved")
    if path in current.signed.targets:
        return PromoteResult(name, version, threshold, threshold, True, already=True)
    staged_path = repo.path / STAGED / "approved.json"
    md: Metadata[Targets]
    if staged_path.is_file():
        md = Metadata.from_file(str(staged_path))
        staged_paths = set(md.signed.targets) - set(current.signed.targets)
        if md.signed.version != current.signed.version + 1 or staged_paths != {path}:
            raise ReleaseError(
                f"{staged_path} holds another approval in progress ({', '.join(sorted(staged_paths))}"
                f", approved version {md.signed.version}): finish it with 'gapforge release promote' "
                "by its remaining approvers, or delete that file to abandon it"
            )
    else:
        md = current
        repo.renew(md, "approved")
        md.signed.targets[path] = TargetFile.from_dict(candidate_entry.to_dict(), path)
    explicit_only = threshold > 1
    ring = repo.keyring(keys)
    signed = sign_role(md, "approved", approved_keys, threshold, ring, explicit_only, require=False)
    if not signed:
        needed = ", ".join(key_fingerprint(k) for k in approved_keys)
        raise ReleaseError(
            f"no approver key at hand for {name} {version}: pass --key with the private key of "
            f"an approver ({needed})"
            + ("; with a threshold above 1 only --key counts" if explicit_only else "")
        )
    result = repo.targets().signed.get_verification_result(
        "approved", md.signed_bytes, md.signatures
    )
    count = len(result.signed)
    if not result.verified:
        atomic_write(staged_path, metadata_bytes(md))
        repo.log("approve", version=f"{name}-{version}", channel="approved",
                 approvals=f"{count} of {threshold}")  # fmt: skip
        return PromoteResult(name, version, count, threshold, False)
    repo.publish({"approved": md}, ring)
    staged_path.unlink(missing_ok=True)
    repo.log("promote", version=f"{name}-{version}", channel="approved")
    return PromoteResult(name, version, count, threshold, True)


def revoke(repo: Repository, spec: str, reason: str, keys: list[Path] | None = None) -> Release:
    """List `revoked/<name>/<version>` in the top-level targets role, with the reason."""
    if not reason.strip():
        raise ReleaseError("--reason: say why the release is revoked (operators will read it)")
    name, version = resolve(repo, spec)
    release = releases(repo)[(name, version)]
    if release.revoked is not None:
        raise ReleaseError(
            f"{name} {version} was already revoked on {release.revoked.get('at')}: "
            f"{release.revoked.get('reason')}"
        )
    targets = repo.targets()
    target_keys, threshold = repo.keys_of("targets")
    ring = repo.keyring(keys or [])
    by = next((key_fingerprint(k) for k in target_keys if ring.find(k.keyid)), "")
    path = target_path(REVOKED, name, version)
    entry = TargetFile(release.length, {"sha256": release.sha256}, path)
    info = {"reason": reason, "at": iso(repo.clock()), "by": by}
    entry.unrecognized_fields["custom"] = {"revoked": info}
    repo.renew(targets, "targets")
    targets.signed.targets[path] = entry
    sign_role(targets, "targets", target_keys, threshold, ring)
    repo.publish({"targets": targets}, ring)
    repo.log("revoke", version=f"{name}-{version}", reason=reason)
    release.revoked = info
    return release
