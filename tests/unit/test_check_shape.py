"""scripts/check_shape.py, which `nox -s lint` runs: the module and function size limits, at the edge."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _check_shape() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "check_shape.py"
    spec = importlib.util.spec_from_file_location("check_shape", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_shape"] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


shape = _check_shape()


def _function(name: str, lines: int) -> str:
    """A function of exactly `lines` lines, `def` line included."""
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 2))
    return f"def {name}() -> None:\n{body}    return None\n"


def _module(lines: int) -> str:
    return "".join(f"X{i} = {i}\n" for i in range(lines))


def test_a_module_of_400_lines_passes_and_one_of_401_fails(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "ok.py").write_text(_module(400))
    (tmp_path / "pkg" / "big.py").write_text(_module(401))
    found = shape.check_folders([tmp_path / "pkg"])
    assert [(o.path.name, o.what, o.lines) for o in found] == [("big.py", "module", 401)]


def test_a_function_of_80_lines_passes_and_one_of_81_fails_even_nested(tmp_path: Path) -> None:
    nested = "def outer() -> None:\n" + "".join(
        "    " + line + "\n" for line in _function("inner", 81).splitlines()
    )
    source = _function("fits", 80) + "\n" + _function("long", 81) + "\n" + nested
    found = shape.check_source(Path("m.py"), source)
    names = sorted(o.what for o in found)
    # outer is 82 lines (its own def plus inner's 81): both are reported, as a reader holds both.
    assert names == ["function inner", "function long", "function outer"]
    long = next(o for o in found if o.what == "function long")
    assert (long.line, long.lines, long.limit) == (82, 81, 80)


def test_a_method_and_an_async_function_are_checked(tmp_path: Path) -> None:
    method = "class C:\n" + "".join(
        "    " + line + "\n" for line in _function("method", 81).splitlines()
    )
    source = method + "async " + _function("coroutine", 81)
    found = shape.check_source(Path("m.py"), source)
    assert sorted(o.what for o in found) == ["function coroutine", "function method"]


def test_tests_benchmarks_and_vendored_code_are_not_checked(tmp_path: Path) -> None:
    for part in ("tests", "benchmarks", "vendor"):
        (tmp_path / "pkg" / part).mkdir(parents=True)
        (tmp_path / "pkg" / part / "big.py").write_text(_module(500))
    assert shape.check_folders([tmp_path / "pkg"]) == []


def test_main_exits_1_naming_each_offence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "big.py").write_text(_module(401))
    assert shape.main([str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert f"{tmp_path / 'big.py'}:1: module is 401 lines (limit 400)" in out.out
    assert "1 over the limits" in out.err


def test_main_exits_0_when_all_fit(tmp_path: Path) -> None:
    (tmp_path / "small.py").write_text(_function("f", 10))
    assert shape.main([str(tmp_path)]) == 0


def test_a_file_that_cannot_be_parsed_or_a_missing_folder_refuses_with_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.py").write_text("def f(:\n")
    assert shape.main([str(tmp_path)]) == 2
    assert "broken.py:1: cannot parse" in capsys.readouterr().err
    assert shape.main([str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
