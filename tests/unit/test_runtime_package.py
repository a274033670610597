"""The runtime package's shape: it never imports the builder, has no import cycles, its recipe
schema is light enough for the builder, and the operator's commands do not need it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "runtime" / "gapforge_runtime"
HEAVY = ("torch", "transformers", "peft", "accelerate", "llama_cpp", "numpy", "gguf", "matplotlib")


def _module(path: Path) -> str:
    """`path`'s dotted name inside the package: `steps.train`, `data.hygiene` for its __init__."""
    parts = path.relative_to(RUNTIME).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p) for p in RUNTIME.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The gapforge_runtime modules `path` imports, at the top or in a function, not for typing."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            # `from gapforge_runtime.data import packing` imports the module data.packing.
            module = node.module or ""
            names = [
                f"{module}.{alias.name}"
                if f"{module}.{alias.name}".removeprefix("gapforge_runtime.") in MODULES
                else module
                for alias in node.names
            ]
        found |= {
            n.removeprefix("gapforge_runtime.") for n in names if n.startswith("gapforge_runtime.")
        }
        assert not any(n == "gapforge" or n.startswith("gapforge.") for n in names), path
    return found


def test_the_runtime_has_no_import_cycle_and_never_imports_the_builder() -> None:
    graph = {_module(p): _imports(p) for p in RUNTIME.rglob("*.py")}
    assert "steps" in graph or "methods.sft" in graph, "the runtime's packages were not read"

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen and module in graph:
                seen.add(module)
                todo += graph[module]
        return seen

    cycles = sorted(module for module in graph if module in reach(module))
    assert not cycles, f"modules on an import cycle: {cycles}"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO
    )


def test_the_recipe_schema_and_config_import_nothing_heavy() -> None:
    code = (
        "import sys, gapforge_runtime.recipe_schema, gapforge_runtime.config, gapforge.recipe\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "assert not heavy, heavy"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


BLOCK_RUNTIME = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gapforge_runtime":
            raise ModuleNotFoundError("No module named 'gapforge_runtime'", name="gapforge_runtime")
sys.meta_path.insert(0, Block())
"""


def test_operator_commands_work_without_the_runtime_package() -> None:
    """Operators install gapforge from the bundle's wheels, without gapforge_runtime."""
    code = BLOCK_RUNTIME + (
        "import gapforge.cli\n"
        "for name in ('operator.verify', 'operator.load', 'operator.run', 'operator.inspect',\n"
        "             'bundle.sign'):\n"
        "    importlib.import_module('gapforge.' + name)\n"
        "assert 'gapforge.recipe' not in sys.modules\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


def test_without_the_runtime_package_the_builder_says_how_to_install_it() -> None:
    code = BLOCK_RUNTIME + (
        "from gapforge.errors import GapforgeError\n"
        "try:\n"
        "    import gapforge.recipe\n"
        "except GapforgeError as error:\n"
        "    print(error)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "bash scripts/setup.sh" in result.stdout


def _pinned(lock: Path, name: str) -> str:
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    raise AssertionError(f"{lock.name} does not lock {name}")


def test_the_images_lock_the_schema_dependencies_at_the_builders_versions() -> None:
    """The builder and the image validate with the same pydantic (the image gets it through
    transformers' dependencies: a lock that lost it would break the runtime)."""
    locks = REPO / "lockfiles"
    for name in ("pydantic", "pydantic-core"):
        builder = _pinned(locks / "builder.txt", name)
        for profile in ("cpu", "cuda"):
            assert _pinned(locks / f"{profile}.txt", name) == builder, (profile, name)


def test_no_runtime_module_over_400_lines_and_no_function_over_80() -> None:
    """The house's limits, kept for the runtime (issue 24): a module or function past them is named."""
    too_long = []
    for path in sorted(RUNTIME.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 400:
            too_long.append(f"{_module(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 80:
                    too_long.append(f"{_module(path)}.{node.name}: {lines} lines")
    assert len(MODULES) > 40, "the runtime's modules were not found"
    assert not too_long, too_long
