"""scripts/import_contracts.py, the two import-linter contracts `nox -s lint` adds to the built-in
ones: an allowlist of what one package may import of another, and no circle between modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import grimp
import pytest


def _contracts() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "import_contracts.py"
    spec = importlib.util.spec_from_file_location("import_contracts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_contracts"] = module
    spec.loader.exec_module(module)
    return module


contracts = _contracts()


def _graph(imports: list[tuple[str, str]], modules: tuple[str, ...] = ()) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for name in {*modules, *(m for pair in imports for m in pair)}:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            graph.add_module(".".join(parts[:depth]))
    for line, (importer, imported) in enumerate(imports, start=1):
        graph.add_import(importer=importer, imported=imported, line_number=line,
                         line_contents=f"import {imported}")  # fmt: skip
    return graph


def _only_imports(allowed: list[str]) -> object:
    options = {"source_modules": ["builder"], "target": "runtime", "allowed_modules": allowed}
    return contracts.OnlyImportsContract("only", {}, options)


def test_only_imports_keeps_the_allowlisted_modules_and_their_submodules() -> None:
    graph = _graph([("builder.recipe", "runtime.schema"), ("builder.a.b", "runtime.schema.rules")])
    assert _only_imports(["runtime.schema"]).check(graph, verbose=False).kept  # type: ignore[attr-defined]


def test_only_imports_breaks_on_any_other_module_of_the_target_naming_it() -> None:
    graph = _graph([("builder.recipe", "runtime.schema"), ("builder.stages.x", "runtime.train")])
    check = _only_imports(["runtime.schema"]).check(graph, verbose=False)  # type: ignore[attr-defined]
    assert not check.kept
    assert check.metadata["illegal"] == [("builder.stages.x", "runtime.train", (2,))]


def test_only_imports_breaks_on_the_target_package_itself() -> None:
    """`import runtime` runs its __init__, which the allowlist did not name."""
    graph = _graph([("builder.recipe", "runtime")], modules=("runtime.schema",))
    assert not _only_imports(["runtime.schema"]).check(graph, verbose=False).kept  # type: ignore[attr-defined]


def test_only_imports_refuses_an_allowlist_naming_a_module_that_is_gone() -> None:
    graph = _graph([("builder.recipe", "runtime.schema")])
    with pytest.raises(ValueError, match=r"runtime\.removed is not a module"):
        _only_imports(["runtime.removed"]).check(graph, verbose=False)  # type: ignore[attr-defined]


def _acyclic() -> object:
    return contracts.AcyclicModulesContract("acyclic", {}, {"containers": ["pkg"]})


def test_acyclic_modules_finds_a_circle_of_three_and_names_its_modules() -> None:
    graph = _graph([("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a"), ("pkg.d", "pkg.a")])
    check = _acyclic().check(graph, verbose=False)  # type: ignore[attr-defined]
    assert not check.kept
    assert check.metadata["cycles"] == [["pkg.a", "pkg.b", "pkg.c"]]


def test_acyclic_modules_keeps_a_graph_without_circles_and_ignores_other_packages() -> None:
    graph = _graph([("pkg.a", "pkg.b"), ("pkg.a", "other.x"), ("other.x", "pkg.a")])
    # The circle through `other` is outside the container: not this contract's to judge.
    assert _acyclic().check(graph, verbose=False).kept  # type: ignore[attr-defined]


def test_acyclic_modules_counts_a_package_init_as_a_module() -> None:
    graph = _graph([("pkg.sub", "pkg.sub.mod"), ("pkg.sub.mod", "pkg.sub")])
    check = _acyclic().check(graph, verbose=False)  # type: ignore[attr-defined]
    assert check.metadata["cycles"] == [["pkg.sub", "pkg.sub.mod"]]
