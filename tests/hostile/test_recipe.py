"""Hostile recipes (issue 22, attack 7): YAML that a safe loader would still expand into gigabytes
("billion laughs"), recurse on, or fail on with a traceback. Each is refused by `gapforge validate`
with exit 2, naming the file and the line, in well under a second."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from gapforge_runtime.bounded_yaml import MAX_BYTES, YamlRefused
from gapforge_runtime.evaluation.lmeval import read_task_yaml

from tests.hostile.conftest import Hostile

LAUGHS = "\n".join(
    [
        "name: lol",
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(
            f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]"
            for i in range(8)
        ),
    ]
)
"""Nine levels of nine-fold aliases: 9**9 (387 million) strings from under 1 KB."""

CASES = [
    (LAUGHS, "line 2: the anchor &a is refused"),
    ("name: x\nversion: *v\n", "line 2: the alias *v is refused"),
    ("name: x\nmodel: " + "[" * 3000 + "]" * 3000 + "\n", "line 2: nested more than 64 levels"),
    ("name: x\nseed: " + "7" * 5000 + "\n", "line 2: an integer of 5000 digits is refused"),
    ("name: x\n<<: {a: 1}\n", ""),  # a merge key with no alias is plain data: schema problems only
]


@pytest.mark.parametrize(("text", "needle"), CASES)
def test_a_hostile_recipe_is_refused_naming_the_line(
    hostile: Hostile, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    recipe = hostile.inputs / "bomb.yaml"
    recipe.write_text(text)
    started = time.monotonic()
    status, output = hostile.run("validate", recipe, capsys=capsys)
    assert time.monotonic() - started < 1.0
    flat = " ".join(output.split())
    assert status == 2 and "bomb.yaml" in flat and needle in flat, output


def test_the_billion_laughs_is_small(tmp_path: Path) -> None:
    assert len(LAUGHS.encode()) < 1024


def test_a_recipe_over_the_size_limit_is_refused_unread(
    hostile: Hostile, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = hostile.inputs / "big.yaml"
    recipe.write_text("name: x\n" + "# padding\n" * (MAX_BYTES // 10 + 1))
    status, output = hostile.run("validate", recipe, capsys=capsys)
    assert status == 2 and "larger than the 1000000 bytes" in output, output


def test_a_recipe_that_is_not_utf8_names_the_byte(
    hostile: Hostile, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = hostile.inputs / "latin1.yaml"
    recipe.write_bytes("name: café\n".encode("latin-1"))
    status, output = hostile.run("validate", recipe, capsys=capsys)
    assert status == 2 and "byte 9 is not UTF-8" in output, output


def test_an_lm_eval_task_yaml_is_bounded_too(tmp_path: Path) -> None:
    """The recipe's lm-eval task folder is the recipe author's YAML as well."""
    task = tmp_path / "desk.yaml"
    task.write_text("task: desk\n" + LAUGHS.split("\n", 1)[1] + "\n")
    with pytest.raises(YamlRefused, match="anchor &a") as caught:
        read_task_yaml(task)
    assert isinstance(caught.value, yaml.YAMLError) and caught.value.problem_mark is not None
    task.write_text("task: desk\nprocess_results: !function utils.process\n")
    assert read_task_yaml(task)["process_results"].tag == "!function"
