"""Generated files an operator runs or loads (issue 22, item 5): the RUNBOOK's shell commands quote
every value and no value can break a line; the Ollama Modelfile carries any template and stop
string exactly as Ollama's own parser will read it back, or refuses it."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.export.quantize import modelfile_string, write_modelfile

from gapforge.bundle.runbook import TEMPLATE, TEMPLATES, render_runbook, runbook_context
from gapforge.bundle.source import BundleSource
from gapforge.errors import BundleError
from tests.unit.test_bundle import _key, source  # noqa: F401 (source: the fixture)


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def test_every_value_in_a_runbook_shell_command_goes_through_sh() -> None:
    template = (TEMPLATES / TEMPLATE).read_text()
    for block in _shell_blocks(template):
        for line in block.splitlines():
            if line.lstrip().startswith("#"):
                continue  # a comment cannot run what it prints, and finalize keeps it one line
            code = re.sub(
                r"\{\{\s*'[^']*'\s*\}\}", "", line
            )  # a string literal of the template's own
            for expression in re.findall(r"\{\{(.*?)\}\}", code):
                assert expression.rstrip().endswith("|sh"), (
                    f"unquoted {{{{{expression}}}}} in: {line}"
                )


def test_a_name_a_shell_would_run_is_quoted_in_every_command(
    source: BundleSource,  # noqa: F811
    tmp_path: Path,
) -> None:
    hostile = replace(source, name="x$(touch pwned)`id`")
    text = render_runbook(runbook_context(hostile, _key(tmp_path).fingerprint, wheel_count=3))
    assert "cd 'x$(touch pwned)`id`-1.2.3'" in text
    for block in _shell_blocks(text):
        assert "x$(" not in block.replace("'x$(touch pwned)`id`-1.2.3'", "")
        parsed = subprocess.run(
            ["bash", "-n"], input=block, text=True, capture_output=True, check=False
        )
        assert parsed.returncode == 0, parsed.stderr


def test_free_text_is_folded_onto_one_line(source: BundleSource, tmp_path: Path) -> None:  # noqa: F811
    """A description that would open a code block of its own stays inside its paragraph."""
    hostile = replace(source, description="Fine.\n```sh\ncurl evil | sh\n```\n")
    text = render_runbook(runbook_context(hostile, _key(tmp_path).fingerprint, wheel_count=3))
    assert "Fine. ```sh curl evil | sh ```" in text
    assert "\ncurl evil" not in text


@pytest.mark.parametrize("ref", ["unit/desk:1\nrm -rf ~", "unit/desk:1\u2028x", "unit\x1b[2J"])
def test_a_value_with_a_control_character_is_refused(
    source: BundleSource,  # noqa: F811
    tmp_path: Path,
    ref: str,
) -> None:
    hostile = replace(source, image=replace(source.image, ref=ref))
    with pytest.raises(BundleError, match=r"RUNBOOK.md: the value .* holds a control character"):
        render_runbook(runbook_context(hostile, _key(tmp_path).fingerprint, wheel_count=3))


def _ollama_parse(text: str) -> list[tuple[str, str]]:
    """Ollama's Modelfile parser (parser/parser.go, ParseFile), ported rune for rune for the
    commands gapforge writes: FROM, TEMPLATE, PARAMETER."""

    def printable(char: str) -> bool:
        return unicodedata.category(char)[0] in "LMNPS" or char == " "

    def unquote(value: str) -> tuple[str, bool]:
        if value[:3] == '"""':
            return (value[3:-3], True) if len(value) >= 6 and value[-3:] == '"""' else ("", False)
        if value[:1] == '"':
            return (value[1:-1], True) if len(value) >= 2 and value[-1] == '"' else ("", False)
        return value, True

    commands: list[tuple[str, str]] = []
    state, buffer, name = "nil", "", ""
    for char in text:
        space, newline = char in " \t", char in "\r\n"
        if state == "nil":
            nxt, kept = (
                ("comment", "")
                if char == "#"
                else ("nil", "")
                if space or newline
                else ("name", char)
            )
        elif state == "name":
            assert char.isascii() and (char.isalpha() or space), f"invalid command at {char!r}"
            nxt, kept = ("name", char) if char.isalpha() else ("value", "")
        elif state == "parameter":
            nxt, kept = ("parameter", char) if char.isalnum() or char == "_" else ("value", "")
        elif state == "comment":
            nxt, kept = ("nil", "") if newline else ("comment", "")
        else:
            nxt, kept = ("nil", char) if space or newline else ("value", char)
        if nxt != state:
            if state == "name":
                name = buffer.lower()
                nxt = "parameter" if name == "parameter" else nxt
            elif state == "parameter":
                name = buffer
            elif state == "value":
                value, ok = unquote(buffer.strip())
                if not ok or space:
                    buffer += kept
                    continue
                commands.append((name, value))
            buffer, state = "", nxt
        if kept and printable(kept):
            buffer += kept
    if state == "value":
        value, ok = unquote(buffer.strip())
        assert ok, "unexpected end of file"
        commands.append((name, value))
    return commands


CHAT = "<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"


@pytest.mark.parametrize(
    ("template", "stops"),
    [
        (CHAT, ["<|im_end|>"]),
        (
            'say "hi"\nthen" PARAMETER num_ctx 1\n',
            ['x" \nPARAMETER temperature 9', "\n\nUser:", '"'],
        ),
        ("tabs\tand  spaces ", [" lead", "trail ", "é ü 中"]),
    ],
)
def test_the_modelfile_reads_back_exactly_under_ollamas_parser(
    tmp_path: Path, template: str, stops: list[str]
) -> None:
    path = write_modelfile(tmp_path / "desk-q8_0.gguf", template, stops)
    parsed = _ollama_parse(path.read_text())
    assert parsed == [("from", "./desk-q8_0.gguf"), ("template", template)] + [
        ("stop", s) for s in stops
    ]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('a """ b', "three double quotes"),
        ("a\x00b", "U+0000"),
        ("a\u200bb", "U+200B"),
        ("a\x1bb", "U+001B"),
    ],
)
def test_a_value_ollama_cannot_carry_is_refused(value: str, needle: str) -> None:
    with pytest.raises(RuntimeFailure, match=re.escape(needle)):
        modelfile_string(value, "PARAMETER stop")


def test_a_gguf_name_that_is_not_a_plain_file_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="not a plain file name"):
        write_modelfile(tmp_path / "desk x.gguf", CHAT, [])
    assert not list(tmp_path.iterdir())
