"""The one parser of names from outside (gapforge.names): every hostile shape refused, plain ones kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapforge.names import UnsafeName, component, no_links, relative_path, under

HOSTILE = [
    "", "/etc/passwd", "../x", "a/../../x", "a/./b", ".", "..", "a//b", "a/", "a\\b", "a\x00b",
    "a\nb", "a\rb", "a\u2028b", "a\u0085b", "a\u202eb", "x" * 256, "/".join(["a"] * 33),
    "a/" + "y" * 1100,
]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_relative_paths_are_refused_naming_where(name: str) -> None:
    with pytest.raises(UnsafeName) as caught:
        relative_path(name, "bundle.json: name")
    assert caught.value.message.startswith("bundle.json: name: ")
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("value", [None, 3, ["a"], {"a": 1}, b"a"])
def test_names_must_be_strings(value: object) -> None:
    with pytest.raises(UnsafeName, match="not a string"):
        relative_path(value, "parts.json: name")


@pytest.mark.parametrize(
    "name", ["a", "recipe/data/train.jsonl", "blobs/sha256/" + "0" * 64, "é/ü"]
)
def test_plain_names_pass_unchanged(name: str) -> None:
    assert relative_path(name, "x") == name


@pytest.mark.parametrize("name", ["a/b", "-rf", "..", "", "a\nb"])
def test_a_component_is_one_plain_name(name: str) -> None:
    with pytest.raises(UnsafeName):
        component(name, "bundle.json: version")
    assert component("smollm2-135m-desk", "x") == "smollm2-135m-desk"


def test_under_refuses_a_path_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("/etc")
    assert under(tmp_path, "real/file", "x") == tmp_path / "real" / "file"
    with pytest.raises(UnsafeName, match="symbolic link"):
        under(tmp_path, "link/passwd", "x")
    with pytest.raises(UnsafeName, match="symbolic link"):
        no_links(tmp_path, tmp_path / "link", "x")
