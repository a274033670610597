"""Debian roots with mmdebstrap: resolved against the mirror when locking, installed from exactly the
locked .deb files when building, and normalized into a layer.

Locking (`resolve_packages`) lets apt pick the package set on the mirror and records, for each
installed package, its version, its .deb's sha256 and size, and where the archive keeps it. Building
(`install_root`) never asks the mirror: the locked .debs, already in the cache and checked, form a
local flat repository that mmdebstrap installs from, so the root is the same whatever the mirror
serves today.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gapforge.errors import EnvironmentProblem, FetchError
from gapforge.hashing import sha256_file
from gapforge.oci.tar import Entry
from gapforge.profile import DebianBase, Profile
from gapforge.progress import waiting

USER_NAME = "gapforge"
USER_ID = 1000
HOME = f"/home/{USER_NAME}"
IMAGE_USER = f"{USER_ID}:{USER_ID}"
"""The image's non-root user as `docker run --user` and the image config spell it."""

# Paths whose content is host- or time-dependent, or useless in a sealed image.
_EXCLUDE_CONTENT_OF = (
    "dev/", "proc/", "sys/", "tmp/", "run/", "var/tmp/", "var/log/", "var/cache/apt/",
    "var/lib/apt/lists/", "var/cache/ldconfig/", "var/cache/debconf/",
)  # fmt: skip
_EXCLUDE_FILES = re.compile(
    r"^(etc/(hostname|hosts|resolv\.conf|machine-id|\.pwd\.lock|shadow-|passwd-|group-|gshadow-)"
    r"|var/lib/dpkg/[^/]*-old|var/cache/debconf/[^/]*-old|var/lib/dpkg/lock.*)$"
)
_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
)


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    architecture: str
    sha256: str
    """sha256 of the .deb it was installed from."""
    size: int = 0
    filename: str = ""
    """Where the archive keeps the .deb: `<archive>/<pool path>`, e.g. `debian/pool/main/b/bash/…`
    (empty in locks made before this was recorded: such a .deb can come only from the cache)."""

    def line(self) -> str:
        if not self.filename:
            return f"{self.name} {self.version} {self.architecture} {self.sha256}"
        return f"{self.name} {self.version} {self.architecture} {self.sha256} {self.size} {self.filename}"

    @property
    def deb_name(self) -> str:
        """The file name apt gives the .deb (an epoch's ':' written as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True)
class Resolution:
    """What apt picked on the mirror: the packages and their downloaded .debs."""

    packages: tuple[DebianPackage, ...]
    debs: dict[str, Path]
    """sha256 → the downloaded .deb (in the work folder)."""


def mirror_archive(line: str) -> tuple[str, str, str, tuple[str, ...]]:
    """(archive name, base URL, suite, components) of a sources line such as
    `deb http://deb.debian.org/debian-security bookworm-security main`."""
    parts = line.split()
    if len(parts) < 4 or parts[0] != "deb":
        raise FetchError(f"not a one-line apt source (deb URL SUITE COMPONENT…): {line!r}")
    url = parts[1].rstrip("/")
    return url.rsplit("/", 1)[-1], url, parts[2], tuple(parts[3:])


def _list_prefix(url: str, suite: str) -> str:
    """apt's name for the index files of `url` and `suite` in /var/lib/apt/lists."""
    return re.sub(r"^[a-z+]+://", "", url).replace("/", "_") + f"_dists_{suite}_"


def _mmdebstrap(
    command: list[str], env: Mapping[str, str], what: str, fix: str
) -> subprocess.CompletedProcess[str]:
    if shutil.which("mmdebstrap") is None:
        raise EnvironmentProblem(
            "mmdebstrap is not installed: run 'bash scripts/setup.sh' (or apt-get install mmdebstrap)"
        )
    with waiting(f"mmdebstrap {what}"):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FetchError(f"mmdebstrap failed {what}:\n{result.stderr.strip()[-3000:]}\n{fix}")
    return result


def _base_command(profile: Profile, debs: DebianBase, fmt: str) -> list[str]:
    return [
        "mmdebstrap", "--quiet", "--mode=root", f"--format={fmt}", f"--variant={debs.variant}",
        f"--architectures={profile.architecture}", "--skip=essential/unlink",
        "--aptopt=Acquire::Languages \"none\"",
        *(f"--dpkgopt={opt}" for opt in _DPKG_OPTIONS),
    ]  # fmt: skip


def _env(profile: Profile, workdir: Path) -> dict[str, str]:
    return dict(
        os.environ,
        SOURCE_DATE_EPOCH=str(profile.source_date_epoch),
        LC_ALL="C.UTF-8",
        TMPDIR=str(workdir),
    )


def resolve_packages(profile: Profile, debs: DebianBase, workdir: Path) -> Resolution:
    """Let apt resolve `debs` on the mirrors now (needs the network): every package installed, its
    .deb's sha256, size and place in the archive; the .debs are kept in `workdir`."""
    record = workdir / "record"
    (record / "lists").mkdir(parents=True)
    (record / "debs").mkdir()
    hook = (
        "chroot \"$1\" dpkg-query -W -f='${Package} ${Version} ${Architecture}\\n' "
        f"> {record}/packages.txt && "
        f'cp "$1"/var/lib/apt/lists/*_Packages {record}/lists/ && '
        f'cp "$1"/var/cache/apt/archives/*.deb {record}/debs/'
    )
    command = [*_base_command(profile, debs, "null"), "--skip=download/empty",
               f"--customize-hook={hook}"]  # fmt: skip
    if debs.include:
        command.append("--include=" + ",".join(debs.include))
    command += [debs.suite, "/dev/null", *debs.mirrors]
    _mmdebstrap(
        command,
        _env(profile, workdir),
        f"resolving {', '.join(debs.include) or debs.variant} for profile {profile.name!r}",
        "Check that the Debian mirror is reachable and that every package in "
        f"images/{profile.name}/profile.toml exists in {debs.suite}.",
    )
    return _parse_resolution(debs, record)


def _parse_index(text: str) -> dict[tuple[str, str, str], dict[str, str]]:
    stanzas: dict[tuple[str, str, str], dict[str, str]] = {}
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            stanzas[
                (fields["Package"], fields.get("Version", ""), fields.get("Architecture", ""))
            ] = fields
    return stanzas


def _parse_resolution(debs: DebianBase, record: Path) -> Resolution:
    # Which archive each index file belongs to, so each .deb's place is `<archive>/<Filename>`.
    indexes: list[tuple[str, dict[tuple[str, str, str], dict[str, str]]]] = []
    for line in debs.mirrors:
        archive, url, suite, _ = mirror_archive(line)
        prefix = _list_prefix(url, suite)
        for index in sorted((record / "lists").glob(f"{prefix}*_Packages")):
            indexes.append((archive, _parse_index(index.read_text(encoding="utf-8"))))
    downloaded = {}
    for deb in (record / "debs").glob("*.deb"):
        downloaded[sha256_file(deb)] = deb
    packages = []
    for line in (record / "packages.txt").read_text().splitlines():
        name, version, arch = line.split()
        found = None
        for archive, stanzas in indexes:
            stanza = stanzas.get((name, version, arch))
            if stanza is not None:
                found = (archive, stanza)
                break
        if found is None:
            raise FetchError(
                f"mmdebstrap installed {name} {version} but no mirror index lists it: check the "
                "mirror lines in the profile"
            )
        archive, stanza = found
        digest = stanza.get("SHA256", "")
        if digest not in downloaded:
            raise FetchError(
                f"{name} {version}: the .deb apt downloaded does not hash to the index's SHA256 "
                f"{digest}: the mirror is inconsistent; try again later"
            )
        size = int(stanza.get("Size", "0"))
        packages.append(
            DebianPackage(name, version, arch, digest, size, f"{archive}/{stanza['Filename']}")
        )
    packages.sort(key=lambda p: p.name)
    return Resolution(tuple(packages), {p.sha256: downloaded[p.sha256] for p in packages})


# --- installing from the locked .debs ----------------------------------------------------------------


def write_flat_repository(
    packages: tuple[DebianPackage, ...], debs: Mapping[str, Path], folder: Path, suite: str
) -> None:
    """A trusted local apt repository holding exactly the locked .debs (already hash-checked)."""
    folder.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for package in packages:
        target = folder / package.deb_name
        os.symlink(debs[package.sha256], target)
        control = subprocess.run(
            ["dpkg-deb", "--field", str(target)], capture_output=True, text=True, check=False
        )
        if control.returncode != 0:
            raise FetchError(
                f"{debs[package.sha256]}: dpkg-deb cannot read this .deb ({control.stderr.strip()}); "
                "delete it from the cache and build again"
            )
        size = target.stat().st_size
        stanzas.append(
            control.stdout.rstrip("\n")
            + f"\nFilename: ./{package.deb_name}\nSize: {size}\nSHA256: {package.sha256}\n"
        )
    index = "\n".join(stanzas).encode()
    (folder / "Packages").write_bytes(index)
    (folder / "Release").write_text(
        f"Origin: gapforge\nLabel: gapforge locked packages\nSuite: {suite}\nCodename: {suite}\n"
        f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n",
        encoding="utf-8",
    )


def install_root(
    profile: Profile,
    debs: DebianBase,
    packages: tuple[DebianPackage, ...],
    files: Mapping[str, Path],
    workdir: Path,
    fmt: str,
    target: Path,
) -> tuple[DebianPackage, ...]:
    """Install exactly `packages` (their .debs in `files`, sha256 → path) with no network, into
    `target` (`fmt` tar or directory); returns what dpkg says is installed."""
    repo = workdir / "repo"
    write_flat_repository(packages, files, repo, debs.suite)
    record = workdir / "installed.txt"
    # The image's sources.list names the profile's mirrors, never the temporary local repository.
    sources = "".join(f"{line}\n" for line in debs.mirrors)
    hooks = [
        f"chroot \"$1\" dpkg-query -W -f='${{Package}} ${{Version}} ${{Architecture}}\\n' > {record}",
        f"printf %s '{sources}' > \"$1\"/etc/apt/sources.list",
        'rm -f "$1"/etc/apt/sources.list.d/0000sources.list',
    ]
    command = _base_command(profile, debs, fmt) + [f"--customize-hook={h}" for h in hooks]
    command += ["--include=" + ",".join(p.name for p in packages), debs.suite, str(target),
                f"deb [trusted=yes] copy://{repo} ./"]  # fmt: skip
    _mmdebstrap(
        command,
        _env(profile, workdir),
        f"installing the {len(packages)} locked Debian packages of profile {profile.name!r}",
        "The lock's package set may not be installable as a whole: run 'nox -s lock' to resolve "
        "it again.",
    )
    installed = []
    by_key = {(p.name, p.version): p for p in packages}
    for line in record.read_text().splitlines():
        name, version, arch = line.split()
        locked = by_key.get((name, version))
        installed.append(locked or DebianPackage(name, version, arch, "0" * 64))
    return tuple(sorted(installed, key=lambda p: p.name))


# --- normalizing the tar into layer entries -------------------------------------------------------


def _excluded(path: str) -> bool:
    if _EXCLUDE_FILES.match(path):
        return True
    return any(
        path.startswith(prefix) and path != prefix.rstrip("/") for prefix in _EXCLUDE_CONTENT_OF
    )


def _kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isreg():
        return "file"
    if member.ischr():
        return "chardev"
    if member.isblk():
        return "blockdev"
    if member.isfifo():
        return "fifo"
    raise FetchError(f"unexpected member type in the base root filesystem: {member.name}")


def _user_additions(path: str, data: bytes) -> bytes:
    """Append the image's non-root user to /etc/passwd and /etc/group."""
    if path == "etc/passwd":
        return (
            data
            + f"{USER_NAME}:x:{USER_ID}:{USER_ID}:gapforge runtime:{HOME}:/usr/sbin/nologin\n".encode()
        )
    if path == "etc/group":
        return data + f"{USER_NAME}:x:{USER_ID}:\n".encode()
    return data


def rootfs_entries(tar_path: Path) -> list[Entry]:
    """Layer entries for the base rootfs: host-dependent files dropped, the non-root user added."""
    entries: list[Entry] = []
    # kept open: the openers read from it while the layer is written
    archive = tarfile.open(tar_path, "r:")  # noqa: SIM115
    for member in archive.getmembers():
        path = member.name.removeprefix("./").rstrip("/")
        if path in ("", ".") or _excluded(path):
            continue
        kind = _kind(member)
        mode, uid, gid = member.mode, member.uid, member.gid
        if kind == "file":
            if path in ("etc/passwd", "etc/group"):
                handle = archive.extractfile(member)
                assert handle is not None
                entries.append(
                    Entry(
                        path,
                        "file",
                        data=_user_additions(path, handle.read()),
                        mode=mode,
                        uid=uid,
                        gid=gid,
                    )
                )
                continue
            entries.append(
                Entry(
                    path,
                    "file",
                    size=member.size,
                    opener=_member_opener(archive, member),
                    mode=mode,
                    uid=uid,
                    gid=gid,
                )
            )
        elif kind == "hardlink":
            target = member.linkname.removeprefix("./")
            entries.append(Entry(path, "hardlink", linkname=target, mode=mode, uid=uid, gid=gid))
        elif kind in ("chardev", "blockdev"):
            continue  # the engine provides /dev
        else:
            entries.append(Entry(path, kind, linkname=member.linkname, mode=mode, uid=uid, gid=gid))
    entries.append(Entry(HOME.lstrip("/"), "dir", 0o755, uid=USER_ID, gid=USER_ID))
    return entries


def _member_opener(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        handle = archive.extractfile(member)
        if handle is None:
            return io.BytesIO(b"")
        return handle  # type: ignore[return-value]

    return opener
