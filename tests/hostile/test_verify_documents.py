"""The one checker of the JSON documents a bundle carries (gapforge.bundle.documents): each wrong
field is one problem naming it; what a schema does not name is not read."""

from __future__ import annotations

import pytest

from gapforge.bundle.documents import BUNDLE_INDEX, PRETEST_EVIDENCE, parse_document, shape_problems


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        ([], ["not a JSON object (found a list)"]),
        (None, ["not a JSON object (found null)"]),
        ({"passed": 1, "image": {"manifest_digest": "a", "config_digest": "b"}},
         ["passed: expected true or false, found a number"]),
        ({"passed": True, "image": {"manifest_digest": "a"}, "gates": [{"name": "g", "passed": "yes"}]},
         ["image.config_digest: missing", "gates[0].passed: expected true or false, found a string"]),
        ({"passed": True, "image": {"manifest_digest": "a", "config_digest": "b"},
          "outputs": {"gguf": {"size": True}}}, ["outputs.gguf.size: expected an integer, found true/false"]),
        ({"passed": False, "image": {"manifest_digest": "a", "config_digest": "b"}, "extra": [1, {}]}, []),
    ],
    ids=["list", "null", "bool-as-number", "missing-and-nested", "bool-is-not-int", "unknown-fields-ignored"],
)  # fmt: skip
def test_each_wrong_field_is_named(value: object, problems: list[str]) -> None:
    assert shape_problems(value, PRETEST_EVIDENCE) == problems


def test_parse_document_refuses_what_json_cannot_bound() -> None:
    for data, expected in ((b"[" * 100_000, "nested too deeply"), (b"1" * 5000, "not valid JSON"),
                           (b"\xff", "not valid JSON")):  # fmt: skip
        value, problems = parse_document(data, BUNDLE_INDEX)
        assert value is None and len(problems) == 1 and expected in problems[0]
