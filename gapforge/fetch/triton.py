"""Triton's CUDA driver module, compiled at build time so the image needs no C compiler.

At its first kernel launch Triton compiles `triton/backends/nvidia/driver.c` (the `cuda_utils`
module: module loading, device queries and the generic kernel launcher) with `$CC`, gcc or clang,
links it to the driver's `libcuda.so.1` and imports it (`triton/runtime/build.py`). A sealed image
has no compiler, so flex attention and Liger could not run there. This module compiles that file once,
here, inside the profile's locked Debian build root (its gcc and Python headers, the network cut, a
fixed path), from the locked triton wheel, with Triton's own flags. It links against an empty stand-in
`libcuda.so.1` (the same soname: the real driver library the NVIDIA container toolkit mounts resolves
the symbols at load time), so no GPU or CUDA toolkit is needed to build. The result and a record
(triton's version and the sha256 of the exact driver.c it was built from) go into a small layer; the
runtime hands it to Triton through `triton.knobs.build.impl` and refuses any other source.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gapforge import __version__
from gapforge.cache import Cache
from gapforge.errors import FetchError
from gapforge.fetch.sdist import SdistBuilder, run_in_root
from gapforge.image import LayerPlan
from gapforge.oci.tar import Entry, with_parents
from gapforge.profile import TRITON_LAUNCHER_DIR, Profile
from gapforge.progress import note

DRIVER = "triton/backends/nvidia/driver.c"
INCLUDE = "triton/backends/nvidia/include/"
MODULE = "cuda_utils"
SO_NAME = f"{MODULE}.so"


@dataclass(frozen=True)
class TritonLauncher:
    """The compiled module and what it was built from."""

    so: Path
    record: dict[str, str]

    @property
    def key_parts(self) -> list[str]:
        return [self.so.parent.name, json.dumps(self.record, sort_keys=True)]


def _wheel_sources(wheel: Path) -> tuple[str, dict[str, bytes]]:
    """triton's version and the files the build needs (driver.c and the CUDA headers it includes)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        wanted = [
            n for n in names if n == DRIVER or (n.startswith(INCLUDE) and not n.endswith("/"))
        ]
        if DRIVER not in wanted:
            raise FetchError(
                f"{wheel.name} has no {DRIVER}: this triton cannot have its launcher pre-built. "
                "Pin a triton that has it, or remove [triton] prebuilt_launcher from the profile."
            )
        version = wheel.name.split("-")[1]
        files = {}
        for name in wanted:
            parts = PurePosixPath(name).parts
            if ".." in parts or name.startswith("/"):
                raise FetchError(f"{wheel.name}: member {name!r} leaves the wheel's folder")
            files[name] = archive.read(name)
    return version, files


def launcher_key(triton_sha256: str, root_lock_sha256: str, python: str) -> str:
    """Every input that can change the module's bytes: the wheel, the build root, the Python, us."""
    blob = json.dumps([triton_sha256, root_lock_sha256, python, __version__, "triton-launcher-v1"])
    return hashlib.sha256(blob.encode()).hexdigest()


def _script(python: str) -> str:
    """Triton's own compile line (runtime/build.py `_build`: -O3 -shared -fPIC -Wno-psabi, then
    -l:libcuda.so.1, -L, -I), against an empty libcuda.so.1 of the right soname; --no-as-needed keeps
    it a needed library although the stand-in defines none of the symbols the module uses."""
    return " && ".join([
        "mkdir -p /build/stub /build/out",
        ": > /build/stub/empty.c",
        "gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o /build/stub/libcuda.so.1 /build/stub/empty.c",
        f"gcc /build/src/{DRIVER} -O3 -shared -fPIC -Wno-psabi -o /build/out/{SO_NAME} "
        f"-Wl,--no-as-needed -l:libcuda.so.1 -L/build/stub -I/build/src/{INCLUDE.rstrip('/')} -I/usr/include/python{python}",
    ])  # fmt: skip


def build_launcher(
    cache: Cache, builder: SdistBuilder, profile: Profile, wheel: Path
) -> TritonLauncher:
    """The compiled `cuda_utils` module of the locked triton wheel (cached by every input)."""
    version, files = _wheel_sources(wheel)
    record = {
        "triton": version,
        "module": MODULE,
        "source": DRIVER,
        "source_sha256": hashlib.sha256(files[DRIVER]).hexdigest(),
        "python": profile.python,
    }
    key = launcher_key(wheel.parent.name, builder.roots.build_lock_sha256(), profile.python)
    known = cache.index_get("triton-launcher", key, required=("sha256",))
    so = cache.find_file(known["sha256"]) if known is not None else None
    if so is not None:
        note(f"triton {version}: pre-built launcher is cached")
        return TritonLauncher(so, record)
    root = builder.root()
    key = launcher_key(wheel.parent.name, builder.roots.build_lock_sha256(), profile.python)
    with cache.tempdir("triton-launcher-") as work:
        for name, data in files.items():
            target = work / "src" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        note(f"triton {version}: compiling its CUDA launcher in the locked Debian build root, "
             "network cut")  # fmt: skip
        log = cache.root / "logs" / f"triton-launcher-{key[:12]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {"SOURCE_DATE_EPOCH": str(profile.source_date_epoch)}
        if run_in_root(root, {"/build": work}, _script(profile.python), env, log) != 0:
            tail = log.read_text(errors="replace")[-2500:]
            raise FetchError(
                f"compiling triton {version}'s {DRIVER} failed (log: {log}):\n{tail}\n"
                f"The build root needs gcc and python{profile.python}'s headers: check [build_root] "
                f"include in images/{profile.name}/profile.toml, or remove [triton] prebuilt_launcher."
            )
        so = cache.put_file(work / "out" / SO_NAME, move=True)
    cache.index_put("triton-launcher", key, {"sha256": so.parent.name, **record})
    note(f"triton {version}: launcher built ({so.parent.name[:12]}, log: {log})")
    return TritonLauncher(so, record)


def plan_launcher(launcher: TritonLauncher) -> LayerPlan:
    """A layer of its own above the wheels: it changes only with triton and the build root."""
    return LayerPlan("triton-launcher", launcher.key_parts, lambda _stage: launcher_entries(launcher),
                     created_by="gapforge: Triton's CUDA launcher, pre-built in the locked build root")  # fmt: skip


def launcher_entries(launcher: TritonLauncher) -> list[Entry]:
    """The image's `/opt/gapforge/triton/`: the module and its record."""
    folder = TRITON_LAUNCHER_DIR.lstrip("/")
    record = {**launcher.record, "sha256": launcher.so.parent.name}
    return with_parents([
        Entry(f"{folder}/{SO_NAME}", "file", 0o755, size=launcher.so.stat().st_size, source=launcher.so),
        Entry(f"{folder}/launcher.json", "file", 0o644,
              data=(json.dumps(record, indent=1, sort_keys=True) + "\n").encode()),
    ])  # fmt: skip
