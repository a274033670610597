"""The sealed pretest says where its minutes went."""

from __future__ import annotations

from gapforge.pretest import step_table


def test_the_pretest_says_where_its_time_went() -> None:
    evidence = {"seconds": 100.0, "steps": {"data": 2.0, "train": 60.0, "evaluate": 30.0}}
    lines = step_table(evidence)
    assert lines[0].split() == ["step", "seconds", "share"]
    assert [line.split()[0] for line in lines[1:4]] == ["train", "evaluate", "data"]
    assert lines[1].split()[1:] == ["60.0", "60.0%"]
    assert lines[-1].startswith("(start, imports, between steps)") and lines[-1].split()[-2:] == [
        "8.0",
        "8.0%",
    ]
    assert step_table({"seconds": 5.0, "steps": {}}) == []
