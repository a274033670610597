"""Two import-linter contracts the built-in ones cannot say, used by `nox -s lint` (pyproject.toml).

- `only_imports`: the source modules may import, of a target package, only the modules listed. The
  builder may use the runtime's recipe schema, not the rest of the runtime; a forbidden contract would
  have to list every other runtime module and would go quiet for each module added later, while an
  allowlist fails on the new import.
- `acyclic_modules`: no import circle between any two modules of the containers. A layers contract
  sees circles only between its layers; a circle inside one package (two stages importing each other)
  makes the two one module in all but name.

import-linter loads this module by name (`scripts.import_contracts`) from the checkout's root, where
`lint-imports` runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import grimp
from importlinter import Contract, ContractCheck, fields, output


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


class OnlyImportsContract(Contract):
    """Source modules import nothing of `target` but the `allowed_modules` (and their submodules)."""

    type_name = "only_imports"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    target = fields.ModuleField()
    allowed_modules = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        """Every direct import from a source into the target, checked against the allowlist."""
        sources = [m.name for m in self.source_modules]  # type: ignore[attr-defined]
        target = self.target.name  # type: ignore[attr-defined]
        allowed = [m.name for m in self.allowed_modules]  # type: ignore[attr-defined]
        for name in (*sources, target, *allowed):
            if name not in graph.modules:
                # An allowlist naming a module that is gone cannot be judged: refuse, do not pass.
                raise ValueError(f"only_imports: {name} is not a module of the graph")
        illegal: list[tuple[str, str, tuple[int, ...]]] = []
        for importer in sorted(m for m in graph.modules if any(_within(m, s) for s in sources)):
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if not _within(imported, target) or any(_within(imported, a) for a in allowed):
                    continue
                details = graph.get_import_details(importer=importer, imported=imported)
                illegal.append((importer, imported, tuple(d["line_number"] for d in details)))
        return ContractCheck(kept=not illegal, metadata={"illegal": illegal})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One line per import that is not on the allowlist."""
        for importer, imported, lines in check.metadata["illegal"]:
            where = ", ".join(f"l.{n}" for n in lines)
            output.print_error(f"{importer} -> {imported} ({where}): not on the allowlist")
        output.new_line()


def _cycles(adjacency: dict[str, list[str]]) -> Iterator[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(adjacency):
        if root in index:
            continue
        work = [(root, iter(adjacency[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(adjacency.get(child, []))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield sorted(component)


class AcyclicModulesContract(Contract):
    """No circle of imports between modules of the containers (a package's `__init__` included)."""

    type_name = "acyclic_modules"

    containers = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        """Every circle found, each as the sorted list of the modules in it."""
        roots = [m.name for m in self.containers]  # type: ignore[attr-defined]
        inside = {m for m in graph.modules if any(_within(m, r) for r in roots)}
        adjacency = {
            m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in inside)
            for m in inside
        }
        found = sorted(_cycles(adjacency))
        return ContractCheck(kept=not found, metadata={"cycles": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One line per circle, naming its modules."""
        for cycle in check.metadata["cycles"]:
            output.print_error("import circle: " + " <-> ".join(cycle))
        output.new_line()
