"""`gapforge diff` between two real bundles: the tiny recipe's, and the next release built from it
with another learning rate and one locked package bumped. The diff must name exactly those changes,
and the bytes that must cross the gap must be the layers that changed plus the changed files."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Built, gapforge

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def test_diff_names_exactly_the_changes_and_the_bytes_to_carry(
    built: Built, built_bumped: tuple[Built, dict[str, Any]]
) -> None:
    changed, what = built_bumped
    key = ("--key", str(built.public_key))  # both bundles pass the trust gate before the diff
    result = gapforge("diff", str(built.bundle), str(changed.bundle), "--json", *key, check=True)
    diff = json.loads(result.stdout)
    recipe = diff["recipe"]
    assert not recipe["added"] and not recipe["removed"], recipe
    old_lr, new_lr = what["learning_rate"]
    assert recipe["changed"]["train.learning_rate"] == {"a": old_lr, "b": new_lr}
    assert set(recipe["changed"]) <= {"train.learning_rate", "version"}, recipe["changed"]
    assert recipe["version"] == {"a": "0.0.1", "b": "0.0.3"}
    python = diff["packages"]["python"]
    old, new = what["filelock"]
    assert python["changed"] == {"filelock": {"a": old, "b": new}}, python
    assert not python["added"] and not python["removed"]
    assert diff["packages"]["debian"]["unchanged"], diff["packages"]["debian"]
    assert diff["model"]["unchanged"], diff["model"]
    before = {layer["name"]: layer["digest"] for layer in built.index["image"]["layers"]}
    after = {layer["name"]: layer for layer in changed.index["image"]["layers"]}
    expected_new = {name for name, layer in after.items() if before.get(name) != layer["digest"]}
    assert {layer["name"] for layer in diff["layers"]["new"]} == expected_new
    assert "model" not in expected_new and len(expected_new) < len(after)
    assert diff["transfer"]["layer_bytes"] == sum(after[name]["size"] for name in expected_new)
    assert diff["transfer"]["total_bytes"] > diff["transfer"]["layer_bytes"]
    text = gapforge("diff", str(built.bundle), str(changed.bundle), *key, check=True).stdout
    assert "train.learning_rate" in text and "filelock" in text and old in text and new in text
    notes = gapforge(
        "diff", str(built.bundle), str(changed.bundle), "--markdown", *key, check=True
    ).stdout
    assert notes.startswith("#") and "filelock" in notes


def test_a_real_bundle_against_itself_is_unchanged(built: Built) -> None:
    """The tiny recipe's bundle diffed with itself: nothing changed, nothing to carry, and the
    package tables were read (a diff that read nothing would also say 'unchanged')."""
    from gapforge.release_manager.diff import compare_bundles, render_text

    diff = compare_bundles(built.bundle, built.bundle)
    assert diff.unchanged and diff.transfer.total == 0
    assert diff.python.count[0] > 0 and diff.debian.count[0] > 0
    assert "Layers: unchanged" in render_text(diff)
