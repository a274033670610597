"""gapforge's sessions: `nox -l` lists them. Slow or special sessions are not run by default."""

from __future__ import annotations

import itertools
import os

import nox
import nox.command

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["lint", "typecheck", "test"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

DEFAULT_RECIPE = "recipes/smollm2/lora-q8-q4.yaml"
BUILDER_LOCK = "lockfiles/builder.txt"
# This machine's pip settings (find-links, constraints, extra indexes) stay out of the sessions'
# installs, as in scripts/setup.sh: the hash-checked lock decides what is installed.
_LOCKED_PIP_ENV: dict[str, str | None] = {
    "PIP_CONFIG_FILE": os.devnull,
    **dict.fromkeys(("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")),
}


def _install_locked_tools(session: nox.Session) -> None:
    """lockfiles/builder.txt, hash-checked: nox, the builder's dependencies, test and lint tools."""
    session.install("--require-hashes", "-r", BUILDER_LOCK, env=_LOCKED_PIP_ENV)


def _install_builder(session: nox.Session) -> None:
    """The locked tools, then gapforge and its runtime package (the builder imports the recipe
    schema from gapforge_runtime), editable, with no dependency of their own resolved."""
    _install_locked_tools(session)
    session.install("--no-deps", "--no-build-isolation", "-e", ".", env=_LOCKED_PIP_ENV)
    session.install("--no-deps", "--no-build-isolation", "-e", "runtime", env=_LOCKED_PIP_ENV)


@nox.session(default=False)
def lock(session: nox.Session) -> None:
    """Rewrite lockfiles/ from images/*/ and the recipes' model sources (needs the network)."""
    _install_builder(session)
    session.run("gapforge", "lock", *session.posargs)


@nox.session(default=False)
def build(session: nox.Session) -> None:
    """Build a recipe into a sealed image, load it and smoke-run it: nox -s build -- recipes/….yaml."""
    _install_builder(session)
    session.run("gapforge", "build", *(session.posargs or [DEFAULT_RECIPE]))


TEST_RESULTS = "test-results"
"""Where each tier's pytest run writes its JUnit XML (`<tier>.xml`); scripts/test_times.py reads it."""
TIERS: dict[str, tuple[str, ...]] = {
    "unit": ("-m", "unit", "-n", "auto", "--maxprocesses", "4"),
    "runtime": ("-m", "runtime and not slow"),
    "integration": ("-m", "integration and not slow"),
    "slow": ("-m", "slow"),
}
"""Each tier's pytest arguments (tests/conftest.py gives every test its tier). Only the unit tier runs
in parallel: the runtime and integration tiers share session fixtures (one finished run, one built
image) that parallel workers would each make again."""


def _run_tiers(session: nox.Session, tiers: tuple[str, ...]) -> None:
    """Each tier as its own pytest run, JUnit XML in TEST_RESULTS/, unit first and before the
    runtime's heavy install; a failed tier does not stop the others (the durations stay whole),
    the session fails at the end naming them. `-- ARGS` runs pytest on ARGS alone instead."""
    os.makedirs(TEST_RESULTS, exist_ok=True)
    if session.posargs:
        # The builder's venv is enough for `-m unit`: tests/conftest.py skips the other tier folders.
        selected = None if _unit_only(session.posargs) else _install_runtime(session)
        parallel = TIERS["unit"][2:] if selected is None else ()
        junit = os.path.join(TEST_RESULTS, "selected.xml")
        session.run("pytest", *parallel, f"--junitxml={junit}", *session.posargs, env=selected)
        return
    failed = []
    env: dict[str, str] | None = None
    for tier in tiers:
        if tier != "unit" and env is None:
            env = _install_runtime(session)
        junit = os.path.join(TEST_RESULTS, f"{tier}.xml")
        session.log(f"tier {tier}: pytest {' '.join(TIERS[tier])}")
        try:
            session.run("pytest", *TIERS[tier], f"--junitxml={junit}", "tests", env=env)
        except nox.command.CommandFailed:
            failed.append(tier)
    if failed:
        session.error(f"the {', '.join(failed)} tier(s) failed; their pytest output is above")


def _unit_only(posargs: list[str]) -> bool:
    """Whether the arguments select the unit tier alone (`-m unit`), so the runtime is not needed."""
    pairs = itertools.pairwise(posargs)
    return any(pair == ("-m", "unit") for pair in pairs) or "-munit" in posargs


@nox.session
def test(session: nox.Session) -> None:
    """The unit (parallel), runtime and Docker integration tiers, each its own pytest run; not slow."""
    _install_builder(session)
    _run_tiers(session, ("unit", "runtime", "integration"))


@nox.session(name="test-all", default=False)
def test_all(session: nox.Session) -> None:
    """Every tier, slow included: the cuda image's first build, the cold rebuild as another machine."""
    _install_builder(session)
    _run_tiers(session, tuple(TIERS))


def _runtime_env(session: nox.Session) -> dict[str, str]:
    """Builder + runtime in the session's venv, on the image's locked wheels; returns the env to use.

    The runtime's locked wheels (torch CPU, transformers, peft, llama-cpp-python built offline),
    and llama.cpp's conversion scripts from the same locked sdist.
    """
    _install_builder(session)  # gapforge and the runtime, editable
    return _install_runtime(session)


def _install_runtime(session: nox.Session) -> dict[str, str]:
    """The runtime's locked wheels and llama.cpp's scripts, where the builder is installed already."""
    llama_cpp = os.path.join(session.create_tmp(), "llama.cpp")
    python = os.path.join(session.virtualenv.location, "bin", "python")
    session.run("gapforge", "runtime-env", "--python", python, "--llama-cpp-dir", llama_cpp)
    return {"PYTHONUNBUFFERED": "1", "GAPFORGE_LLAMA_CPP": llama_cpp}


@nox.session(default=False)
def fuzz(session: nox.Session) -> None:
    """Fuzz the hostile property tests (Hypothesis 'fuzz' profile) for --seconds (300); print the cases tried."""
    _install_builder(session)
    session.run("python", "-m", "tests.hostile.fuzz", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format --check; the import contracts; module and function sizes (pyproject.toml)."""
    _install_locked_tools(session)
    session.run(
        "ruff", "check", "gapforge", "runtime", "tests", "noxfile.py", "benchmarks", "scripts"
    )
    session.run("ruff", "format", "--check", "gapforge", "runtime", "noxfile.py", "scripts")
    # lint-imports reads [tool.importlinter] and finds gapforge and scripts/ from this folder; the
    # runtime package is found on PYTHONPATH, as mypy finds it (neither is installed here).
    session.run("lint-imports", "--no-cache", env={"PYTHONPATH": "runtime"})
    session.run("python", "scripts/check_shape.py", "gapforge", "runtime")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the builder and the runtime (pyproject.toml [tool.mypy])."""
    _install_builder(session)
    session.run("mypy")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Print build, layer-writing (vs docker save), runtime, verify (vs sha256sum -c) and transfer
    (split/join vs split -b/cat, zfec vs par2, delta vs cp -r) figures.

    `nox -s bench -- --skip-cold` skips the cold build (it rebuilds llama.cpp: ~10 min on 2 cores).
    """
    env = _runtime_env(session)
    session.run("python", "benchmarks/bench_build.py", *session.posargs, env=env)
    session.run("python", "benchmarks/bench_runtime.py", env=env)
    session.run("python", "benchmarks/bench_verify.py", env=env)
    session.run("python", "benchmarks/bench_transfer.py", env=env)


@nox.session(default=False)
def repro(session: nox.Session) -> None:
    """Build the default recipe twice from empty caches, the second as another machine; compare bytes."""
    _install_builder(session)
    tmp = os.path.abspath(session.create_tmp())
    recipe = os.path.abspath(DEFAULT_RECIPE)
    # The second build: another host name, one core, umask 077, time zone, locale, HOME and
    # working folder, and the host's compilers replaced by stubs that fail if anything runs them.
    machines = {"a": [], "b": ["bash", os.path.abspath("scripts/as-another-machine.sh")]}
    for name, wrapper in machines.items():
        session.run(*wrapper, "gapforge", "build", recipe, "--frozen", "--no-load",
                    "--cache-dir", os.path.join(tmp, f"cache-{name}"), "--out", os.path.join(tmp, f"out-{name}"),
                    external=True)  # fmt: skip
    session.run("python", "-c", _COMPARE, tmp)


_COMPARE = """
import json, sys
from pathlib import Path
reports = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("out-*/*/build.json"))]
for name, report in zip("ab", reports):
    print(f"archive {name}: sha256:{report['image']['tar_sha256']}  image {report['image']['manifest_digest']}")
same = len({r["image"]["tar_sha256"] for r in reports}) == 1 and len(reports) == 2
print("identical" if same else "DIFFERENT")
sys.exit(0 if same else 1)
"""


def _gpu_env() -> dict[str, str]:
    """The running Python's environment with the runtime importable (GPU sessions use no venv)."""
    runtime = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime")
    return {
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [runtime, os.environ.get("PYTHONPATH")])),
    }


@nox.session(name="bench-gpu", default=False, venv_backend="none")
def bench_gpu(session: nox.Session) -> None:
    """GPU figures on an 8B-shaped model: LoRA/QLoRA tokens/s, MFU, peak memory vs planner, GPTQ time,
    and realistic lengths side by side: plain padded transformers + PEFT vs the runtime's packed path."""
    # Runs in the current environment: the cuda image, or a venv from lockfiles/cuda.txt, on a GPU.
    session.run(
        "python", "benchmarks/bench_gpu.py", *session.posargs, env=_gpu_env(), external=True
    )


@nox.session(name="gpu-e2e", default=False, venv_backend="none")
def gpu_e2e(session: nox.Session) -> None:
    """QLoRA → merge → GGUF + GPTQ + NF4 on a random 1B Llama, each reloaded and scored (needs a GPU)."""
    llama_cpp = os.environ.get("GAPFORGE_LLAMA_CPP", "/opt/gapforge/llama.cpp")
    session.run("python", "benchmarks/gpu_e2e.py", "--llama-cpp", llama_cpp, *session.posargs,
                env=_gpu_env(), external=True)  # fmt: skip
