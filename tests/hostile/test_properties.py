"""Property-based tests (Hypothesis) of the parsers every name from outside passes through:
gapforge.names (relative_path, component) and the SHA256SUMS parser. The `ci` profile (default)
tries a few dozen cases each; `nox -s fuzz` runs them with the `fuzz` profile for a set time."""

from __future__ import annotations

import posixpath
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from gapforge.bundle.sums import parse_sums, render_sums
from gapforge.names import MAX_COMPONENT, UnsafeName, component, relative_path

UNSAFE = ("Cc", "Cf", "Cs", "Zl", "Zp")

plain_part = st.text(
    st.characters(blacklist_categories=UNSAFE, blacklist_characters="/\\"), min_size=1, max_size=12
).filter(lambda part: part not in (".", ".."))
plain_path = st.lists(plain_part, min_size=1, max_size=8).map("/".join)
pathish = st.lists(
    st.sampled_from(
        ["a", "b", "/", ".", "..", "-", "\\", "\n", "\x00", "\u2028", "\x85", "é", " "]
    ),
    max_size=12,
).map("".join)
"""Strings made of the pieces path attacks are made of."""
anything = st.one_of(st.text(), pathish, plain_path)
hex_digest = st.text("0123456789abcdef", min_size=64, max_size=64)


def _plain(value: str) -> bool:
    """What a plain relative path is, written out independently of gapforge.names."""
    parts = value.split("/")
    return (
        not value.startswith("/")
        and all(part not in ("", ".", "..") for part in parts)
        and "\\" not in value
        and not any(unicodedata.category(char) in UNSAFE for char in value)
        and all(len(part.encode("utf-8", "surrogatepass")) <= MAX_COMPONENT for part in parts)
    )


@given(anything)
def test_an_accepted_name_is_plain_and_stays_under_any_root(value: str) -> None:
    try:
        accepted = relative_path(value, "bundle.json: name")
    except UnsafeName as refusal:
        assert refusal.message.startswith("bundle.json: name: ") and "\n" not in refusal.message
        return
    assert accepted == value and _plain(value)
    for root in ("/srv/out", "/", "/a/b/c"):
        joined = posixpath.normpath(posixpath.join(root, value))
        assert joined.startswith(root.rstrip("/") + "/") and joined != root


@given(plain_path)
def test_a_plain_relative_path_passes_unchanged(value: str) -> None:
    assert relative_path(value, "x") == value


@given(
    st.lists(plain_part, min_size=1, max_size=6),
    st.integers(min_value=0, max_value=6),
    st.sampled_from(
        ["..", ".", "", "/abs", "a\x00b", "a\nb", "a\u2028b", "a\x85b", "a\u202eb", "a\\b"]
    ),
)
def test_a_dot_dot_an_absolute_or_a_control_character_is_refused(
    parts: list[str], at: int, bad: str
) -> None:
    parts.insert(min(at, len(parts)), bad)
    value = "/".join(parts)
    try:
        relative_path(value, "x")
    except UnsafeName:
        return
    raise AssertionError(f"{value!r} was accepted")


@given(anything)
def test_an_accepted_component_is_one_plain_child(value: str) -> None:
    try:
        accepted = component(value, "bundle.json: version")
    except UnsafeName:
        return
    assert "/" not in accepted and not accepted.startswith("-") and _plain(accepted)
    assert posixpath.dirname(posixpath.join("/srv/out", accepted)) == "/srv/out"


@given(
    st.one_of(
        st.text(),
        st.text(st.sampled_from(["0", "a", " ", "*", "/", ".", "\n", "\r", "\u2028", "\\"])),
    )
)
def test_sums_parsing_never_raises_and_returns_only_plain_names(text: str) -> None:
    lines, problems = parse_sums(text)
    assert all(isinstance(problem, str) for problem in problems)
    for line in lines:
        assert relative_path(line.name, "SHA256SUMS") == line.name
        assert len(line.sha256) == 64 and set(line.sha256) <= set("0123456789abcdef")


@given(st.one_of(pathish, st.text(max_size=200)))
def test_a_sums_line_of_any_name_yields_a_plain_name_or_a_problem(name: str) -> None:
    """A well-formed line around a hostile name: the name is refused (a problem), never returned."""
    lines, problems = parse_sums("0" * 64 + "  " + name + "\n")
    assert len(lines) + len(problems) >= 1
    assert all(_plain(line.name) for line in lines)


@given(st.dictionaries(plain_path, hex_digest, min_size=1, max_size=20))
def test_well_formed_sums_round_trip(digests: dict[str, str]) -> None:
    lines, problems = parse_sums(render_sums(digests).decode("utf-8"))
    assert problems == []
    assert {line.name: line.sha256 for line in lines} == digests
    assert [line.number for line in lines] == list(range(1, len(digests) + 1))
