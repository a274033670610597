"""The house's size limits, checked: no module over 400 lines, no function over 80 lines.

`nox -s lint` runs this over the builder and the runtime, so a module or function that grows past
its limit fails CI in the commit that grew it, not in a review months later. Benchmarks and tests are
not checked: a benchmark is a script read top to bottom, a test file is a list of cases. Standard
library only, like scripts/test_times.py: it needs no venv.

    python3 scripts/check_shape.py [FOLDER ...]     (default: gapforge runtime)

A module's length is its line count; a function's runs from its `def` (decorators excluded) to its
last line, docstring and nested functions included, since that is what a reader has to hold. Exit
status 1 with one line per offender when anything is over; 2 when a file cannot be read or parsed
(a check that cannot decide refuses).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
DEFAULT_FOLDERS = ("gapforge", "runtime")
EXCLUDED_PARTS = frozenset({"benchmarks", "tests", "vendor", "__pycache__", ".venv", ".nox"})
"""Folders never checked wherever they appear: benchmarks and tests by the house's rule, vendored
third-party code because it is not ours to reshape, environments because they are not source."""


@dataclass(frozen=True)
class Offence:
    """One module or function over its limit."""

    path: Path
    line: int
    what: str
    lines: int
    limit: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what} is {self.lines} lines (limit {self.limit})"


class ShapeError(Exception):
    """A file that could not be read or parsed: the check cannot decide, so it refuses."""


def python_files(folders: list[Path]) -> Iterator[Path]:
    """Every .py file under `folders` outside the excluded folders, in a stable order."""
    for folder in folders:
        if not folder.is_dir():
            raise ShapeError(f"{folder}: no such folder to check; name a folder of the checkout")
        for path in sorted(folder.rglob("*.py")):
            if not EXCLUDED_PARTS.intersection(path.relative_to(folder).parts):
                yield path


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def check_source(path: Path, source: str) -> list[Offence]:
    """The offences of one module's source text (`path` only names it in the result)."""
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ShapeError(f"{path}:{exc.lineno}: cannot parse ({exc.msg}); fix the syntax") from exc
    found: list[Offence] = []
    module_lines = len(source.splitlines())
    if module_lines > MAX_MODULE_LINES:
        found.append(Offence(path, 1, "module", module_lines, MAX_MODULE_LINES))
    for function in _functions(tree):
        end = function.end_lineno if function.end_lineno is not None else function.lineno
        length = end - function.lineno + 1
        if length > MAX_FUNCTION_LINES:
            what = f"function {function.name}"
            found.append(Offence(path, function.lineno, what, length, MAX_FUNCTION_LINES))
    return found


def check_folders(folders: list[Path]) -> list[Offence]:
    """The offences of every module under `folders`, in file then line order."""
    found: list[Offence] = []
    for path in python_files(folders):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ShapeError(f"{path}: cannot read ({exc}); check the file") from exc
        found.extend(check_source(path, source))
    return found


def main(argv: list[str] | None = None) -> int:
    """Print each offence; 0 when none, 1 when any, 2 when the check could not decide."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[Path(f) for f in DEFAULT_FOLDERS])
    args = parser.parse_args(argv)
    try:
        found = check_folders(args.folders)
    except ShapeError as exc:
        print(f"check_shape: {exc}", file=sys.stderr)
        return 2
    for offence in found:
        print(offence)
    if found:
        print(
            f"check_shape: {len(found)} over the limits (modules {MAX_MODULE_LINES} lines, "
            f"functions {MAX_FUNCTION_LINES}): split them by what they do",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
