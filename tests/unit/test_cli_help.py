"""`gapforge --help` groups the commands by who runs them; each command's help ends with an example
that the command line accepts."""

from __future__ import annotations

import shlex

import pytest

from gapforge.cli import COMMANDS, USERS, build_parser, main


def test_help_lists_every_command_once_under_its_user(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    headings = [text.index(f"\n{user}:\n") for user in USERS]
    assert headings == sorted(headings)
    for name, command in COMMANDS.items():
        line = f"\n  {name} "
        assert text.count(line) == 1, name
        place = text.index(line)
        group = max(i for i, start in enumerate(headings) if start < place)
        assert USERS[group] == command.user, name
    assert "usage: gapforge [-h] [--version] COMMAND ..." in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_help_ends_with_an_example_it_accepts(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    example = COMMANDS[name].example
    words = shlex.split(example)
    assert words[:2] == ["gapforge", name]
    args = build_parser([name]).parse_args(words[1:])
    assert args.command == name
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gapforge {name} "), out[:120]
    assert out.rstrip().endswith(f"example:\n  {example}")
