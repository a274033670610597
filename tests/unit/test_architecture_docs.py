"""docs/architecture.md and runtime/README.md against the code: every module or package they name
exists, and every package of gapforge/ and gapforge_runtime/ is named by one of them.

A doc names a module by its path in backticks: `gapforge/oci/tar.py`, `gapforge_runtime/report/`,
`runtime/gapforge_runtime/cli.py`, a dotted `gapforge.operator.gate` (an attribute after the module,
as in `gapforge.operator.gate.require_verified`, is allowed), or a path relative to the builder's
package (`operator/run.py`, `commands/`) on docs/architecture.md. A bare word (`cli`) is not
checked: it may as well be a function. The test reads the docs as they are, so a module moved or a
package added fails here until the page that describes it is fixed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
RUNTIME_README = ROOT / "runtime" / "README.md"
PACKAGE_ROOTS = {
    "gapforge": ROOT / "gapforge",
    "gapforge_runtime": ROOT / "runtime" / "gapforge_runtime",
}
EXCLUDED = {"vendor", "__pycache__"}
CHECKOUT_FOLDERS = {
    "benchmarks",
    "docs",
    "images",
    "lockfiles",
    "recipes",
    "runtime",
    "scripts",
    "tests",
}
"""A relative path that starts with one of these names a file of the checkout, not a module."""

_TICKED = re.compile(r"`([^`\s]+)`")
_PATH = re.compile(
    r"^(?:runtime/)?(gapforge|gapforge_runtime)/((?:[A-Za-z_][\w]*/)*(?:[A-Za-z_]\w*\.py)?)$"
)
_RELATIVE = re.compile(r"^((?:[a-z_][\w]*/)+(?:[a-z_]\w*\.py)?|[a-z_]\w*\.py)$")
_DOTTED = re.compile(r"^(gapforge|gapforge_runtime)((?:\.[A-Za-z_]\w*)*)$")


def _exists(root: str, parts: list[str]) -> bool:
    """Whether `root/parts...` is a package (folder with __init__.py) or a module (.py)."""
    base = PACKAGE_ROOTS[root].joinpath(*parts)
    return (base / "__init__.py").is_file() or base.with_suffix(".py").is_file()


def resolve(token: str, relative_to: str | None) -> tuple[str, str, bool] | None:
    """(the name as written, its package path like `gapforge/oci/` or '', whether it exists) for a
    token that names a module or package; None for any other token. `relative_to` is the package
    (`gapforge` or `gapforge/oci`) a relative name is read in, None where none is."""
    if match := _PATH.match(token):
        root, rest = match.group(1), match.group(2)
        parts = [p for p in rest.removesuffix(".py").split("/") if p]
        is_package = not rest.endswith(".py")
        exists = _exists(root, parts) if parts else PACKAGE_ROOTS[root].is_dir()
        if is_package and parts:
            exists = (PACKAGE_ROOTS[root].joinpath(*parts) / "__init__.py").is_file()
        package = "/".join([root, *parts]) + "/" if is_package else None
        return token, package or "", exists
    if match := _DOTTED.match(token):
        root, parts = match.group(1), [p for p in match.group(2).split(".") if p]
        # the longest prefix that is a module; at most one attribute may follow it
        for cut in range(len(parts), -1, -1):
            if _exists(root, parts[:cut]) if cut else PACKAGE_ROOTS[root].is_dir():
                package_dir = PACKAGE_ROOTS[root].joinpath(*parts[:cut])
                is_package = (package_dir / "__init__.py").is_file() or cut == 0
                package = "/".join([root, *parts[:cut]]) + "/" if is_package else ""
                return token, package, len(parts) - cut <= 1
        return token, "", False
    if not _RELATIVE.match(token):
        return None
    first = token.split("/")[0]
    if "/" in token and first in CHECKOUT_FOLDERS:  # scripts/check_shape.py: a file of the checkout
        return token, "", (ROOT / token).exists()
    if relative_to is None:
        return None
    root, _, inner = relative_to.partition("/")
    parts = [*inner.split("/"), *token.removesuffix(".py").split("/")]
    parts = [p for p in parts if p]
    if token.endswith("/"):
        folder = PACKAGE_ROOTS[root].joinpath(*parts)
        return token, f"{root}/{'/'.join(parts)}/", (folder / "__init__.py").is_file()
    return token, "", _exists(root, parts)


def _named(doc: Path, relative_to: str | None) -> list[tuple[str, str, bool]]:
    """What `doc` names. In a table row whose first cell names a package (`gapforge/oci/`), the
    row's relative names are read in that package; elsewhere in `relative_to`."""
    found = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        context = relative_to
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            head = [resolve(t, None) for t in _TICKED.findall(first_cell)]
            packages = [item[1] for item in head if item is not None and item[1]]
            if packages:
                context = packages[0].rstrip("/")
        found += [resolve(token, context) for token in _TICKED.findall(line)]
    return [item for item in found if item is not None]


def _packages() -> set[str]:
    packages = set()
    for root, folder in PACKAGE_ROOTS.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if not EXCLUDED.intersection(parts):
                packages.add("/".join([root, *parts]) + "/")
    return packages


@pytest.mark.parametrize(
    ("doc", "relative_to"), [(ARCHITECTURE, "gapforge"), (RUNTIME_README, None)]
)
def test_every_module_a_doc_names_exists(doc: Path, relative_to: str | None) -> None:
    missing = sorted({name for name, _, exists in _named(doc, relative_to) if not exists})
    assert not missing, f"{doc.relative_to(ROOT)} names modules that do not exist: {missing}"


def test_every_package_is_named_by_one_of_the_docs() -> None:
    named = {
        package
        for doc, relative_to in ((ARCHITECTURE, "gapforge"), (RUNTIME_README, None))
        for _, package, exists in _named(doc, relative_to)
        if exists and package
    }
    unnamed = sorted(_packages() - named)
    assert not unnamed, (
        f"packages that neither docs/architecture.md nor runtime/README.md names: {unnamed}"
    )


@pytest.mark.parametrize(
    ("token", "package", "exists"),
    [
        ("gapforge/oci/tar.py", "", True),
        ("gapforge/oci/", "gapforge/oci/", True),
        ("gapforge/oci/gone.py", "", False),
        ("gapforge/gone/", "gapforge/gone/", False),
        ("runtime/gapforge_runtime/report/", "gapforge_runtime/report/", True),
        ("gapforge.operator.gate.require_verified", "", True),
        ("gapforge.operator", "gapforge/operator/", True),
        ("gapforge.operator.gone.deeper", "gapforge/operator/", False),
        ("operator/run.py", "", True),
        ("commands/", "gapforge/commands/", True),
        ("stages/gone.py", "", False),
    ],
)
def test_how_a_named_module_is_read(token: str, package: str, exists: bool) -> None:
    assert resolve(token, "gapforge") == (token, package, exists)


def test_other_ticked_words_are_not_modules() -> None:
    for token in ("cli", "--key", "SHA256SUMS", "lockfiles/cpu.txt", "dist/<recipe>-<version>/"):
        assert resolve(token, "gapforge") is None, token
