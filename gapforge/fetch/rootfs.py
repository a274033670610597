"""The Debian base root filesystem: mmdebstrap, checked against the lock, normalized into a layer.

mmdebstrap installs the profile's package set with SOURCE_DATE_EPOCH; a hook records every installed
package and the sha256 of every .deb it installed from. The lock (`lockfiles/<profile>.debian.lock`)
pins exactly that list; a fetch that gets anything else stops and says to re-lock.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gapforge.errors import EnvironmentProblem, FetchError
from gapforge.oci.tar import Entry
from gapforge.profile import Profile

USER_NAME = "gapforge"
USER_ID = 1000
HOME = f"/home/{USER_NAME}"

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

    def line(self) -> str:
        return f"{self.name} {self.version} {self.architecture} {self.sha256}"


@dataclass(frozen=True)
class Rootfs:
    tar_path: Path
    packages: tuple[DebianPackage, ...]


def mmdebstrap_command(profile: Profile, out_tar: Path, record_dir: Path) -> list[str]:
    """The mmdebstrap call for `profile`; hooks write the package list and .deb hashes."""
    deb = profile.debian
    record = (
        "chroot \"$1\" dpkg-query -W -f='${Package} ${Version} ${Architecture}\\n' "
        f"> {record_dir}/packages.txt && "
        f'(cd "$1"/var/cache/apt/archives && sha256sum -- *.deb) > {record_dir}/debs.sha256'
    )
    command = [
        "mmdebstrap", "--quiet", "--mode=root", "--format=tar", f"--variant={deb.variant}",
        f"--architectures={profile.architecture}", "--skip=download/empty", "--skip=essential/unlink",
        "--aptopt=Acquire::Languages \"none\"",
        *(f"--dpkgopt={opt}" for opt in _DPKG_OPTIONS),
        f"--customize-hook={record}",
    ]  # fmt: skip
    if deb.include:
        command.append("--include=" + ",".join(deb.include))
    command += [deb.suite, str(out_tar), *deb.mirrors]
    return command


def _parse_records(record_dir: Path) -> tuple[DebianPackage, ...]:
    deb_hashes: dict[tuple[str, str], str] = {}
    for line in (record_dir / "debs.sha256").read_text().splitlines():
        digest, filename = line.split(maxsplit=1)
        # apt names .debs <name>_<version with ':' as %3a>_<arch>.deb
        name, version, _arch = filename.strip().removesuffix(".deb").split("_")
        deb_hashes[(name, version.replace("%3a", ":"))] = digest
    packages = []
    for line in (record_dir / "packages.txt").read_text().splitlines():
        name, version, arch = line.split()
        found = deb_hashes.get((name, version))
        if found is None:
            raise FetchError(
                f"mmdebstrap installed {name} {version} but no .deb was recorded for it"
            )
        packages.append(DebianPackage(name, version, arch, found))
    return tuple(sorted(packages, key=lambda p: p.name))


def run_mmdebstrap(
    profile: Profile, workdir: Path, log: Callable[[str], None] | None = None
) -> Rootfs:
    """Create the base root filesystem tar for `profile` in `workdir` (needs the network)."""
    if shutil.which("mmdebstrap") is None:
        raise EnvironmentProblem(
            "mmdebstrap is not installed: run 'bash scripts/setup.sh' (or apt-get install mmdebstrap)"
        )
    out = workdir / "rootfs.tar"
    record = workdir / "record"
    record.mkdir()
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(profile.source_date_epoch), LC_ALL="C.UTF-8")
    result = subprocess.run(
        mmdebstrap_command(profile, out, record),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise FetchError(
            f"mmdebstrap failed for profile {profile.name!r} (suite {profile.debian.suite}):\n"
            f"{result.stderr.strip()[-3000:]}\nCheck that the Debian mirror is reachable and that "
            f"every package in images/{profile.name}/profile.toml [debian].include exists."
        )
    return Rootfs(out, _parse_records(record))


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
