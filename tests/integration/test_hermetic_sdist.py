"""Sdists compile inside the locked Debian build root: the host's compilers, PATH, umask, time zone
and locale change nothing, byte for byte (real mmdebstrap, bubblewrap, scikit-build-core, cmake, gcc)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from gapforge.cache import Cache, default_cache_dir
from gapforge.fetch.debian import DebianInputs
from gapforge.fetch.sdist import SdistBuilder
from gapforge.lock.python import LockedRequirement, parse_python_lock
from gapforge.profile import REPO_ROOT, load_profile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

FILES = {
    "pyproject.toml": (
        '[build-system]\nrequires = ["scikit-build-core"]\nbuild-backend = "scikit_build_core.build"\n'
        '[project]\nname = "tinyext"\nversion = "0.1"\n'
    ),
    "CMakeLists.txt": (
        "cmake_minimum_required(VERSION 3.15)\nproject(tinyext C)\n"
        "add_library(tiny SHARED tiny.c)\ninstall(TARGETS tiny LIBRARY DESTINATION tinyext)\n"
    ),
    # __FILE__ and the build path would put the unpack folder into the binary without a prefix map.
    "tiny.c": 'const char *where(void) { return __FILE__; }\nint answer(void) { return 42; }\n',
    "src/tinyext/__init__.py": '"""A tiny C library built from an sdist."""\n',
}


def _sdist(folder: Path) -> Path:
    path = folder / "tinyext-0.1.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in FILES.items():
            data = text.encode()
            info = tarfile.TarInfo(f"tinyext-0.1/{name}")
            info.size, info.mtime = len(data), 1735689600
            archive.addfile(info, io.BytesIO(data))
    return path


def _broken_tools(folder: Path, marker: Path) -> Path:
    """cc, c++, gcc, g++ and cmake that fail loudly (and leave a marker) if anything runs them."""
    folder.mkdir()
    for tool in ("cc", "c++", "gcc", "g++", "cmake", "ninja", "make", "python3"):
        stub = folder / tool
        stub.write_text(f"#!/bin/sh\necho host {tool} was used >> {marker}\nexit 1\n")
        stub.chmod(0o755)
    return folder


def test_the_host_toolchain_and_environment_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("bwrap") is None or shutil.which("mmdebstrap") is None:
        pytest.skip("needs bubblewrap and mmdebstrap: run 'bash scripts/setup.sh'")
    cache = Cache(default_cache_dir())
    profile = load_profile("cpu")
    locks = tmp_path / "locks"  # a copy: a refresh (archive moved) must not touch lockfiles/
    shutil.copytree(REPO_ROOT / "lockfiles", locks)
    sdist = cache.put_file(_sdist(tmp_path), move=False)
    requirement = LockedRequirement("tinyext", "0.1", (sdist.parent.name,))
    build_lock = parse_python_lock(locks / "cpu.build.txt")
    wheels = []
    with SdistBuilder(cache, profile, build_lock, DebianInputs(cache, profile, locks)) as builder:
        wheels.append(builder.wheel(requirement, sdist).read_bytes())
        # Again, as on another machine: broken compilers first on PATH, another umask, time
        # zone, locale and working folder; the cached wheel is forgotten so it is rebuilt.
        (cache.root / "index" / "sdist-builds" / f"{builder.key(requirement, sdist)}.json").unlink()
        marker = tmp_path / "host-tools-used"
        stubs = _broken_tools(tmp_path / "stubs", marker)
        monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
        for name, value in (("TZ", "Pacific/Chatham"), ("LC_ALL", "tr_TR.UTF-8"), ("CC", "cc"),
                            ("CFLAGS", "-march=native -O0"), ("SOURCE_DATE_EPOCH", "1")):  # fmt: skip
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        old_umask = os.umask(0o077)
        try:
            wheels.append(builder.wheel(requirement, sdist).read_bytes())
        finally:
            os.umask(old_umask)
    assert not marker.exists(), marker.read_text()
    assert wheels[0] == wheels[1], "the same sdist built twice gave different wheels"
    with zipfile.ZipFile(io.BytesIO(wheels[0])) as wheel:
        names = wheel.namelist()
        library = next(n for n in names if n.endswith("libtiny.so"))
        binary = wheel.read(library)
    assert b"tiny.c" in binary  # __FILE__ is there, rewritten to the fixed build path
    assert str(cache.root).encode() not in binary and str(tmp_path).encode() not in binary
    assert b"/build/src" not in binary, "the prefix map should have made source paths relative"


DRIVER_C = r"""
#include <Python.h>
#include "cuda.h"
static PyObject *init(PyObject *self, PyObject *args) { return PyLong_FromLong(cuInit(0)); }
static PyMethodDef methods[] = {{"init", init, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cuda_utils", NULL, -1, methods};
PyMODINIT_FUNC PyInit_cuda_utils(void) { return PyModule_Create(&module); }
"""


def _fake_triton_wheel(folder: Path) -> Path:
    """A wheel laid out as triton's: driver.c (a `cuda_utils` module calling the driver's cuInit)
    and the CUDA header it includes."""
    path = folder / "triton-9.9.9-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("triton/backends/nvidia/driver.c", DRIVER_C)
        wheel.writestr("triton/backends/nvidia/include/cuda.h", "int cuInit(unsigned int flags);\n")
        wheel.writestr("triton/__init__.py", "")
    return path


def test_tritons_launcher_is_built_in_the_locked_root_and_loads_against_the_hosts_driver(
    tmp_path: Path,
) -> None:
    """Compiled twice (the second as a cache miss): the same bytes, linked to libcuda.so.1 by soname
    only; in a root with no compiler use, it loads and calls whatever libcuda.so.1 is there (in a
    container, the driver's, mounted by the NVIDIA toolkit)."""
    if shutil.which("bwrap") is None or shutil.which("mmdebstrap") is None:
        pytest.skip("needs bubblewrap and mmdebstrap: run 'bash scripts/setup.sh'")
    from gapforge.fetch.sdist import run_in_root
    from gapforge.fetch.triton import build_launcher, launcher_key

    cache = Cache(default_cache_dir())
    profile = load_profile("cpu")
    locks = tmp_path / "locks"
    shutil.copytree(REPO_ROOT / "lockfiles", locks)
    wheel = cache.put_file(_fake_triton_wheel(tmp_path), move=False)
    build_lock = parse_python_lock(locks / "cpu.build.txt")
    with SdistBuilder(cache, profile, build_lock, DebianInputs(cache, profile, locks)) as builder:
        first = build_launcher(cache, builder, profile, wheel)
        built = first.so.read_bytes()
        key = launcher_key(wheel.parent.name, builder.roots.build_lock_sha256(), profile.python)
        (cache.root / "index" / "triton-launcher" / f"{key}.json").unlink()
        first.so.unlink()
        second = build_launcher(cache, builder, profile, wheel)
        assert second.so.read_bytes() == built, "the same triton wheel gave another module"
        assert first.record["triton"] == "9.9.9" and first.record["module"] == "cuda_utils"
        assert b"libcuda.so.1" in built and b"PyInit_cuda_utils" in built
        # Load it where only a driver stand-in answers cuInit with 7.
        work = tmp_path / "load"
        (work / "lib").mkdir(parents=True)
        shutil.copyfile(second.so, work / "cuda_utils.so")
        (work / "driver.c").write_text("int cuInit(unsigned int flags) { return 7; }\n")
        script = (
            "gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o /w/lib/libcuda.so.1 /w/driver.c && "
            "LD_LIBRARY_PATH=/w/lib python3 -c \"import importlib.util as u; "
            "s = u.spec_from_file_location('cuda_utils', '/w/cuda_utils.so'); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print('cuInit', m.init())\" > /w/said"
        )
        log = tmp_path / "load.log"
        assert run_in_root(builder.root(), {"/w": work}, script, {}, log) == 0, log.read_text()
    assert (work / "said").read_text().strip() == "cuInit 7"
