"""Triton's launcher pre-built in the image: handed to Triton only for the driver.c it was built from
(the real Triton and GPU path is measured on the device tool: docs/gpu.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.triton_launcher import how_triton_builds, install

DRIVER = b"/* triton's driver.c */\nint answer(void) { return 42; }\n"


def _image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "opt-gapforge-triton"
    folder.mkdir()
    (folder / "cuda_utils.so").write_bytes(b"\x7fELF pre-built module")
    record = {"module": "cuda_utils", "triton": "3.8.0",
              "source_sha256": hashlib.sha256(DRIVER).hexdigest()}  # fmt: skip
    (folder / "launcher.json").write_text(json.dumps(record))
    return folder


def test_the_hook_gives_the_prebuilt_module_for_its_own_source_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAPFORGE_TRITON_LAUNCHER", str(_image_folder(tmp_path)))
    knobs = SimpleNamespace(build=SimpleNamespace(impl=None))
    said = install(knobs)
    assert said is not None and "triton 3.8.0" in said and knobs.build.impl is not None
    src = tmp_path / "driver.c"
    src.write_bytes(DRIVER)
    srcdir = tmp_path / "build"
    srcdir.mkdir()
    so = Path(knobs.build.impl("cuda_utils", str(src), str(srcdir), [], [], ["libcuda.so.1"]))
    assert so.parent == srcdir and so.read_bytes() == b"\x7fELF pre-built module"
    src.write_bytes(DRIVER + b"/* another triton */\n")
    with pytest.raises(RuntimeFailure, match=r"not the one the image was built with.*rebuild"):
        knobs.build.impl("cuda_utils", str(src), str(srcdir), [], [], [])
    src.write_bytes(DRIVER)
    with pytest.raises(RuntimeFailure, match=r"asked to compile 'other_module'"):
        knobs.build.impl("other_module", str(src), str(srcdir), [], [], [])


def test_a_damaged_folder_is_named_and_no_folder_means_a_compiler_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _image_folder(tmp_path)
    (folder / "launcher.json").write_text("{not json")
    monkeypatch.setenv("GAPFORGE_TRITON_LAUNCHER", str(folder))
    with pytest.raises(RuntimeFailure, match=r"launcher\.json cannot be read.*gapforge load"):
        install(SimpleNamespace(build=SimpleNamespace(impl=None)))
    monkeypatch.delenv("GAPFORGE_TRITON_LAUNCHER")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, no clang
    assert how_triton_builds() is None
    monkeypatch.setenv("CC", "/usr/bin/cc")
    assert how_triton_builds() == "/usr/bin/cc"
