"""How Triton gets its CUDA driver module: pre-built in the image, or compiled by a C compiler.

At its first kernel launch Triton compiles `triton/backends/nvidia/driver.c` into the `cuda_utils`
module with `$CC`, gcc or clang. The sealed cuda image has no compiler: the builder compiled that
file in its locked Debian build root and shipped it in `$GAPFORGE_TRITON_LAUNCHER` (`cuda_utils.so`
and `launcher.json`: triton's version and the sha256 of the driver.c it was built from). `install`
hands it to Triton through `triton.knobs.build.impl`, which Triton calls instead of a compiler; the
hook gives the module only for that exact source, and refuses anything else with one paragraph
rather than loading a module built from other code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.image_contract import TRITON_LAUNCHER_ENV

ENV = TRITON_LAUNCHER_ENV

_installed: str | None = None


def _record(folder: Path) -> dict[str, Any]:
    try:
        record = json.loads((folder / "launcher.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(
            f"${ENV} is {folder}, but its launcher.json cannot be read ({exc}). The image is "
            "damaged: load the bundle again (gapforge load), or unset the variable."
        ) from None
    if not isinstance(record, dict) or not (folder / "cuda_utils.so").is_file():
        raise RuntimeFailure(
            f"${ENV} is {folder}, but it holds no cuda_utils.so with its record. The image is "
            "damaged: load the bundle again (gapforge load), or unset the variable."
        )
    return record


def prebuilt_impl(folder: Path, record: dict[str, Any]) -> Callable[..., str]:
    """Triton's `knobs.build.impl` hook: the pre-built module for the driver.c it was built from
    (`record`: the folder's launcher.json)."""

    def impl(
        name: str,
        src: str,
        srcdir: str,
        library_dirs: list[str],
        include_dirs: list[str],
        libraries: list[str],
    ) -> str:
        digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
        if name != record.get("module") or digest != record.get("source_sha256"):
            raise RuntimeFailure(
                f"Triton asked to compile {name!r} from {src} (sha256 {digest[:12]}), but this image "
                f"has no C compiler and its pre-built launcher is {record.get('module')!r} from "
                f"triton {record.get('triton')}'s driver.c (sha256 "
                f"{str(record.get('source_sha256'))[:12]}). The triton installed here is not the "
                "one the image was built with: rebuild the image (nox -s build), or turn Triton's "
                "kernels off in the recipe (train.liger: false, train.packed_attention: sdpa)."
            )
        target = Path(srcdir) / f"{name}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
        shutil.copyfile(folder / "cuda_utils.so", target)
        return str(target)

    return impl


def install(knobs: Any = None) -> str | None:
    """Point Triton at the image's pre-built module (once per process); what it was, or None when
    `$GAPFORGE_TRITON_LAUNCHER` is not set. `knobs` is `triton.knobs` (given by tests)."""
    global _installed
    value = os.environ.get(ENV)
    if not value:
        return None
    if _installed is not None and knobs is None:
        return _installed
    folder = Path(value)
    record = _record(folder)
    impl = prebuilt_impl(folder, record)
    if knobs is None:
        try:
            from triton import knobs as triton_knobs  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return None
        knobs = triton_knobs
    knobs.build.impl = impl
    _installed = f"pre-built in the image (triton {record.get('triton')}, {folder}/cuda_utils.so)"
    return _installed


def how_triton_builds() -> str | None:
    """How Triton will get its launcher: the image's pre-built module, a C compiler (its path), or
    None: Triton's kernels (Liger, flex attention) cannot run."""
    prebuilt = install()
    if prebuilt is not None:
        return prebuilt
    found = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    return found or None
