"""The builder's own lock (lockfiles/builder.txt): fresh against pyproject.toml, complete, no torch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gapforge.errors import LockError
from gapforge.lock.builder import BUILDER_IN, PYPROJECT, builder_requirements, read_builder_lock
from gapforge.lock.python import INPUTS_HEADER, canonical_name, inputs_sha256
from gapforge.profile import REPO_ROOT


def _names(requirements: list[str]) -> set[str]:
    return {canonical_name(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def test_committed_builder_lock_is_fresh_and_complete() -> None:
    lock = read_builder_lock()
    names = lock.by_name()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = _names([*project["dependencies"], *project["optional-dependencies"]["test"],
                     *project["optional-dependencies"]["lint"]])  # fmt: skip
    assert wanted | {"nox", "pip-tools", "installer", "flit-core", "pip"} <= set(names)
    assert not [n for n in names if n == "torch" or n.startswith("nvidia-")], (
        "the builder venv has no torch"
    )


def test_builder_lock_pins_nothing_from_a_local_path() -> None:
    text = (REPO_ROOT / "lockfiles/builder.txt").read_text()
    assert not re.search(
        r"file://|/opt/|/tmp/|^-e |--find-links|--index-url|@ ", text, re.MULTILINE
    )


def _copy_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    builder_in, pyproject = tmp_path / "builder.in", tmp_path / "pyproject.toml"
    builder_in.write_bytes(BUILDER_IN.read_bytes())
    pyproject.write_bytes(PYPROJECT.read_bytes())
    lock = tmp_path / "builder.txt"
    digest = inputs_sha256(builder_requirements(builder_in, pyproject))
    lock.write_text(f"# header\n{INPUTS_HEADER}{digest}\nsix==1.17.0 --hash=sha256:{'a' * 64}\n")
    return builder_in, pyproject, lock


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"rich>=13",', '"rich>=13",\n  "requests>=2",'),  # a runtime dependency
        ('"pytest>=8"', '"pytest>=9"'),  # the test extra
        ('"import-linter>=2.1"]', '"import-linter>=2.1", "types-requests"]'),  # the lint extra
        ('requires = ["flit_core>=3.9,<4"]', 'requires = ["flit_core>=3.10,<4"]'),  # the backend
    ],
)
def test_builder_lock_is_stale_when_pyproject_lists_change(
    tmp_path: Path, old: str, new: str
) -> None:
    builder_in, pyproject, _ = _copy_inputs(tmp_path)
    read_builder_lock(tmp_path, builder_in, pyproject)
    text = pyproject.read_text()
    assert old in text
    pyproject.write_text(text.replace(old, new, 1))
    with pytest.raises(LockError, match=r"builder.txt is stale: .*pyproject.toml.*nox -s lock"):
        read_builder_lock(tmp_path, builder_in, pyproject)


def test_builder_lock_is_stale_when_builder_in_changes(tmp_path: Path) -> None:
    builder_in, pyproject, _ = _copy_inputs(tmp_path)
    builder_in.write_text(builder_in.read_text() + "build\n")
    with pytest.raises(LockError, match="is stale"):
        read_builder_lock(tmp_path, builder_in, pyproject)


def test_other_pyproject_edits_leave_the_lock_fresh(tmp_path: Path) -> None:
    builder_in, pyproject, _ = _copy_inputs(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    read_builder_lock(tmp_path, builder_in, pyproject)
