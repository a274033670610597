"""YAML from outside (a recipe, an lm-eval task folder), loaded with bounds.

A safe loader still expands aliases: a 1 KB file of nested `&a [*b, *b, ...]` anchors becomes
billions of nodes and gigabytes before anything can look at it ("billion laughs"). So this loader
refuses every anchor and alias (a recipe never needs one: write the value out), caps the nesting
depth (the composer recurses once per level) and the size of an integer (Python refuses to parse
one of more than 4300 digits with a ValueError, not a YAML error), and the reader caps the file's
size. Each refusal is a `yaml.YAMLError` with the line it happened on, so every caller that already
reports YAML errors with their line reports these the same way.

The builder (gapforge.recipe) uses this module too: the runtime imports nothing from gapforge, so
the one bounded loader lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1_000_000
"""A recipe or task YAML larger than this is refused unread (the largest shipped recipe is ~10 KB)."""
MAX_DEPTH = 64
"""Nested mappings and sequences; a recipe goes about 6 deep."""
MAX_INT_DIGITS = 100


class YamlRefused(yaml.MarkedYAMLError):
    """YAML this loader will not load: an anchor or alias, too deep, too big. `problem_mark` is
    where (its `line` is 0-based, as in every yaml.MarkedYAMLError)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class BoundedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors and aliases, deep nesting and huge integers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise YamlRefused(
                f"the alias *{event.anchor} is refused: anchors and aliases (&name, *name) can "
                "expand a small file into gigabytes; write the value out in full",
                event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise YamlRefused(
                f"the anchor &{anchor} is refused: anchors and aliases (&name, *name) can expand "
                "a small file into gigabytes; write the value out in full where it is used",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlRefused(
                    f"nested more than {MAX_DEPTH} levels deep; a recipe needs far fewer",
                    event.start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(char.isdigit() for char in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise YamlRefused(
                f"an integer of {digits} digits is refused (at most {MAX_INT_DIGITS})",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)


def load_bounded_yaml(text: str, loader: type[BoundedSafeLoader] = BoundedSafeLoader) -> Any:
    """One YAML document from `text`, through `loader` (BoundedSafeLoader or a subclass)."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise YamlRefused(f"{size} bytes is more than the {MAX_BYTES} a YAML file may hold", None)
    instance = loader(text)
    try:
        return instance.get_single_data()
    finally:
        instance.dispose()


def read_bounded_text(path: Path) -> str:
    """`path`'s text (strict UTF-8), reading no more than MAX_BYTES + 1 bytes: YamlRefused when
    larger, UnicodeDecodeError or OSError as they come."""
    with path.open("rb") as stream:
        data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlRefused(
            f"the file is larger than the {MAX_BYTES} bytes a YAML file may hold", None
        )
    return data.decode("utf-8")


def read_bounded_yaml(path: Path, loader: type[BoundedSafeLoader] = BoundedSafeLoader) -> Any:
    """The YAML document in `path`, bounded (see the module's docstring)."""
    return load_bounded_yaml(read_bounded_text(path), loader)
