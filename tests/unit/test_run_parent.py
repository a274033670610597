"""`gapforge run --parent OUT_OLD`: the earlier run's output folder is mounted read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapforge.errors import BundleError
from gapforge.operator.run import PARENT_DIR, parent_mount


def test_parent_is_a_finished_run_folder_and_not_the_new_out(tmp_path: Path) -> None:
    old = tmp_path / "out1"
    old.mkdir()
    with pytest.raises(BundleError, match=r"no manifest\.json there"):
        parent_mount(old, tmp_path / "out2")
    (old / "manifest.json").write_text("{}\n")
    assert parent_mount(old, tmp_path / "out2") == (str(old.resolve()), PARENT_DIR)
    with pytest.raises(BundleError, match="it is the --out folder too"):
        parent_mount(old, old)


def test_the_runtime_is_told_its_image_and_bundle(tmp_path: Path) -> None:
    from gapforge.hashing import sha256_file
    from gapforge.operator.run import Target, sealed_identity

    digest = "sha256:" + "0" * 64
    assert sealed_identity(Target("ref", digest, "cpu")) == {"GAPFORGE_IMAGE_DIGEST": digest}
    (tmp_path / "SHA256SUMS").write_text("x  y\n")
    assert sealed_identity(Target("ref", digest, "cpu", tmp_path)) == {
        "GAPFORGE_IMAGE_DIGEST": digest,
        "GAPFORGE_BUNDLE_SHA256SUMS": sha256_file(tmp_path / "SHA256SUMS"),
    }
