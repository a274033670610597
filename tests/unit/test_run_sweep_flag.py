"""`gapforge run IMAGE --sweep`: the flags reach the runtime as `run --sweep --trials N`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gapforge import cli


def test_sweep_flags_pass_through_to_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_image(target: str, data: Path, out: Path, gpus: str, validation: Any, test: Any,
                       extra: list[str], timeout: Any, **_: Any) -> int:  # fmt: skip
        seen.update(target=target, extra=extra)
        return 0

    monkeypatch.setattr("gapforge.operator.run.run_image", fake_run_image)
    args = ["run", "img:1", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"), "--insecure"]
    assert cli.main([*args, "--sweep", "--trials", "4", "--parallel", "2"]) == 0
    assert seen["extra"] == ["--sweep", "--trials", "4", "--parallel", "2"]
    assert cli.main([*args, "--resume"]) == 0
    assert seen["extra"] == ["--resume"]
