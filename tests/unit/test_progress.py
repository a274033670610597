"""Long steps never sit silent in a log: where output is not a terminal, a heartbeat line."""

from __future__ import annotations

import time

import pytest

from gapforge import progress


def test_waiting_prints_a_heartbeat_and_its_time_in_a_log(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.05)
    with progress.waiting("compiling llama.cpp", "about 3 min"):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    beats = [line for line in lines if "compiling llama.cpp: " in line and "so far" in line]
    assert len(beats) >= 2, lines
    assert lines[0].strip() == "compiling llama.cpp (about 3 min) …", lines  # its start, at once
    assert "(about 3 min)" in beats[0]
    assert lines[-1].strip().startswith("compiling llama.cpp: done in 0.")


def test_count_and_byte_bars_report_their_counts_in_a_log(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.05)
    with progress.count_progress("wheels", 10) as advance:
        advance(3)
        time.sleep(0.2)
    with progress.byte_progress("hashing", 2048) as advance:
        advance(1024)
        time.sleep(0.2)
    err = capsys.readouterr().err
    assert "wheels: 3/10" in err
    assert "hashing: 1,024/2,048 bytes" in err
